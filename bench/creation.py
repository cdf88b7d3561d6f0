"""How fast keys and buckets are created through the API: part of `make bench`.

    python -m bench.creation [--creations N] [--out FILE]
    python -m bench.creation --profile [--creations N]

Through a real server (the default settings: authenticated and audited, two workers, as
bench/scale.py runs it), the SDK creates AES-256-GCM keys, P-256 signing keys, RSA-2048
signing keys (a tenth as many: the token's RSA key generation is slow) and buckets, from 1
and then 4 client threads of this process, each thread with its own connection (as
bench/scale.py and bench/buckets.py drive the SDK; bench/load.py's processes send
pre-serialised bytes, which no creation could reuse: each needs a new id). Every
CreateKey is what a user's is: the key generated in the token, wrapped under its root, the
session object destroyed, the rows stored, the call audited (a STARTED and an OK record).
Rows go to results.json under path "create" with the fields of the other rows: creations
per second, p50 and p99 of a call, the workers' CPU per creation (token key generation
included) and this process's (the clients') CPU per creation.

--profile measures instead, in one process without gRPC on a scratch token, where one
CreateKey's time goes for AES-256-GCM and P-256 (profile() below, each piece timed by a
wrapper): the account and name checks, the token's key generation, the public key's export,
the wrap, the destroy of the session object(s), the store's insert, the two audit records,
and the rest.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.measure import in_threads
from bench.results_file import replace_rows
from bench.server import (
    AUTHENTICATED,
    ROOT,
    VaultServer,
    cpu_seconds,
    own_client,
    provision,
    run_in_vault,
)
from vault.client import VaultClient

COUNT_ENV: Final = "VAULT_BENCH_CREATIONS"
DEFAULT_COUNT: Final = 200
PATH: Final = "create"
CLIENTS: Final = (1, 4)
WORKERS: Final = 2
ACCOUNT: Final = "creation"
PARENT: Final = f"accounts/{ACCOUNT}"
BUCKET: Final = "create_bucket"
# A tenth as many RSA-2048 keys: SoftHSM takes some 50-500 ms to find an RSA-2048 key pair.
RSA_SHARE: Final = 10
_CALL_TIMEOUT_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Kind:
    """What one row creates: a key of purpose and algorithm, or (purpose "") a bucket."""

    op: str
    purpose: str
    algorithm: str
    share: int = 1  # creations of this kind: the run's count divided by share

    def count(self, creations: int) -> int:
        return max(max(CLIENTS), creations // self.share)


KINDS: Final = (
    Kind("create_key_aes256", "ENCRYPT_DECRYPT", "AES_256_GCM"),
    Kind("create_key_p256", "SIGN_VERIFY", "EC_SIGN_P256_SHA256"),
    Kind("create_key_rsa2048", "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256", RSA_SHARE),
    Kind(BUCKET, "", ""),
)


def parse_count(text: str) -> int:
    """Creations per kind and client count; 0 turns the step off."""
    count = int(text)
    if count < 0:
        raise ValueError("the number of creations must not be negative")
    return count


def count_from_environment() -> int:
    """The creations `make bench` makes per kind and client count: $VAULT_BENCH_CREATIONS
    (0 turns the step off), by default 200."""
    text = os.environ.get(COUNT_ENV)
    return DEFAULT_COUNT if text is None or not text.strip() else parse_count(text)


# -- through a server --------------------------------------------------------------------


def _client(target: str, credentials_file: Path) -> VaultClient:
    client: VaultClient = own_client(target, credentials_file, _CALL_TIMEOUT_SECONDS)
    return client


def _create(client: VaultClient, kind: Kind, resource_id: str) -> None:
    if kind.op == BUCKET:
        client.create_bucket(PARENT, resource_id)
    else:
        client.create_key(PARENT, resource_id, kind.purpose, kind.algorithm)


def _timed_creations(
    clients: list[VaultClient], kind: Kind, prefix: str, count: int
) -> tuple[list[float], float]:
    """count creations of kind spread over the clients, one thread each: every call's latency
    (s) and the wall time from the moment all threads are ready until the last is done."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work(numbers: range) -> None:
        client, mine = clients[numbers.start], list[float]()
        for number in numbers:
            started = time.perf_counter()
            _create(client, kind, f"{prefix}-{number:07d}")
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    return latencies, in_threads(len(clients), count, work)


def _percentile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e3


