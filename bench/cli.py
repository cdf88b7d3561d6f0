"""`python -m bench`: options, the run (per operation and worker count, raw measurements
interleaved with the vault's on each path), the table and bench/results.json."""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any, Final

import grpc

from bench import ops as bench_ops
from bench.load import bytes_call, load_main
from bench.measure import Sample, merged, percentile_ms, wait_until
from bench.raw import raw_main
from bench.serve import PROFILE_ENV
from bench.server import (
    AUTHENTICATED,
    PATHS,
    ROOT,
    UNAUTHENTICATED,
    VaultServer,
    connections_per_worker,
    cpu_seconds,
    machine_busy_seconds,
    provision,
)
from vault.client import VaultClient, authenticated_channel, load_credentials_file
from vault.config import ServerSettings

# RSA-2048 signing's vault/raw targets: the for the authenticated and audited path,
# the earlier one for the path without security.
TARGET_RATIOS: Final = {AUTHENTICATED: 0.80, UNAUTHENTICATED: 0.85}
RAW_WARMUP_SECONDS: Final = 0.3
# Measurements start this long after the command goes out, so every process is waiting.
START_MARGIN_SECONDS: Final = 0.15
_BALANCE_ATTEMPTS: Final = 40
_READY_TIMEOUT_SECONDS: Final = 180.0


@dataclass(slots=True)
class Row:
    op: str
    workers: int
    clients: int
    path: str  # bench.server.PATHS
    vault_ops_per_s: float
    raw_ops_per_s: float
    raw_spread: float  # (fastest - slowest) / fastest of the raw measurements
    p50_ms: float
    p99_ms: float
    raw_p50_ms: float
    server_cpu_us: float  # server CPU time per vault request, all workers together
    client_cpu_us: float  # load generators' CPU time per request
    raw_cpu_us: float  # raw processes' CPU time per operation
    other_cores: float  # cores used by the rest of the machine while measuring
    connections: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    # The unauthenticated row of the same operation and worker count, for an authenticated
    # row when that path was measured too.
    unauthenticated: Row | None = None

    @property
    def ratio(self) -> float:
        return self.vault_ops_per_s / self.raw_ops_per_s if self.raw_ops_per_s else math.nan

    @property
    def ratio_vs_unauthenticated(self) -> float:
        other = self.unauthenticated
        if other is None or not other.vault_ops_per_s:
            return math.nan
        return self.vault_ops_per_s / other.vault_ops_per_s

    def result(self) -> dict[str, float | int | str | None]:
        """The results.json object. Authenticated rows also carry ratio_vs_unauthenticated
        (null when that path was not measured)."""
        result: dict[str, float | int | str | None] = {
            "op": self.op,
            "path": self.path,
            "vault_ops_per_s": round(self.vault_ops_per_s, 1),
            "raw_ops_per_s": round(self.raw_ops_per_s, 1),
            "ratio": round(self.ratio, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "clients": self.clients,
            "workers": self.workers,
            "server_cpu_us": round(self.server_cpu_us, 1),
            "client_cpu_us": round(self.client_cpu_us, 1),
        }
        if self.path == AUTHENTICATED:
            ratio = self.ratio_vs_unauthenticated
            result["ratio_vs_unauthenticated"] = None if math.isnan(ratio) else round(ratio, 3)
        return result


# -- child processes ----------------------------------------------------------------------


class Pool:
    """Spawned child processes, each with a pipe, all sent the same commands."""

    def __init__(
        self,
        context: SpawnContext,
        name: str,
        target: Callable[..., None],
        arguments: Sequence[tuple[Any, ...]],
    ) -> None:
        self.name = name
        self.processes: list[SpawnProcess] = []
        self.connections: list[Connection] = []
        for index, args in enumerate(arguments):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=target, args=(child_end, *args), name=f"bench-{name}-{index}", daemon=True
            )
            process.start()
            child_end.close()
            self.processes.append(process)
            self.connections.append(parent_end)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid is not None]

    def send(self, command: Any) -> None:
        for connection in self.connections:
            connection.send(command)

    def receive(self, timeout: float) -> list[Any]:
        answers = []
        deadline = time.monotonic() + timeout
        for process, connection in zip(self.processes, self.connections, strict=True):
            while not connection.poll(0.2):
                if not process.is_alive():
                    raise RuntimeError(f"{process.name} exited with code {process.exitcode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{process.name} did not answer within {timeout:.0f} s")
            answer = connection.recv()
            if isinstance(answer, tuple) and answer and answer[0] == "error":
                raise RuntimeError(f"{process.name}: {answer[1]}")
            answers.append(answer)
        return answers

    def command(self, command: Any, timeout: float) -> list[Any]:
        self.send(command)
        return self.receive(timeout)

    def close(self) -> None:
        for connection in self.connections:
            with suppress(OSError):
                connection.send(None)
        # Idle children exit at once; one still measuring (after Ctrl-C) is not waited for.
        deadline = time.monotonic() + 3
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self.connections:
            connection.close()


