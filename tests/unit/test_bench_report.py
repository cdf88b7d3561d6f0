"""The benchmark's per-call targets against the bare gRPC servers of the same run: the
verdict lines and the fields they add to results.json."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.run import Row

RSA = "rsa2048_pss_sign"


def _row(op: str, path: str, ops: float, cpu_us: float, raw_cpu_us: float = math.nan) -> Row:
    return Row(
        op=op,
        workers=1,
        clients=4,
        path=path,
        vault_ops_per_s=ops,
        raw_ops_per_s=1000.0,
        raw_spread=0.0,
        p50_ms=1.0,
        p99_ms=2.0,
        raw_p50_ms=0.5,
        server_cpu_us=cpu_us,
        client_cpu_us=100.0,
        raw_cpu_us=raw_cpu_us,
        other_cores=0.0,
    )


def _run(authenticated_ops: float, authenticated_cpu_us: float) -> list[Row]:
    return [
        _row(RSA, "authenticated", authenticated_ops, authenticated_cpu_us, 700.0),
        _row(RSA, "unauthenticated", 700.0, 1300.0, 700.0),
        _row(RSA, "grpc-rsa-sync", 1000.0, 1050.0, 700.0),
        _row(RSA, "grpc-rsa-aio", 800.0, 1400.0, 700.0),
        _row("grpc_echo", "grpc-floor-sync", 2600.0, 300.0),
        _row("grpc_echo", "grpc-floor-aio", 2600.0, 320.0),
    ]


def test_a_slow_authenticated_path_misses_both_per_call_targets() -> None:
    lines = report._per_call_verdicts(_run(450.0, 1900.0))
    assert lines == [
        "rsa2048_pss_sign with 1 worker(s), authenticated: vault/bare signing server = 0.45, "
        "target >= 0.90: MISS",
        "rsa2048_pss_sign with 1 worker(s), authenticated: added server CPU 1200 us/call = "
        "4.0 x the bare echo server's, target <= 1.5: MISS",
    ]


def test_a_path_near_the_faster_bare_server_meets_both() -> None:
    lines = report._per_call_verdicts(_run(950.0, 1100.0))
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["PASS", "PASS"]
    assert "= 0.95," in lines[0] and "= 1.3 x" in lines[1]


def test_results_json_carries_the_ceiling_beside_the_vault_paths_rsa_rows(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results.json"
    report.write_results(_run(450.0, 1900.0), out)
    rows = {row["path"]: row for row in json.loads(out.read_text())}
    assert rows["authenticated"]["ceiling_ops_per_s"] == 1000.0
    assert rows["authenticated"]["ratio_to_ceiling"] == 0.45
    assert rows["authenticated"]["added_cpu_vs_echo"] == 4.0
    assert rows["unauthenticated"]["ratio_to_ceiling"] == 0.7
    assert "ceiling_ops_per_s" not in rows["grpc-rsa-sync"]
    assert "ceiling_ops_per_s" not in rows["grpc-floor-sync"]


def test_without_bare_servers_there_is_no_ceiling() -> None:
    rows = _run(450.0, 1900.0)[:2]
    assert report._per_call_verdicts(rows) == []


def test_a_batch_ratio_just_under_its_target_does_not_read_as_the_target() -> None:
    batch = replace(
        _row("p256_ecdsa_sign_batch100", "authenticated", 495.7, 100.0), items_per_call=100
    )
    (line,) = report._verdicts([batch])
    assert "vault/raw = 0.496, target >= 0.50: MISS" in line