def measure_server(
    server: VaultServer, creations: int, kinds: Sequence[Kind] = KINDS
) -> list[dict[str, Any]]:
    """The rows of each kind at each of CLIENTS against a running authenticated server."""
    assert server.credentials_file is not None
    workers = server.worker_pids()
    run_id = secrets.token_hex(3)
    rows: list[dict[str, Any]] = []
    with _client(server.target, server.credentials_file) as admin:
        admin.create_account(ACCOUNT)
    for kind in kinds:
        count = kind.count(creations)
        for threads in CLIENTS:
            clients = [_client(server.target, server.credentials_file) for _ in range(threads)]
            try:
                prefix = f"{kind.op.replace('_', '-')}-{run_id}-{threads}"
                # Warm-up: each connection made and each worker's first creation of the kind
                # done (a root's handle found, the code paths loaded) before the clock starts.
                _timed_creations(clients, kind, f"{prefix}-warm", 2 * threads)
                server_before = cpu_seconds(workers)
                client_before = time.process_time()
                latencies, wall = _timed_creations(clients, kind, prefix, count)
                client_cpu = time.process_time() - client_before
                server_cpu = cpu_seconds(workers) - server_before
            finally:
                for client in clients:
                    client.close()
            made = len(latencies)
            rate = made / wall
            row = {
                "op": kind.op,
                "path": PATH,
                "vault_ops_per_s": round(rate, 1),
                "raw_ops_per_s": None,
                "ratio": None,
                "p50_ms": round(statistics.median(latencies) * 1e3, 3),
                "p99_ms": round(_percentile_ms(latencies, 0.99), 3),
                "clients": threads,
                "workers": len(workers),
                "server_cpu_us": round(server_cpu / made * 1e6, 1),
                "client_cpu_us": round(client_cpu / made * 1e6, 1),
                "creations": made,
                "hours_per_million": round(1e6 / rate / 3600, 2),
            }
            rows.append(row)
            print(
                f"  {kind.op:<20} {threads} client(s): {rate:8.1f}/s   p50 {row['p50_ms']:.1f} "
                f"ms   server CPU {row['server_cpu_us']:.0f} us per creation",
                flush=True,
            )
    return rows


def measure(creations: int, vault_root: Path = ROOT) -> list[dict[str, Any]]:
    """The creation rows (results.json objects) on a scratch token; none when creations is 0."""
    if creations <= 0:
        return []
    with tempfile.TemporaryDirectory(prefix="vault-creation-") as scratch:
        data_dir = Path(scratch) / "data"
        print(f"\n== creation through the API: provisioning a token in {data_dir}", flush=True)
        provision(data_dir, vault_root)
        server = VaultServer(
            data_dir, vault_root, AUTHENTICATED, {"VAULT_SERVER__WORKERS": str(WORKERS)}
        )
        with server:
            return measure_server(server, creations)


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'op':<20}{'clients':>8}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU us':>15}{'h per 10^6':>12}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['op']:<20}{row['clients']:>8}{row['vault_ops_per_s']:>9.1f}"
            f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['server_cpu_us']:>15.0f}"
            f"{row['hours_per_million']:>12.2f}"
        )


# -- where one creation's time goes (one process, no gRPC) --------------------------------

# The pieces of a CreateKey, in the order a call reaches them.
PIECES: Final = (
    "account check",
    "name check",
    "token keygen",
    "public key export",
    "wrap",
    "destroy",
    "store insert",
    "audit (2 records)",
)

_PROFILE = """
import json, sys
from bench.creation import profile
print(json.dumps(profile(int(sys.argv[1]))))
"""