# -- one worker count ---------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    seconds: float
    rounds: int
    warmup: float
    workers: list[int]
    clients: int  # 0: 4 per worker
    client_procs: int
    server_threads: int
    ops: list[str]
    paths: list[str]  # in PATHS order
    out: Path
    vault_root: Path
    profile: Path | None


def _clients(config: Config, workers: int) -> int:
    return config.clients or 4 * workers


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _balance(load: Pool, server: VaultServer, workers: list[int], clients: int) -> list[int]:
    """Reconnect every client until the kernel has given each worker its share of the
    connections (SO_REUSEPORT hashes each connection to a worker independently)."""
    slack = 0 if clients % len(workers) == 0 else 1
    counts: list[int] = []
    for _ in range(_BALANCE_ATTEMPTS):
        load.command(("connect",), timeout=60)
        time.sleep(0.05)
        counts = list(connections_per_worker(workers, server.port).values())
        if sum(counts) == clients and max(counts) - min(counts) <= slack:
            return counts
    print(f"  warning: connections per worker stayed unbalanced: {counts}", flush=True)
    return counts


@dataclass(slots=True)
class Measured:
    sample: Sample
    cpu: dict[str, float]  # CPU seconds of each group of processes during the window
    other_cores: float  # cores busy with processes outside the benchmark, on average


def _measure(
    pool: Pool, op: str, warmup: float, seconds: float, groups: dict[str, list[int]]
) -> Measured:
    """One synchronized measurement by every process of pool, with the CPU time that each
    group of processes and the rest of the machine spent during the measured window."""
    warm_until = time.monotonic() + START_MARGIN_SECONDS + warmup
    pool.send(("run", op, warm_until, seconds))
    wait_until(warm_until)
    before = {group: cpu_seconds(pids) for group, pids in groups.items()}
    busy_before = machine_busy_seconds()
    wait_until(warm_until + seconds)
    after = {group: cpu_seconds(pids) for group, pids in groups.items()}
    busy = machine_busy_seconds() - busy_before
    sample = _merge(pool.receive(timeout=seconds + 120))
    cpu = {group: after[group] - before[group] for group in groups}
    return Measured(sample, cpu, max(0.0, busy - sum(cpu.values())) / seconds)


def _merge(samples: list[Sample]) -> Sample:
    total = Sample()
    total.ops = sum(sample.ops for sample in samples)
    total.rate = sum(sample.rate for sample in samples)
    total.latencies_ns = merged(samples).tobytes()
    total.errors = sum(sample.errors for sample in samples)
    total.first_error = next((s.first_error for s in samples if s.first_error), "")
    return total


@dataclass(slots=True)
class Target:
    """One path: its server and the load generators that drive it."""

    server: VaultServer
    load: Pool
    groups: dict[str, list[int]]  # processes whose CPU time a measurement reads
    connections: list[int]  # client connections per server worker

    @property
    def path(self) -> str:
        return self.server.path


def _start_server(
    config: Config, workers: int, path: str, data_dir: Path, stack: ExitStack
) -> VaultServer:
    extra_env = {
        "VAULT_SERVER__WORKERS": str(workers),
        "VAULT_SERVER__THREADS": str(config.server_threads),
    }
    if config.profile is not None:
        extra_env[PROFILE_ENV] = str(config.profile.resolve() / f"workers-{workers}-{path}")
    server = VaultServer(data_dir, config.vault_root, path, extra_env)
    stack.callback(server.stop)
    server.start()
    return server


