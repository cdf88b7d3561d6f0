"""bench/scale.py end to end at a tiny size: the store filled in batches from real seed keys,
a real server at each size, and rows with the fields results.json needs."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scale
from bench.results_file import replace_rows

OPS = {"p256_ecdsa_sign", "aes256_gcm_encrypt_1k", "get_key"}


def test_scale_measures_each_op_at_each_size_and_merges_its_rows(tmp_path: Path) -> None:
    rows = scale.measure([100, 200], calls=20, clients=2)

    measured = {(row["op"], row["keys"]) for row in rows}
    assert measured == {(op, size) for op in OPS | {"list_keys"} for size in (100, 200)}
    for row in rows:
        assert row["path"] == "scale"
        assert row["workers"] >= 1
        assert row["startup_s"] > 0
        assert row["worker_rss_mib"] > 0
        if row["op"] == "list_keys":
            assert row["us_per_listed_key"] > 0
            continue
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["vault_ops_per_s"] > 0
        assert row["rows_copied_per_s"] > 0
    assert all(
        row["p50_vs_smallest"] == 1.0 for row in rows if row["keys"] == 100 and "p50_ms" in row
    )

    out = tmp_path / "results.json"
    out.write_text(json.dumps([{"op": "rsa2048_pss_sign", "path": "authenticated"}]))
    replace_rows(out, scale.PATH, rows)
    replace_rows(out, scale.PATH, rows)  # a second run replaces the scale rows, keeps the others
    merged = json.loads(out.read_text())
    assert merged[0] == {"op": "rsa2048_pss_sign", "path": "authenticated"}
    assert len(merged) == 1 + len(rows)


def test_populate_fills_the_store_to_each_size_in_batches() -> None:
    assert scale.key_id(scale.SIGN_PREFIX, 7) == "sign-00000007"
    assert scale.parse_sizes("100000,1000,1000") == [1000, 100000]
