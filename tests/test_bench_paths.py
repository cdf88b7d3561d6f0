"""`make bench`'s default shape at its smallest: both paths (an authenticated and an
unauthenticated server on one token and store) measured in one run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.bench_runs import run_module


def test_both_paths_are_served_side_by_side_on_one_token_and_store(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_module(
        "bench",
        *("--ops", "p256_ecdsa_sign", "--workers", "1", "--no-floor"),
        *("--paths", "authenticated,unauthenticated", "--seconds", "0.3", "--warmup", "0"),
        *("--client-procs", "1", "--clients", "1", "--no-buckets", "--scale-sizes", "0"),
        *("--creations", "0"),
        *("--sweep-clients", "0", "--out", str(out)),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    by_path = {row["path"]: row for row in rows if row["op"] == "p256_ecdsa_sign"}
    assert set(by_path) == {"authenticated", "unauthenticated"}
    for row in by_path.values():
        assert row["vault_ops_per_s"] > 0 and row["raw_ops_per_s"] > 0