def _prepare(
    server: VaultServer, ops: list[str], keys_made: set[str]
) -> dict[str, tuple[str, bytes]]:
    """Each op's (method, request bytes), after making the keys not made yet through this
    server (keys live in the store and token that every server of the run shares) and
    checking one answer of this server to each request."""
    file = server.credentials_file
    credentials = None if file is None else load_credentials_file(file)
    requests = {}
    with grpc.insecure_channel(server.target) as channel:
        client = VaultClient(server.target, channel=channel, credentials=credentials)
        calls = channel if credentials is None else authenticated_channel(channel, credentials)
        for name in ops:
            op = bench_ops.OPS[name]
            if op.key_id not in keys_made:
                bench_ops.create_key(client, op)
                keys_made.add(op.key_id)
            requests[name] = (op.method, bench_ops.vault_request(op))
            answer = bytes_call(calls, op.method)(requests[name][1], timeout=30)
            bench_ops.check_vault_answer(client, op, answer)
    return requests


def _run_workers(
    config: Config, workers: int, data_dir: Path, stack: ExitStack, keys_made: set[str]
) -> list[Row]:
    context = multiprocessing.get_context("spawn")
    clients = _clients(config, workers)
    print(f"\n== {workers} worker process(es), {clients} concurrent clients", flush=True)
    # The raw processes start (imports, key generation) while the servers start.
    raw = Pool(context, "raw", raw_main, [(str(data_dir), config.ops)] * workers)
    stack.callback(raw.close)
    # One server per path, all on data_dir, started one after the other: a server's start-up
    # reconciliation of store and token must not run while another server creates keys.
    # An idle server costs no measurable CPU: other_cores, which counts it, reads 0.00 on a
    # quiet machine.
    servers: list[VaultServer] = []
    requests: dict[str, tuple[str, bytes]] = {}
    for path in config.paths:
        servers.append(_start_server(config, workers, path, data_dir, stack))
        requests = _prepare(servers[-1], config.ops, keys_made)
    raw.receive(timeout=_READY_TIMEOUT_SECONDS)
    targets = []
    for server in servers:
        file = server.credentials_file
        arguments = [
            (server.target, threads, requests, None if file is None else str(file))
            for threads in _split(clients, config.client_procs)
        ]
        load = Pool(context, f"load-{server.path}", load_main, arguments)
        stack.callback(load.close)
        worker_pids = server.worker_pids()
        connections = _balance(load, server, worker_pids, clients)
        print(f"  {server.path} server: connections per worker: {connections}", flush=True)
        server_pids = [*worker_pids, *([server.process.pid] if server.process else [])]
        groups = {"server": server_pids, "client": load.pids}
        targets.append(Target(server, load, groups, connections))

    rows = []
    for index, name in enumerate(config.ops):
        rows.extend(_measure_op(config, name, index, workers, clients, raw, targets))
    # Stop this worker count's processes before the next starts (profiles are written now).
    for target in targets:
        target.load.close()
    raw.close()
    for target in targets:
        target.server.stop()
    return rows


