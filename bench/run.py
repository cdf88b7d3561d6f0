"""One benchmark run: per worker count, the vault servers, raw processes, load generators and
bare gRPC servers of bench/floor.py, the interleaved measurements, and the rows they make."""

from __future__ import annotations

import math
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Lock as SynchronizedLock
from pathlib import Path
from typing import Any, Final

import grpc

from bench import ops as bench_ops
from bench.buckets import BucketRow, Workload, run_workload
from bench.floor import (
    ECHO_OP,
    ECHO_PATHS,
    TOKEN_PATHS,
    VARIANTS,
    Variant,
    check_answer,
    floor_main,
)
from bench.load import bytes_call, load_main
from bench.measure import Sample, merged, percentile_ms, wait_until
from bench.raw import raw_main
from bench.serve import PROFILE_ENV
from bench.server import (
    AUTHENTICATED,
    PATHS,
    UNAUTHENTICATED,
    VaultServer,
    connections_per_worker,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    provision,
)
from vault.client import VaultClient, authenticated_channel, load_credentials_file

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
    path: str  # bench.server.PATHS, or a bare gRPC server of bench.floor.VARIANTS
    vault_ops_per_s: float  # the bare server's, on a floor path
    raw_ops_per_s: float  # nan for the echo floor, which has no raw counterpart
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
    # Every raw measurement of this operation and worker count, whichever path it was next
    # to: the ceiling table's raw figure.
    run_raw_ops_per_s: float = math.nan
    # Items per call of a batch operation (bench.ops.Op.items), 0 for a unary one. A batch
    # row's ops are items: its ops/s, CPU per op and ratio count items; p50 and p99 are per
    # call.
    items_per_call: int = 0

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
        """The results.json object; null for what was not measured (raw figures of the echo
        floor). Authenticated rows also carry ratio_vs_unauthenticated (null when that path
        was not measured)."""
        result: dict[str, float | int | str | None] = {
            "op": self.op,
            "path": self.path,
            "vault_ops_per_s": _rounded(self.vault_ops_per_s, 1),
            "raw_ops_per_s": _rounded(self.raw_ops_per_s, 1),
            "ratio": _rounded(self.ratio, 3),
            "p50_ms": _rounded(self.p50_ms, 3),
            "p99_ms": _rounded(self.p99_ms, 3),
            "clients": self.clients,
            "workers": self.workers,
            "server_cpu_us": _rounded(self.server_cpu_us, 1),
            "client_cpu_us": _rounded(self.client_cpu_us, 1),
        }
        if self.path == AUTHENTICATED:
            result["ratio_vs_unauthenticated"] = _rounded(self.ratio_vs_unauthenticated, 3)
        if self.items_per_call:
            # A batch spreads a call's fixed cost over its items: what bounds it is the
            # token's own rate, the raw loop beside it, so that is its ceiling.
            result["items_per_call"] = self.items_per_call
            result["ceiling_ops_per_s"] = _rounded(self.raw_ops_per_s, 1)
            result["ratio_to_ceiling"] = _rounded(self.ratio, 3)
        return result


def _rounded(value: float, digits: int) -> float | None:
    # JSON has no NaN: json.dumps would write a token other readers reject.
    return None if math.isnan(value) else round(value, digits)


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
    floor: bool  # measure bench/floor.py's bare gRPC servers too
    out: Path
    vault_root: Path
    profile: Path | None
    buckets: Workload | None = None  # the bucket workload (bench/buckets.py), if run
    scale_sizes: list[int] = field(default_factory=list)  # bench/scale.py; empty: not run
    creations: int = 0  # bench/creation.py: creations per kind and client count; 0: not run
    # bench/concurrency.py: client counts (empty: not run) and the operations it measures
    sweep_clients: list[int] = field(default_factory=list)
    sweep_ops: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Results:
    rows: list[Row]
    buckets: BucketRow | None = None


