"""Throughput against client concurrency, unary calls beside batch calls: part of `make bench`.

For each client count the same operations are measured as the main run measures them (same
token, raw loop beside them, same ratios), on the authenticated path with the largest worker
count; the rows join bench/results.json with `"sweep": "concurrency"` and a PNG plots items
per second against concurrent clients, one line per operation.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from bench.run import Config, Row, run
from bench.server import AUTHENTICATED

# Each unary operation beside its batch of 100: the fixed cost of a call against the token.
SWEEP_OPS: Final = [
    "p256_ecdsa_sign",
    "p256_ecdsa_sign_batch100",
    "aes256_gcm_encrypt_1k",
    "aes256_gcm_encrypt_1k_batch100",
]
DEFAULT_CLIENTS: Final = [1, 4, 16]
SWEEP: Final = "concurrency"


def parse_clients(text: str) -> list[int]:
    """`1,4,16`; `0` turns the sweep off."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of client counts: {text!r}") from None
    if counts == [0]:
        return []
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("client counts must be positive (or 0 for none)")
    return sorted(set(counts))


def sweep(config: Config, stack: ExitStack) -> list[Row]:
    """The rows of config.sweep_ops at each of config.sweep_clients (authenticated path,
    largest worker count); none when the sweep is off."""
    rows: list[Row] = []
    for count in config.sweep_clients:
        print(f"\n== concurrency sweep: {count} concurrent client(s)", flush=True)
        point = replace(
            config,
            clients=count,
            client_procs=min(config.client_procs, count),
            ops=config.sweep_ops,
            paths=[AUTHENTICATED],
            workers=[max(config.workers)],
            floor=False,
            buckets=None,
            scale_sizes=[],
            creations=0,
            sweep_clients=[],
        )
        rows.extend(run(point, stack).rows)
    return rows


def results(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**row.result(), "sweep": SWEEP} for row in rows]


def plot(rows: list[Row], path: Path) -> None:
    """Items per second against concurrent clients, one line per operation (log-2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for op in sorted({row.op for row in rows}):
        points = sorted((row.clients, row.vault_ops_per_s) for row in rows if row.op == op)
        style = "-" if "batch" in op else "--"
        axes.plot([c for c, _ in points], [v for _, v in points], style, marker="o", label=op)
    axes.set_xscale("log", base=2)
    counts = sorted({row.clients for row in rows})
    axes.set_xticks(counts, [str(count) for count in counts])
    axes.minorticks_off()
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("items per second (authenticated, audited)")
    workers = max((row.workers for row in rows), default=0)
    axes.set_title(f"vault throughput against concurrency ({workers} worker process(es))")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