def _measure_op(
    config: Config,
    name: str,
    index: int,
    workers: int,
    clients: int,
    raw: Pool,
    targets: list[Target],
) -> list[Row]:
    """raw, then per round each path's vault measurement followed by a raw one: every vault
    measurement has a raw one right before and right after it, and its row's raw figures
    are those neighbours', so drift of this shared machine hits both sides of a ratio alike.
    The paths take turns going first from one operation (and round) to the next, so a trend
    within one operation's measurements favours neither path."""
    raw_groups = {"raw": raw.pids}
    raw_warmup = min(RAW_WARMUP_SECONDS, config.warmup)

    def measure_raw() -> Measured:
        return _measure(raw, name, raw_warmup, config.seconds, raw_groups)

    raws = [measure_raw()]
    vaults: dict[str, list[Measured]] = {target.path: [] for target in targets}
    beside: dict[str, list[Measured]] = {target.path: [] for target in targets}
    for round_ in range(config.rounds):
        order = targets if (index + round_) % 2 == 0 else targets[::-1]
        for target in order:
            measured = _measure(target.load, name, config.warmup, config.seconds, target.groups)
            vaults[target.path].append(measured)
            raws.append(measure_raw())
            neighbours = beside[target.path]
            for raw_measured in raws[-2:]:
                # A raw measurement between two of one path's counts once.
                if all(raw_measured is not known for known in neighbours):
                    neighbours.append(raw_measured)

    rows = {
        target.path: _row(
            name,
            workers,
            clients,
            target.path,
            target.connections,
            beside[target.path],
            vaults[target.path],
            config.seconds,
        )
        for target in targets
    }
    authenticated = rows.get(AUTHENTICATED)
    if authenticated is not None:
        authenticated.unauthenticated = rows.get(UNAUTHENTICATED)
    for path, row in rows.items():
        versus = row.ratio_vs_unauthenticated
        print(
            f"  {name:<22} {path:<15} vault {row.vault_ops_per_s:9.0f}/s   raw "
            + " ".join(f"{m.sample.rate:.0f}" for m in beside[path])
            + f" /s   ratio {row.ratio:5.2f}"
            + ("" if math.isnan(versus) else f"   vs unauthenticated {versus:5.2f}")
            + (f"   ERRORS {row.errors}: {row.first_error}" if row.errors else ""),
            flush=True,
        )
    return list(rows.values())


def _row(
    name: str,
    workers: int,
    clients: int,
    path: str,
    connections: list[int],
    raws: list[Measured],
    vaults: list[Measured],
    seconds: float,
) -> Row:
    vault_rate = sum(m.sample.rate for m in vaults) / len(vaults)
    raw_rates = [m.sample.rate for m in raws]
    vault_ops = sum(m.sample.rate for m in vaults) * seconds
    raw_ops = sum(raw_rates) * seconds
    vault_latencies = merged([m.sample for m in vaults])
    raw_latencies = merged([m.sample for m in raws])
    samples = [m.sample for m in [*vaults, *raws]]
    return Row(
        op=name,
        workers=workers,
        clients=clients,
        path=path,
        vault_ops_per_s=vault_rate,
        raw_ops_per_s=sum(raw_rates) / len(raw_rates),
        raw_spread=(max(raw_rates) - min(raw_rates)) / max(raw_rates) if max(raw_rates) else 0,
        p50_ms=percentile_ms(vault_latencies, 0.50),
        p99_ms=percentile_ms(vault_latencies, 0.99),
        raw_p50_ms=percentile_ms(raw_latencies, 0.50),
        server_cpu_us=_per_op(sum(m.cpu["server"] for m in vaults), vault_ops),
        client_cpu_us=_per_op(sum(m.cpu["client"] for m in vaults), vault_ops),
        raw_cpu_us=_per_op(sum(m.cpu["raw"] for m in raws), raw_ops),
        other_cores=sum(m.other_cores for m in [*vaults, *raws]) / (len(vaults) + len(raws)),
        connections=connections,
        errors=sum(sample.errors for sample in samples),
        first_error=next((sample.first_error for sample in samples if sample.first_error), ""),
    )


def _per_op(cpu: float, operations: float) -> float:
    return cpu / operations * 1e6 if operations > 0 else math.nan


# -- reporting ----------------------------------------------------------------------------


def _optional(value: float, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}{spec}}"