def _clients(config: Config, workers: int) -> int:
    return config.clients or 4 * workers


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _balance(load: Pool, port: int, workers: list[int], clients: int) -> list[int]:
    """Reconnect every client until the kernel has given each worker (a process serving
    port) its share of the connections (SO_REUSEPORT hashes each connection to a worker
    independently)."""
    slack = 0 if clients % len(workers) == 0 else 1
    counts: list[int] = []
    for _ in range(_BALANCE_ATTEMPTS):
        load.command(("connect",), timeout=60)
        time.sleep(0.05)
        counts = list(connections_per_worker(workers, port).values())
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
    """One path (a vault server or a bare gRPC server) and the load generators that drive
    it."""

    path: str
    ops: frozenset[str]  # what its load generators can send
    load: Pool
    groups: dict[str, list[int]]  # processes whose CPU time a measurement reads
    connections: list[int]  # client connections per server worker


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
    # One server per path, all on data_dir, started one after the other: a server's start-up
    # reconciliation of store and token must not run while another server creates keys.
    # An idle server costs no measurable CPU: other_cores, which counts it, reads 0.00 on a
    # quiet machine.
    servers: list[VaultServer] = []
    requests: dict[str, tuple[str, bytes]] = {}
    for path in config.paths:
        servers.append(_start_server(config, workers, path, data_dir, stack))
        requests = _prepare(servers[-1], config.ops, keys_made)
    # The raw processes open the token only now: while a server starts, it rewrites the
    # token's files (its system keys), and SoftHSM reading them at that moment may find no
    # token with the vault's label.
    raw = Pool(context, "raw", raw_main, [(str(data_dir), config.ops)] * workers)
    stack.callback(raw.close)
    raw.receive(timeout=_READY_TIMEOUT_SECONDS)
    # Started once the vault servers have made their keys and the raw processes have logged
    # in: no other process writes the token file while these open it.
    floors = _start_floors(config, context, workers, data_dir, stack)
    targets = []
    for server in servers:
        file = server.credentials_file
        load = _load_pool(
            context, config, server.path, server.target, clients, requests, file, stack
        )
        worker_pids = server.worker_pids()
        connections = _balance(load, server.port, worker_pids, clients)
        print(f"  {server.path} server: connections per worker: {connections}", flush=True)
        server_pids = [*worker_pids, *([server.process.pid] if server.process else [])]
        groups = {"server": server_pids, "client": load.pids}
        targets.append(Target(server.path, frozenset(config.ops), load, groups, connections))
    for floor in floors:
        targets.append(_floor_target(context, config, floor, clients, stack))

    rows = []
    echo_targets = [target for target in targets if ECHO_OP in target.ops]
    # Right after RSA signing, the operation whose ceiling the echo floor helps explain.
    echo_after = bench_ops.RSA_SIGN if bench_ops.RSA_SIGN in config.ops else config.ops[0]
    for index, name in enumerate(config.ops):
        op_targets = [target for target in targets if name in target.ops]
        rows.extend(_measure_op(config, name, index, workers, clients, raw, op_targets))
        if name == echo_after and echo_targets:
            rows.extend(_measure_echo(config, workers, clients, echo_targets))
    # Stop this worker count's processes before the next starts (profiles are written now).
    for target in targets:
        target.load.close()
    raw.close()
    for floor in floors:
        floor.servers.close()
    for server in servers:
        server.stop()
    return rows


def _load_pool(
    context: SpawnContext,
    config: Config,
    path: str,
    target: str,
    clients: int,
    requests: dict[str, tuple[str, bytes]],
    credentials_file: Path | None,
    stack: ExitStack,
) -> Pool:
    """The load generators of one path: clients threads (and connections) in all."""
    file = None if credentials_file is None else str(credentials_file)
    arguments = [
        (target, threads, requests, file) for threads in _split(clients, config.client_procs)
    ]
    load = Pool(context, f"load-{path}", load_main, arguments)
    stack.callback(load.close)
    return load


@dataclass(slots=True)
class Floor:
    """The processes of one bare gRPC server (bench/floor.py), all serving one port."""

    variant: Variant
    port: int
    servers: Pool
    # Held while the processes live: a spawned child rebuilds it from its name, which goes
    # when the parent's last reference does.
    token_lock: SynchronizedLock
    public_keys: list[tuple[int, int]] = field(default_factory=list)  # token-bound only


def _start_floors(
    config: Config, context: SpawnContext, workers: int, data_dir: Path, stack: ExitStack
) -> list[Floor]:
    """Start, without waiting for them, the bare servers this run measures: workers
    processes each. The token-bound ones sign with RSA-2048, so they run only with it."""
    if not config.floor:
        return []
    paths = list(ECHO_PATHS)
    if bench_ops.RSA_SIGN in config.ops:
        paths += TOKEN_PATHS
    else:
        print(f"  the token-bound floor needs {bench_ops.RSA_SIGN} in --ops: echo only")
    floors = []
    token_lock = context.Lock()
    for path in paths:
        port = free_port()
        arguments = [(path, port, config.server_threads, str(data_dir), token_lock)] * workers
        servers = Pool(context, f"server-{path}", floor_main, arguments)
        stack.callback(servers.close)
        floors.append(Floor(VARIANTS[path], port, servers, token_lock))
    return floors


