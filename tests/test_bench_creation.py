"""`make bench`'s creation step (bench/creation.py) at a tiny size, end to end: keys and buckets
created through the SDK against a real authenticated server on the real token, rows with the
fields results.json needs; the in-process breakdown of one CreateKey; the option that sizes
the step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import creation
from bench.cli import parse_args
from bench.server import AUTHENTICATED, ROOT, VaultServer, provision
from tests.support.bench_runs import run_module
from vault.gen.vault.v1 import resources_pb2

OPS = {"create_key_aes256", "create_key_p256", "create_key_rsa2048", "create_bucket"}
ALGORITHMS = {
    "create_key_aes256": "AES_256_GCM",
    "create_key_p256": "EC_SIGN_P256_SHA256",
    "create_key_rsa2048": "RSA_SIGN_PSS_2048_SHA256",
}
FIELDS = {
    "op",
    "path",
    "vault_ops_per_s",
    "raw_ops_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "clients",
    "workers",
    "server_cpu_us",
    "client_cpu_us",
    "creations",
    "hours_per_million",
}


def test_each_kind_is_created_through_the_api_at_each_client_count(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    provision(data_dir, ROOT)
    server = VaultServer(data_dir, ROOT, AUTHENTICATED, {"VAULT_SERVER__WORKERS": "2"})
    with server:
        rows = creation.measure_server(server, 4)
        with server.client() as client:
            made_keys = list(client.iter_keys(creation.PARENT))
            made_buckets = list(client.iter_buckets(creation.PARENT))

    assert {(row["op"], row["clients"]) for row in rows} == {
        (op, clients) for op in OPS for clients in creation.CLIENTS
    }
    for row in rows:
        assert set(row) == FIELDS
        assert (row["path"], row["workers"]) == ("create", 2)
        # At least as many as client threads, so every thread creates.
        assert row["creations"] == 4
        assert row["vault_ops_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        # /proc counts CPU in clock ticks (10 ms): four cheap creations may span none.
        assert row["server_cpu_us"] >= 0 and row["client_cpu_us"] > 0
        if row["op"] == "create_key_rsa2048":
            assert row["server_cpu_us"] > 10_000  # the token's search for a key pair
        assert row["raw_ops_per_s"] is None and row["ratio"] is None
        # Both figures are rounded (the rate to 0.1/s): the hours lie within that rounding.
        rate = row["vault_ops_per_s"]
        hours = row["hours_per_million"]
        assert 1e6 / 3600 / (rate + 0.05) - 0.005 <= hours <= 1e6 / 3600 / (rate - 0.05) + 0.005
    json.dumps(rows, allow_nan=False)

    # What the rows count was really made, each kind as asked: the measured creations and
    # each client count's warm-up (two per thread).
    per_kind = sum(4 + 2 * clients for clients in creation.CLIENTS)
    for op, algorithm in ALGORITHMS.items():
        of_kind = [
            key
            for key in made_keys
            if key.name.split("/")[-1].startswith(op.replace("_", "-") + "-")
        ]
        assert len(of_kind) == per_kind
        assert {key.algorithm for key in of_kind} == {
            resources_pb2.Algorithm.Value(f"ALGORITHM_{algorithm}")
        }
    assert len(made_buckets) == per_kind


def test_the_profile_splits_one_create_key_into_its_pieces() -> None:
    result = creation.run_profile(3)

    assert set(result) == {"create_key_aes256", "create_key_p256"}
    for op, figures in result.items():
        assert set(figures) == {"total", *creation.PIECES, "rest"}
        measured = [piece for piece in creation.PIECES if piece != "public key export"]
        assert all(figures[piece] > 0 for piece in measured), (op, figures)
        assert sum(figures[piece] for piece in [*creation.PIECES, "rest"]) == pytest.approx(
            figures["total"], abs=1.0
        )
    # Only a key pair has a public key to export.
    assert result["create_key_aes256"]["public key export"] == 0
    assert result["create_key_p256"]["public key export"] > 0


def test_make_bench_writes_the_creation_rows_in_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_module(
        "bench",
        *("--ops", "generate_random_32", "--workers", "1", "--no-floor"),
        *("--paths", "unauthenticated", "--seconds", "0.3", "--warmup", "0"),
        *("--client-procs", "1", "--clients", "1", "--no-buckets", "--scale-sizes", "0"),
        *("--sweep-clients", "0", "--creations", "4", "--out", str(out)),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert rows[0]["op"] == "generate_random_32"
    created = [row for row in rows if row["path"] == creation.PATH]
    assert {(row["op"], row["clients"]) for row in created} == {
        (op, clients) for op in OPS for clients in creation.CLIENTS
    }
    assert "creation through the API (bench/creation.py)" in done.stdout
    assert "create_key_rsa2048" in done.stdout.split("creation through the API")[1]


def test_the_number_of_creations_comes_from_the_option_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(creation.COUNT_ENV, raising=False)
    assert parse_args([]).creations == creation.DEFAULT_COUNT == 200
    assert parse_args(["--creations", "0"]).creations == 0
    monkeypatch.setenv(creation.COUNT_ENV, "1000")
    assert parse_args([]).creations == 1000
    assert parse_args(["--creations", "50"]).creations == 50
    with pytest.raises(SystemExit):
        parse_args(["--creations", "-1"])
    # RSA-2048 keys: a tenth, but never fewer than the most client threads.
    kinds = {kind.op: kind for kind in creation.KINDS}
    assert kinds["create_key_rsa2048"].count(200) == 20
    assert kinds["create_key_rsa2048"].count(10) == max(creation.CLIENTS)
    assert kinds["create_key_aes256"].count(200) == 200
