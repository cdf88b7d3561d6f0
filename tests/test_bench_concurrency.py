"""make bench's concurrency sweep (bench/concurrency.py) at its smallest, end to end: unary and
batch signing through a real authenticated server at two client counts, rows in results.json
and the PNG plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.concurrency import SWEEP, parse_clients
from tests.support.bench_runs import run_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_sweep_measures_unary_and_batch_calls_at_each_client_count(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_module(
        "bench",
        *("--ops", "generate_random_32", "--workers", "1", "--no-floor"),
        *("--paths", "unauthenticated", "--seconds", "0.3", "--warmup", "0"),
        *("--client-procs", "1", "--clients", "1", "--no-buckets", "--scale-sizes", "0"),
        *("--creations", "0"),
        *("--sweep-clients", "1,2", "--sweep-ops", "p256_ecdsa_sign,p256_ecdsa_sign_batch10"),
        *("--out", str(out)),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [row for row in json.loads(out.read_text()) if row.get("sweep") == SWEEP]
    measured = {(row["op"], row["clients"]) for row in rows}
    assert measured == {
        (op, clients) for op in ("p256_ecdsa_sign", "p256_ecdsa_sign_batch10") for clients in (1, 2)
    }
    for row in rows:
        assert row["path"] == "authenticated" and row["vault_ops_per_s"] > 0
        assert row.get("items_per_call") == (10 if row["op"].endswith("batch10") else None)
    plot = out.with_name("concurrency.png")
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert f"plotted {plot}" in done.stdout


def test_client_counts_are_sorted_and_zero_turns_the_sweep_off() -> None:
    assert parse_clients("16,1,4,4") == [1, 4, 16]
    assert parse_clients("0") == []
    for bad in ("", "a", "-1", "0,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_clients(bad)
