"""bench/results.json: the rows of one `make bench` run, or of the parts run alone since."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def replace_rows(out: Path, path: str, rows: list[dict[str, Any]]) -> None:
    """Replace the rows of out whose "path" is path by rows, keeping every other row: a part
    run alone (bench.scale, bench.creation) updates its own rows of the last whole run."""
    kept: list[dict[str, Any]] = []
    if out.exists():
        kept = [row for row in json.loads(out.read_text()) if row.get("path") != path]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(kept + rows, indent=2) + "\n")
