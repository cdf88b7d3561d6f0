"""A/B runs of source trees: `python -m bench.ab --trees base=DIR,new=DIR [options]`.

Each tree (a checkout or a scratch copy of the vault, as --vault-root of `python -m bench`)
gets a token of its own and an authenticated one-worker server running its code, all started
side by side and driven by the load generators of `make bench`. Then, per round and
operation, each server is measured in turn (the order alternating from round to round), so
a change of the machine's load hits every tree alike. Printed per measurement: requests/s,
the server's CPU time per request and the context switches of its worker's threads per
request; at the end the medians of each round's ratio to the first tree, the figures to
read on a shared machine, and the medians of the figures themselves.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import ops as bench_ops
from bench.run import (
    Config,
    Pool,
    _balance,
    _load_pool,
    _measure,
    _prepare,
    _start_server,
)
from bench.server import AUTHENTICATED, provision


@dataclass(frozen=True, slots=True)
class Figures:
    requests_per_s: float
    cpu_us: float  # server CPU per request
    switches: float  # context switches of the worker's threads per request, warm-up included


def context_switches(pids: list[int]) -> int:
    """Voluntary and involuntary context switches of every thread of these processes."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--trees", required=True, help="name=dir,name=dir,... (first: base)")
    parser.add_argument("--ops", default="p256_ecdsa_sign,rsa2048_pss_sign")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=4, help="client threads (4)")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--server-threads", type=int, default=4)
    args = parser.parse_args(argv)
    trees = [tree.split("=", 1) for tree in args.trees.split(",")]
    if any(len(tree) != 2 or not Path(tree[1]).is_dir() for tree in trees) or len(
        {name for name, _ in trees}
    ) != len(trees):
        parser.error("--trees: distinct name=directory pairs, comma-separated")
    unknown = [op for op in args.ops.split(",") if op not in bench_ops.OPS]
    if unknown:
        parser.error(f"--ops: unknown {', '.join(unknown)}")
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1 or args.client_procs < 1:
        parser.error("--rounds, --seconds, --clients and --client-procs must be positive")
    args.trees = trees
    args.ops = args.ops.split(",")
    return args


def main(argv: list[str] | None = None) -> dict[tuple[str, str], list[Figures]]:
    args = _parse(argv)
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[str, str], list[Figures]] = {}
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="vault-ab-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        targets: dict[str, tuple[Pool, dict[str, list[int]], list[int]]] = {}
        for name, root in args.trees:
            config = Config(
                seconds=args.seconds,
                rounds=1,
                warmup=args.warmup,
                workers=[1],
                clients=args.clients,
                client_procs=args.client_procs,
                server_threads=args.server_threads,
                ops=args.ops,
                paths=[AUTHENTICATED],
                floor=False,
                out=scratch / "unused.json",
                vault_root=Path(root).resolve(),
                profile=None,
            )
            provision(scratch / name, config.vault_root)
            server = _start_server(config, 1, AUTHENTICATED, scratch / name, stack)
            requests = _prepare(server, args.ops, set())
            load = _load_pool(
                context,
                config,
                AUTHENTICATED,
                server.target,
                args.clients,
                requests,
                server.credentials_file,
                stack,
            )
            workers = server.worker_pids()
            _balance(load, server.port, workers, args.clients)
            assert server.process is not None
            groups = {"server": [*workers, server.process.pid], "client": load.pids}
            targets[name] = (load, groups, workers)
            print(f"{name}: {root}, worker {workers}", flush=True)
        for round_ in range(args.rounds):
            for op in args.ops:
                order = args.trees if round_ % 2 == 0 else args.trees[::-1]
                for name, _ in order:
                    load, groups, workers = targets[name]
                    before = context_switches(workers)
                    measured = _measure(load, op, args.warmup, args.seconds, groups)
                    calls = max(measured.sample.rate * args.seconds, 1.0)
                    figures = Figures(
                        measured.sample.rate,
                        measured.cpu["server"] / calls * 1e6,
                        (context_switches(workers) - before) / calls,
                    )
                    results.setdefault((op, name), []).append(figures)
                    print(
                        f"round {round_} {op:<18} {name:<10} {figures.requests_per_s:7.0f}/s"
                        f"  server CPU {figures.cpu_us:6.0f} us/req"
                        f"  switches {figures.switches:5.1f}/req"
                        f"  errors {measured.sample.errors}  other {measured.other_cores:.2f}",
                        flush=True,
                    )
    _summary(args.trees[0][0], results)
    return results


def _summary(base: str, results: dict[tuple[str, str], list[Figures]]) -> None:
    print(f"\nmedians of each round's ratio to {base}: requests/s, CPU/req, switches/req")
    for (op, name), runs in results.items():
        pairs = list(zip(runs, results[(op, base)], strict=True))
        print(
            f"{op:<18} {name:<10} x{_median_ratio(pairs, 'requests_per_s'):.3f}"
            f"  x{_median_ratio(pairs, 'cpu_us'):.3f}  x{_median_ratio(pairs, 'switches'):.3f}"
        )
    print("\nmedians: requests/s, server CPU us/req, switches/req")
    for (op, name), runs in results.items():
        print(
            f"{op:<18} {name:<10} {statistics.median(r.requests_per_s for r in runs):7.0f}/s"
            f"  {statistics.median(r.cpu_us for r in runs):6.0f}"
            f"  {statistics.median(r.switches for r in runs):5.1f}"
        )


def _median_ratio(pairs: list[tuple[Figures, Figures]], field: str) -> float:
    ratios = [
        getattr(run, field) / getattr(base, field) for run, base in pairs if getattr(base, field)
    ]
    return statistics.median(ratios) if ratios else float("nan")


if __name__ == "__main__":
    main()
