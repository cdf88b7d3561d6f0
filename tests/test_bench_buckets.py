"""`make bench`'s bucket workload (bench/buckets.py) at a tiny size, end to end: through the SDK
against the real server on the real token, with the vault calls counted by the SDK and by the
server's audit log; and the options that size it.

The workload's buckets get a policy of 10 objects per key, so the cache must ask the vault
for several keys per bucket: the reduction then depends on what was really counted, not only
on how many buckets there are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.buckets import OP, BucketRow, Workload, run_workload
from bench.cli import parse_args
from bench.report import write_results
from tests.support.bench_runs import run_module
from tests.support.harness import VaultServer
from vault.client import VaultClient

OBJECTS, BUCKETS, PER_KEY = 120, 3, 10
# 40 objects per bucket, 10 per bucket key: 4 GenerateBucketKey calls per bucket.
EXPECTED_BUCKET_CALLS = BUCKETS * (OBJECTS // BUCKETS // PER_KEY)
SMALL_RATIO = {"ratio_rounds": 2, "ratio_calls": 3}


def bench_calls(client: VaultClient, method: str) -> int:
    """method's calls on anything of the benchmark's account, from the audit log."""
    return sum(1 for _ in client.iter_audit_events(resource="accounts/bench", method=method))


def test_the_bucket_workload_counts_real_vault_calls_end_to_end(
    server: VaultServer, client: VaultClient
) -> None:
    before = {
        method: bench_calls(client, method)
        for method in ("GenerateBucketKey", "DecryptBucketKey", "GenerateDataKey")
    }
    workload = Workload(
        objects=OBJECTS, buckets=BUCKETS, threads=3, max_objects_per_key=PER_KEY, **SMALL_RATIO
    )
    row = run_workload(server.target, server.data_dir / "admin-credentials.json", workload, 2)
    result = row.result()

    assert result["op"] == OP == "bucket object encrypt"
    assert (result["objects"], result["buckets"], result["object_size"]) == (OBJECTS, 3, 4096)
    assert (result["workers"], result["clients"], result["path"]) == (2, 3, "authenticated")
    assert result["vault_calls"] == result["audited_vault_calls"] == EXPECTED_BUCKET_CALLS
    assert result["data_key_calls"] == result["audited_data_key_calls"] == OBJECTS
    assert result["reduction"] == pytest.approx(1 - EXPECTED_BUCKET_CALLS / OBJECTS)
    assert (result["reduction_target"], result["mib_ratio_target"]) == (0.999, 0.8)
    for field in ("bucket_objects_per_s", "data_key_objects_per_s", "sdk_mib_per_s"):
        value = result[field]
        assert isinstance(value, float) and value > 0 and math.isfinite(value)
    assert result["mib_ratio"] == pytest.approx(row.sdk_mib_per_s / row.aesgcm_mib_per_s, 1e-3)
    json.dumps(result, allow_nan=False)

    # The server saw exactly that: the bucket path's keys (the independent readers' unwraps
    # come after the count, one per checked object's bucket key at most), and one data key
    # per object.
    generated = bench_calls(client, "GenerateBucketKey") - before["GenerateBucketKey"]
    assert generated == EXPECTED_BUCKET_CALLS
    assert 0 < bench_calls(client, "DecryptBucketKey") - before["DecryptBucketKey"] <= generated
    assert bench_calls(client, "GenerateDataKey") - before["GenerateDataKey"] == OBJECTS


def test_python_m_bench_buckets_runs_alone_and_writes_the_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_module(
        "bench.buckets",
        *("--objects", "40", "--buckets", "2", "--threads", "2", "--workers", "1"),
        *("--out", str(out)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())
    assert (row["op"], row["objects"], row["buckets"], row["workers"]) == (OP, 40, 2, 1)
    # The default policy (15 minutes, no limits): one bucket key per bucket.
    assert row["vault_calls"] == row["audited_vault_calls"] == 2
    assert row["data_key_calls"] == row["audited_data_key_calls"] == 40
    assert row["reduction"] == pytest.approx(1 - 2 / 40)
    assert "reduction = 0.9500, target >= 0.999: MISS" in done.stdout


def test_make_bench_writes_the_bucket_row_in_the_same_run(tmp_path: Path) -> None:
    """`python -m bench` at its smallest (one cheap operation, one short measurement, no
    floor): the bucket workload runs after it, and its row joins the others."""
    out = tmp_path / "results.json"
    done = run_module(
        "bench",
        *("--ops", "generate_random_32", "--workers", "1", "--no-floor"),
        *("--paths", "unauthenticated", "--seconds", "0.3", "--warmup", "0"),
        *("--client-procs", "1", "--clients", "1"),
        *("--bucket-objects", "30", "--bucket-count", "2", "--scale-sizes", "0"),
        *("--creations", "0"),
        *("--sweep-clients", "0"),
        *("--out", str(out)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [row["op"] for row in rows] == ["generate_random_32", OP]
    bucket_row = rows[-1]
    assert (bucket_row["objects"], bucket_row["buckets"], bucket_row["workers"]) == (30, 2, 1)
    assert bucket_row["vault_calls"] == bucket_row["audited_vault_calls"] == 2
    assert bucket_row["data_key_calls"] == bucket_row["audited_data_key_calls"] == 30
    assert "bucket object encrypt: reduction = 0.9333" in done.stdout


def test_make_bench_runs_the_bucket_workload_at_the_size_given() -> None:
    assert parse_args([]).buckets == Workload()
    assert Workload() == Workload(objects=100_000, buckets=10, object_size=4096)
    config = parse_args(
        ["--bucket-objects", "500", "--bucket-count", "5", "--bucket-object-size", "100"]
    )
    assert config.buckets == Workload(objects=500, buckets=5, object_size=100)
    assert parse_args(["--no-buckets"]).buckets is None
    for bad in (["--bucket-objects", "0"], ["--bucket-count", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_bucket_row_goes_into_results_json(tmp_path: Path) -> None:
    row = BucketRow(
        workload=Workload(objects=1000, buckets=2),
        workers=1,
        vault_calls=2,
        audited_vault_calls=2,
        data_key_calls=1000,
        audited_data_key_calls=1000,
        bucket_seconds=0.5,
        data_key_seconds=2.0,
        sdk_mib_per_s=800.0,
        aesgcm_mib_per_s=1000.0,
    )
    out = tmp_path / "results.json"
    write_results([], out, row)
    (written,) = json.loads(out.read_text())
    assert written["reduction"] == 0.998
    assert (written["bucket_objects_per_s"], written["data_key_objects_per_s"]) == (2000.0, 500.0)
    assert written["mib_ratio"] == 0.8
    assert row.verdicts() == [
        f"{OP}: reduction = 0.9980, target >= 0.999: MISS",
        f"{OP}: SDK/AES-GCM on 1 MiB = 0.80, target >= 0.8: PASS",
    ]