def _table(rows: list[Row]) -> str:
    header = (
        f"{'op':<22} {'workers':>7} {'clients':>7} {'path':<15} {'vault ops/s':>11} "
        f"{'raw ops/s':>10} {'ratio':>6} {'vs unauth':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'raw p50 ms':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        versus = row.ratio_vs_unauthenticated
        lines.append(
            f"{row.op:<22} {row.workers:>7} {row.clients:>7} {row.path:<15} "
            f"{row.vault_ops_per_s:>11.0f} {row.raw_ops_per_s:>10.0f} {row.ratio:>6.2f} "
            f"{_optional(versus, '.2f', 9)} {row.p50_ms:>7.2f} {row.p99_ms:>7.2f} "
            f"{row.raw_p50_ms:>10.3f}"
        )
    return "\n".join(lines)


def _details(rows: list[Row]) -> str:
    header = (
        f"{'op':<22} {'workers':>7} {'path':<15} {'server CPU us/req':>17} "
        f"{'client CPU us/req':>17} {'raw CPU us/op':>13} {'raw spread':>10} "
        f"{'other load':>10} {'conns/worker':>12}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        conns = "/".join(str(count) for count in row.connections)
        lines.append(
            f"{row.op:<22} {row.workers:>7} {row.path:<15} {row.server_cpu_us:>17.0f} "
            f"{row.client_cpu_us:>17.0f} {row.raw_cpu_us:>13.0f} {row.raw_spread:>10.0%} "
            f"{row.other_cores:>6.2f} cpu {conns:>12}"
        )
    return "\n".join(lines)


def _security_cost(rows: list[Row]) -> str:
    """What the authenticated path adds to each request, against the unauthenticated path
    measured in the same run; empty if the run did not measure both."""
    pairs = [
        (row, row.unauthenticated)
        for row in rows
        if row.path == AUTHENTICATED and row.unauthenticated is not None
    ]
    if not pairs:
        return ""
    header = (
        f"{'op':<22} {'workers':>7} {'server CPU us/req':>17} {'client CPU us/req':>17} "
        f"{'p50 ms':>7} {'ops/s vs unauth':>15}"
    )
    lines = [header, "-" * len(header)]
    for row, other in pairs:
        lines.append(
            f"{row.op:<22} {row.workers:>7} "
            f"{row.server_cpu_us - other.server_cpu_us:>+17.0f} "
            f"{row.client_cpu_us - other.client_cpu_us:>+17.0f} "
            f"{row.p50_ms - other.p50_ms:>+7.2f} {row.ratio_vs_unauthenticated:>15.2f}"
        )
    return "\n".join(lines)


def _verdicts(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        where = f"{row.op} with {row.workers} worker(s), {row.path}"
        versus = row.ratio_vs_unauthenticated
        against = "" if math.isnan(versus) else f"; vs unauthenticated {versus:.2f}"
        if row.op == bench_ops.RSA_SIGN:
            target = TARGET_RATIOS[row.path]
            verdict = "PASS" if row.ratio >= target else "MISS"
            lines.append(
                f"{where}: vault/raw = {row.ratio:.2f}, target >= {target:.2f}: {verdict}{against}"
            )
        else:
            lines.append(f"{where}: vault/raw = {row.ratio:.2f} (no target){against}")
    return lines


# -- entry point --------------------------------------------------------------------------


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
        "measurements. Only ratios within one run mean anything.",
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
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.client_procs < 1 or args.server_threads < 1:
        parser.error("--seconds, --rounds, --client-procs and --server-threads must be positive")
    if args.warmup < 0 or args.clients < 0:
        parser.error("--warmup and --clients must not be negative")
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
        out=args.out,
        vault_root=args.vault_root.resolve(),
        profile=args.profile,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(config: Config, stack: ExitStack) -> list[Row]:
    scratch = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    stack.callback(shutil.rmtree, scratch, ignore_errors=True)
    data_dir = scratch / "data"
    print(f"provisioning a token in {data_dir}", flush=True)
    provision(data_dir, config.vault_root)
    keys_made: set[str] = set()
    rows: list[Row] = []
    for workers in config.workers:
        rows.extend(_run_workers(config, workers, data_dir, stack, keys_made))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    started = time.monotonic()
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    # Also when started where SIGINT is ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stack = ExitStack()
    try:
        rows = run(config, stack)
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

    print(
        f"\n{_table(rows)}\n(ratio: vault/raw, raw measured just before and after the path's "
        "vault measurements; vs unauth: authenticated/unauthenticated vault ops/s)"
    )
    print(f"\nwhere the time goes (CPU per request/operation)\n{_details(rows)}")
    cost = _security_cost(rows)
    if cost:
        print(f"\nwhat the authenticated path adds per request (minus unauthenticated)\n{cost}")
    print()
    for line in _verdicts(rows):
        print(line)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps([row.result() for row in rows], indent=2) + "\n")
    print(f"\nwrote {config.out} ({time.monotonic() - started:.0f} s)")
    errors = sum(row.errors for row in rows)
    if errors:
        print(
            f"{errors} requests failed during measurement: these numbers are not valid",
            file=sys.stderr,
        )
        return 1
    return 0