class _Timers:
    """Seconds spent in each wrapped function, by piece: a wrapper adds about a microsecond
    per call, where a profiler would slow the Python pieces more than the token's."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PIECES, 0.0)

    def wrap(self, piece: str, function: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.perf_counter
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[piece] += clock() - started

        return timed

    def reset(self) -> None:
        for piece in self.seconds:
            self.seconds[piece] = 0.0

    def patch(self, owner: Any, attribute: str, piece: str) -> None:
        setattr(owner, attribute, self.wrap(piece, getattr(owner, attribute)))


def profile(creations: int) -> dict[str, dict[str, float]]:
    """Per kind (AES-256-GCM, P-256): microseconds per CreateKey, in this process on the
    vault's environment (VAULT_DATA_DIR: a token and store whose server made the account),
    through the use case and the audit log as the server calls them (a STARTED record, the
    creation, an OK record): the whole ("total"), each piece of PIECES, and the rest (the use
    case's own checks, the token layer's session handling)."""
    from datetime import UTC, datetime

    from vault.app import build_services
    from vault.config import Settings
    from vault.domain.algorithms import Algorithm, Purpose
    from vault.domain.audit import AuditEvent
    from vault.hsm import keystore as keystore_module
    from vault.hsm import objects

    services = build_services(Settings())  # type: ignore[call-arg]
    security = services.security
    assert security is not None
    keys: Any = services.keys
    timers = _Timers()
    # The library's own methods, as the keystore calls them; the vault's functions where the
    # keystore looks them up; the stores' and the audit log's methods on their instances.
    # The token's key generation is what keystore.generate spends beyond the other token
    # pieces timed inside it (the library's classes cannot take a wrapper): the session
    # checkout and the token layer's gate, a few microseconds, are counted with it.
    token: Any = services.keystore
    timers.patch(token, "generate", "token keygen")
    find_root = token._root

    class Root:
        """A root key whose wrap_key is timed."""

        def __init__(self, root: Any) -> None:
            self.wrap_key = timers.wrap("wrap", root.wrap_key)

    token._root = lambda *args: Root(find_root(*args))
    timers.patch(objects, "destroy_quietly", "destroy")
    timers.patch(keystore_module, "public_key_der", "public key export")
    timers.patch(keys._accounts, "get_account", "account check")
    timers.patch(services.store, "get_key", "name check")
    timers.patch(services.store, "create_key", "store insert")
    timers.patch(security.audit, "record_all", "audit (2 records)")
    kinds = {
        "create_key_aes256": (Purpose.ENCRYPT_DECRYPT, Algorithm.AES_256_GCM),
        "create_key_p256": (Purpose.SIGN_VERIFY, Algorithm.EC_SIGN_P256_SHA256),
    }
    run_id = secrets.token_hex(3)

    def event(outcome: str, resource: str) -> AuditEvent:
        return AuditEvent(
            occurred_at=datetime.now(UTC),
            request_id=secrets.token_hex(16),
            credential_id="bench",
            account="admin",
            method="/vault.v1.KeyService/CreateKey",
            resource=resource,
            outcome=outcome,
            reason="",
            latency_us=0,
            source="local:bench",
        )

    def create(op: str, tag: str, count: int) -> float:
        """count creations of op's kind; their wall time in seconds."""
        purpose, algorithm = kinds[op]
        started = time.perf_counter()
        for number in range(count):
            key_id = f"{op.replace('_', '-')}-{run_id}-{tag}-{number}"
            resource = f"{PARENT}/keys/{key_id}"
            security.audit.record(event("STARTED", resource))
            services.keys.create_key(ACCOUNT, key_id, purpose, algorithm)
            security.audit.record(event("OK", resource))
        return time.perf_counter() - started

    result: dict[str, dict[str, float]] = {}
    try:
        for op in kinds:
            create(op, "warm", max(1, creations // 10))
            timers.reset()
            total = create(op, "timed", creations)
            inside = ("public key export", "wrap", "destroy")
            timers.seconds["token keygen"] -= sum(timers.seconds[piece] for piece in inside)
            figures = {"total": total, **timers.seconds}
            figures["rest"] = total - sum(timers.seconds.values())
            result[op] = {piece: round(s / creations * 1e6, 1) for piece, s in figures.items()}
    finally:
        services.close()
    return result


def run_profile(creations: int, vault_root: Path = ROOT) -> dict[str, dict[str, float]]:
    """profile(creations) in a child process with the vault's environment, on a scratch
    token; the first start of a server on it makes the admin, the system keys and the
    account."""

    with tempfile.TemporaryDirectory(prefix="vault-creation-profile-") as scratch:
        data_dir = Path(scratch) / "data"
        provision(data_dir, vault_root)
        server = VaultServer(data_dir, vault_root, AUTHENTICATED)
        with server:
            assert server.credentials_file is not None
            with _client(server.target, server.credentials_file) as admin:
                admin.create_account(ACCOUNT)
        result: dict[str, dict[str, float]] = run_in_vault(
            _PROFILE, [str(creations)], data_dir, vault_root, "profiling CreateKey"
        )
    return result


def print_profile(result: dict[str, dict[str, float]]) -> None:
    pieces = ["total", *PIECES, "rest"]
    print(f"{'us per CreateKey':<20}" + "".join(f"{op:>20}" for op in result))
    for piece in pieces:
        print(f"{piece:<20}" + "".join(f"{figures[piece]:>20.1f}" for figures in result.values()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.creation", description=__doc__)
    parser.add_argument(
        "--creations",
        type=parse_count,
        default=None,
        help=f"creations per kind and client count (default: ${COUNT_ENV}, else "
        f"{DEFAULT_COUNT}; RSA-2048 keys: a tenth)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: where one CreateKey's time goes, in one process without gRPC",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--vault-root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    creations = args.creations if args.creations is not None else count_from_environment()
    vault_root = args.vault_root.resolve()
    if args.profile:
        print_profile(run_profile(max(1, creations), vault_root))
        return 0
    rows = measure(creations, vault_root)
    print_rows(rows)
    replace_rows(args.out, PATH, rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