def _floor_target(
    context: SpawnContext, config: Config, floor: Floor, clients: int, stack: ExitStack
) -> Target:
    """floor's servers once ready, checked through one answer, with their load generators
    connected as the vault's are."""
    ready = floor.servers.receive(timeout=_READY_TIMEOUT_SECONDS)
    floor.public_keys = [public for _, _, public in ready if public is not None]
    variant = floor.variant
    target = f"127.0.0.1:{floor.port}"
    requests = variant.requests()
    with grpc.insecure_channel(target) as channel:
        answer = bytes_call(channel, variant.method)(requests[variant.op][1], timeout=30)
    check_answer(variant, answer, floor.public_keys)
    load = _load_pool(context, config, variant.path, target, clients, requests, None, stack)
    pids = floor.servers.pids
    connections = _balance(load, floor.port, pids, clients)
    print(f"  {variant.path} server: connections per worker: {connections}", flush=True)
    groups = {"server": pids, "client": load.pids}
    return Target(variant.path, frozenset(requests), load, groups, connections)


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
    within one operation's measurements favours neither path. targets: the vault's paths,
    and for RSA-2048 signing the token-bound bare servers, which are measured alike."""
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
    run_raw = sum(m.sample.rate for m in raws) / len(raws)
    for path, row in rows.items():
        row.run_raw_ops_per_s = run_raw
        versus = row.ratio_vs_unauthenticated
        print(
            f"  {name:<30} {path:<15} {_side(path)} {row.vault_ops_per_s:9.0f}/s   raw "
            + " ".join(f"{m.sample.rate:.0f}" for m in beside[path])
            + f" /s   ratio {row.ratio:5.2f}"
            + ("" if math.isnan(versus) else f"   vs unauthenticated {versus:5.2f}")
            + (f"   ERRORS {row.errors}: {row.first_error}" if row.errors else ""),
            flush=True,
        )
    return list(rows.values())


def _side(path: str) -> str:
    return "vault " if path in PATHS else "server"


def _measure_echo(config: Config, workers: int, clients: int, targets: list[Target]) -> list[Row]:
    """The bare echo servers, one after the other (taking turns going first from one round
    to the next). No raw measurement goes with them: an echo has no PKCS#11 counterpart;
    what they show is gRPC's own CPU per call."""
    measured: dict[str, list[Measured]] = {target.path: [] for target in targets}
    for round_ in range(config.rounds):
        for target in targets if round_ % 2 == 0 else targets[::-1]:
            measured[target.path].append(
                _measure(target.load, ECHO_OP, config.warmup, config.seconds, target.groups)
            )
    rows = []
    for target in targets:
        row = _row(
            ECHO_OP,
            workers,
            clients,
            target.path,
            target.connections,
            [],
            measured[target.path],
            config.seconds,
        )
        print(
            f"  {ECHO_OP:<30} {target.path:<15} server {row.vault_ops_per_s:9.0f}/s   "
            f"server CPU {row.server_cpu_us:.0f} us/req"
            + (f"   ERRORS {row.errors}: {row.first_error}" if row.errors else ""),
            flush=True,
        )
        rows.append(row)
    return rows


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
    op = bench_ops.OPS.get(name)
    items = op.items if op is not None else 0
    # Calls of a batch operation carry items each, and the raw side counts items.
    vault_rate = sum(m.sample.rate for m in vaults) / len(vaults) * (items or 1)
    raw_rates = [m.sample.rate for m in raws] or [math.nan]  # none for the echo floor
    vault_ops = sum(m.sample.rate for m in vaults) * seconds * (items or 1)
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
        items_per_call=items,
    )


def _per_op(cpu: float, operations: float) -> float:
    return cpu / operations * 1e6 if operations > 0 else math.nan


def _run_buckets(config: Config, data_dir: Path, stack: ExitStack) -> BucketRow:
    """The bucket workload against an authenticated server with the run's largest worker
    count, started once the measurements above are done (it would disturb them)."""
    assert config.buckets is not None
    workers = max(config.workers)
    print(f"\n== bucket workload: {workers} worker process(es)", flush=True)
    server = _start_server(config, workers, AUTHENTICATED, data_dir, stack)
    assert server.credentials_file is not None
    try:
        return run_workload(server.target, server.credentials_file, config.buckets, workers)
    finally:
        server.stop()


def run(config: Config, stack: ExitStack) -> Results:
    scratch = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    stack.callback(shutil.rmtree, scratch, ignore_errors=True)
    data_dir = scratch / "data"
    print(f"provisioning a token in {data_dir}", flush=True)
    provision(data_dir, config.vault_root)
    keys_made: set[str] = set()
    rows: list[Row] = []
    for workers in config.workers:
        rows.extend(_run_workers(config, workers, data_dir, stack, keys_made))
    buckets = None if config.buckets is None else _run_buckets(config, data_dir, stack)
    return Results(rows, buckets)
