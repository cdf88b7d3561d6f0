"""`python -m bench`: the options, and the entry point that runs the benchmark (bench/run.py)
and reports it (bench/report.py)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench import concurrency, creation, scale
from bench import ops as bench_ops
from bench.buckets import BUCKET_PREFIX, add_arguments, workload_from
from bench.report import print_report, write_results
from bench.results_file import replace_rows
from bench.run import Config, run
from bench.server import PATHS, ROOT
from vault.config import ServerSettings


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of integers: {text}"
        ) from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return values


def _op_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in bench_ops.OPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown operation(s) {unknown}; choose from {', '.join(bench_ops.OPS)}"
        )
    return names


def _path_list(text: str) -> list[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(PATHS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}"
        )
    # In PATHS order whatever the order given, so tables and results.json list them alike.
    return [path for path in PATHS if path in names]


def _creations(text: str) -> int:
    try:
        return creation.parse_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The vault against raw python-pkcs11 on the same SoftHSM token, per "
        "operation and worker count, on two paths: 'authenticated' (the default settings: "
        "every call signed by the load generators, then authenticated, authorised and "
        "audited by the server) and 'unauthenticated' (a second server on the same data "
        "directory with VAULT_AUTH__ENABLED=false). Measurements are interleaved (raw, "
        "authenticated, raw, unauthenticated, raw), so each path's ratio to raw and the "
        "authenticated path's ratio to the unauthenticated one come from neighbouring "
        "measurements. Only ratios within one run mean anything. With --floor (the "
        "default), bare Python gRPC servers with no vault code are measured in the same "
        "way and in the same run: echo servers (grpc-floor-sync, grpc-floor-aio: gRPC's "
        "own CPU per call) and servers whose handler makes one RSA-2048 PSS signature on "
        "the same token (grpc-rsa-sync, grpc-rsa-aio, interleaved with raw like the "
        "vault's paths); their ratio to raw is the ceiling that the RSA-2048 targets are "
        "compared with.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="vault measurements per operation and path, each followed by a raw one "
        "(1: raw, vault, raw with one path; raw, vault, raw, vault, raw with both)",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="vault warm-up before each measurement (1)"
    )
    parser.add_argument(
        "--workers",
        type=_int_list,
        default=[1, 2],
        help="processes: server workers and raw processes alike, a comma-separated list (1,2)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="concurrent requests in flight, each a client thread with its own connection "
        "(default: 4 per worker)",
    )
    parser.add_argument("--client-procs", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=ServerSettings.model_fields["threads"].default,
        help="VAULT_SERVER__THREADS (default: the vault's own default)",
    )
    parser.add_argument(
        "--ops",
        type=_op_list,
        default=list(bench_ops.DEFAULT_OPS),
        help=f"comma-separated, from {','.join(bench_ops.OPS)} "
        "(all but generate_random_32, the server's per-request floor)",
    )
    parser.add_argument(
        "--paths",
        type=_path_list,
        default=list(PATHS),
        help=f"comma-separated, from {','.join(PATHS)} (both)",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per worker count, also measure bare gRPC servers as the vault serves (N "
        "processes on one port, the same load generators): a sync grpcio server with "
        "--server-threads threads and a grpc.aio server, each as an echo and as an RSA-2048 "
        "signer on the token (the latter when rsa2048_pss_sign is in --ops); prints the "
        "ceiling table (default: on; about 40 s per worker count)",
    )
    parser.add_argument(
        "--buckets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the operations, run the bucket workload (bench/buckets.py): objects "
        "encrypted through the SDK under bucket keys against one GenerateDataKey per object, "
        "on an authenticated server with the largest of --workers (default: on)",
    )
    add_arguments(parser, BUCKET_PREFIX)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results.json", help="bench/results.json"
    )
    parser.add_argument(
        "--vault-root",
        type=Path,
        default=ROOT,
        help="source tree whose vault package the server runs (a scratch copy to try a change)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the server workers under cProfile; writes DIR/workers-N-PATH/worker-PID.prof "
        "(slows the vault: do not compare its numbers with an unprofiled run)",
    )
    parser.add_argument(
        "--sweep-clients",
        type=concurrency.parse_clients,
        default=list(concurrency.DEFAULT_CLIENTS),
        metavar="N,N,...",
        help="client counts of the concurrency sweep (bench/concurrency.py): unary and batch "
        "operations on the authenticated path with the largest of --workers, plotted to "
        "concurrency.png beside --out (default: 1,4,16; 0 turns it off)",
    )
    parser.add_argument(
        "--sweep-ops",
        type=_op_list,
        default=list(concurrency.SWEEP_OPS),
        help=f"operations of the concurrency sweep (default: {','.join(concurrency.SWEEP_OPS)})",
    )
    parser.add_argument(
        "--scale-sizes",
        type=scale.parse_sizes,
        default=None,
        metavar="N,N,...",
        help="key counts of the millions-of-keys workload (bench/scale.py); default "
        f"${scale.SIZES_ENV}, else 1000,100000; 0 turns it off",
    )
    parser.add_argument(
        "--creations",
        type=_creations,
        default=None,
        metavar="N",
        help="keys (AES-256-GCM, P-256, a tenth as many RSA-2048) and buckets created through "
        "the API per kind and client count (bench/creation.py); default "
        f"${creation.COUNT_ENV}, else {creation.DEFAULT_COUNT}; 0 turns it off",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.client_procs < 1 or args.server_threads < 1:
        parser.error("--seconds, --rounds, --client-procs and --server-threads must be positive")
    if args.warmup < 0 or args.clients < 0:
        parser.error("--warmup and --clients must not be negative")
    try:
        buckets = workload_from(args, BUCKET_PREFIX) if args.buckets else None
    except ValueError as error:
        parser.error(f"--{BUCKET_PREFIX}*: {error}")
    return Config(
        seconds=args.seconds,
        rounds=args.rounds,
        warmup=args.warmup,
        workers=args.workers,
        clients=args.clients,
        client_procs=args.client_procs,
        server_threads=args.server_threads,
        ops=args.ops,
        paths=args.paths,
        floor=args.floor,
        out=args.out,
        vault_root=args.vault_root.resolve(),
        profile=args.profile,
        buckets=buckets,
        scale_sizes=(
            args.scale_sizes if args.scale_sizes is not None else scale.sizes_from_environment()
        ),
        creations=(
            args.creations if args.creations is not None else creation.count_from_environment()
        ),
        sweep_clients=args.sweep_clients,
        sweep_ops=args.sweep_ops,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    started = time.monotonic()
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    # Also when started where SIGINT is ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = ExitStack()
    try:
        results = run(config, stack)
        sweep_rows = concurrency.sweep(config, stack)
        scale_rows = scale.measure(config.scale_sizes, vault_root=config.vault_root)
        creation_rows = creation.measure(config.creations, vault_root=config.vault_root)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers and removing the temporary token", flush=True)
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)

    rows = results.rows
    print_report(rows, results.buckets)
    if scale_rows:
        print(
            "\nmillions of keys (bench/scale.py): uniform random access, p50 against the smallest"
        )
        scale.print_rows(scale_rows)
    if creation_rows:
        print("\ncreation through the API (bench/creation.py): authenticated, audited, 2 workers")
        creation.print_rows(creation_rows)
    write_results(rows, config.out, results.buckets)
    if sweep_rows:
        print("\nconcurrency sweep (bench/concurrency.py): items per second, authenticated")
        print_report(sweep_rows, None)
        merged = json.loads(config.out.read_text()) + concurrency.results(sweep_rows)
        config.out.write_text(json.dumps(merged, indent=2) + "\n")
        plot_path = config.out.with_name("concurrency.png")
        concurrency.plot(sweep_rows, plot_path)
        print(f"plotted {plot_path}")
    replace_rows(config.out, scale.PATH, scale_rows)
    replace_rows(config.out, creation.PATH, creation_rows)
    print(f"\nwrote {config.out} ({time.monotonic() - started:.0f} s)")
    errors = sum(row.errors for row in [*rows, *sweep_rows])
    if errors:
        print(
            f"{errors} requests failed during measurement: these numbers are not valid",
            file=sys.stderr,
        )
        return 1
    return 0
