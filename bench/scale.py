"""Millions of keys: what a call costs at 10^3, 10^5 and 10^6 keys in the store.

    python -m bench.scale [--sizes 1000,100000,1000000] [--calls 2000] [--out FILE]

One provisioned token and store, grown from size to size. Through a real server (the default
settings: authenticated, audited, two workers) the run first creates the account and one
key per kind (a P-256 signing key, an AES-256-GCM key) and a bucket; the store is then filled
to each size directly, in batches of rows, by copying those real rows under new ids with the
server stopped (SoftHSM makes about 1,000 RSA or 8,000 AES keys a second, and every key of a
kind here may share its material: Sign, Encrypt and GetKey do not depend on which blob a
version holds, while every version is still unwrapped and cached on its own, under its own
name). Half the keys are signing keys, half encryption keys; a tenth as many buckets are added,
each with its master key.

At each size: the server's start-up time (start to serving), then Sign, Encrypt and GetKey on
keys picked uniformly at random among all of their kind, from --clients threads in this
process (p50 and p99 of each call, ops/s, the workers' CPU per call), the resident memory of
the workers afterwards (bounded by hsm.cache_size, hsm.version_cache_size and
store.key_cache_size, not by the number of keys), and ListKeys over pages of 1,000 keys (time
per listed key, client included). Rows go to results.json under path "scale", with the size
in "keys"; p50_vs_smallest compares each p50 with the smallest size's in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench.ops import PLAINTEXT_1K, SIGN_MESSAGE
from bench.results_file import replace_rows
from bench.server import AUTHENTICATED, ROOT, VaultServer, cpu_seconds, provision, run_in_vault

SIZES_ENV: Final = "VAULT_BENCH_SCALE_SIZES"
DEFAULT_SIZES: Final = (1_000, 100_000)
ACCOUNT: Final = "scale"
PARENT: Final = f"accounts/{ACCOUNT}"
PATH: Final = "scale"
SIGN_SEED: Final = "seed-sign"
ENCRYPT_SEED: Final = "seed-encrypt"
BUCKET_SEED: Final = "seed-bucket"
# Ids of the copies: prefix and a zero-padded number, so pages list them in number order. The
# seeds' ids (and a master key's random hex id) never start with one of these prefixes.
SIGN_PREFIX: Final = "sign-"
ENCRYPT_PREFIX: Final = "enc-"
BUCKET_PREFIX: Final = "bucket-"
BATCH_ROWS: Final = 20_000
LIST_PAGES: Final = 5
LIST_PAGE_SIZE: Final = 1000


def key_id(prefix: str, number: int) -> str:
    return f"{prefix}{number:08d}"


def parse_sizes(text: str) -> list[int]:
    """Comma-separated key counts, smallest first; "0" (or nothing) is none."""
    sizes = sorted({int(part) for part in text.split(",") if part.strip()} - {0})
    if any(size < 2 for size in sizes):
        raise ValueError("every size must be at least 2 keys")
    return sizes


def sizes_from_environment() -> list[int]:
    """The sizes `make bench` measures: VAULT_BENCH_SCALE_SIZES (comma-separated; empty or 0
    turns the workload off), by default 1,000 and 100,000 keys."""
    text = os.environ.get(SIZES_ENV)
    return list(DEFAULT_SIZES) if text is None else parse_sizes(text)


# -- filling the store (a child process with the vault's environment) -----------------------

_POPULATE = """
import json, sys
from bench.scale import populate
print(json.dumps(populate(int(sys.argv[1]))))
"""


def populate(size: int) -> dict[str, float]:
    """Grow the store to size keys (half signing, half encryption) and size // 10 buckets, by
    copying the seed rows in batches; runs with the vault's environment (VAULT_DATA_DIR)."""
    from sqlalchemy import create_engine, func, insert, select

    from vault.config import Settings
    from vault.domain.names import MASTER_KEY_PREFIX
    from vault.storage.tables import buckets, key_versions, keys

    settings = Settings()  # type: ignore[call-arg]
    assert settings.store.url is not None
    engine = create_engine(settings.store.url)
    started = time.perf_counter()
    created = 0
    with engine.connect() as connection:

        def row(table: Any, *where: Any) -> dict[str, Any]:
            return dict(connection.execute(select(table).where(*where)).mappings().one())

        def seed_key(seed_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
            key = row(keys, keys.c.account == ACCOUNT, keys.c.key_id == seed_id)
            version = row(
                key_versions, key_versions.c.account == ACCOUNT, key_versions.c.key_id == seed_id
            )
            return key, version

        def count(table: Any, column: Any, prefix: str) -> int:
            query = select(func.count()).where(
                table.c.account == ACCOUNT, column.like(f"{prefix}%")
            )
            return int(connection.execute(query).scalar_one())

        bucket = row(buckets, buckets.c.account == ACCOUNT, buckets.c.bucket_id == BUCKET_SEED)
        kinds = {
            SIGN_PREFIX: seed_key(SIGN_SEED),
            ENCRYPT_PREFIX: seed_key(ENCRYPT_SEED),
            MASTER_KEY_PREFIX + BUCKET_PREFIX: seed_key(bucket["master_key_id"]),
        }
        targets = {SIGN_PREFIX: size // 2, ENCRYPT_PREFIX: size - size // 2}
        targets[MASTER_KEY_PREFIX + BUCKET_PREFIX] = size // 10
        for prefix, target in targets.items():
            key, version = kinds[prefix]
            have = count(keys, keys.c.key_id, prefix)
            while have < target:
                numbers = range(have, min(target, have + BATCH_ROWS))
                ids = [key_id(prefix, number) for number in numbers]
                connection.rollback()  # end the reads' implicit transaction
                with connection.begin():
                    connection.execute(
                        insert(keys), [{**key, "key_id": i, "request_id": None} for i in ids]
                    )
                    connection.execute(
                        insert(key_versions), [{**version, "key_id": i} for i in ids]
                    )
                    if prefix.startswith(MASTER_KEY_PREFIX):
                        connection.execute(
                            insert(buckets),
                            [
                                {
                                    **bucket,
                                    "bucket_id": key_id(BUCKET_PREFIX, number),
                                    "master_key_id": i,
                                    "request_id": None,
                                }
                                for number, i in zip(numbers, ids, strict=True)
                            ],
                        )
                created += len(ids)
                have += len(ids)
    engine.dispose()
    seconds = time.perf_counter() - started
    return {"created": created, "seconds": seconds}


# -- measuring through a server -----------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _timed_calls(
    call: Callable[[random.Random], object], calls: int, clients: int
) -> tuple[list[float], float]:
    """Latencies (s) of calls made from clients threads, and the wall time they took."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(seed: int, count: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        try:
            for _ in range(count):
                start = time.perf_counter()
                call(rng)
                mine.append(time.perf_counter() - start)
        except BaseException as error:  # re-raised below, in the measuring thread
            failures.append(error)
        with lock:
            latencies.extend(mine)

    share = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=worker, args=(i, n)) for i, n in enumerate(share)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if failures:
        raise failures[0]
    return latencies, wall


def _ops(size: int) -> dict[str, Callable[[Any, random.Random], object]]:
    signing, encrypting = size // 2, size - size // 2

    def name(prefix: str, count: int, rng: random.Random) -> str:
        return f"{PARENT}/keys/{key_id(prefix, rng.randrange(count))}"

    def any_key(rng: random.Random) -> str:
        if rng.randrange(size) < signing:
            return name(SIGN_PREFIX, signing, rng)
        return name(ENCRYPT_PREFIX, encrypting, rng)

    return {
        "p256_ecdsa_sign": lambda client, rng: client.sign(
            name(SIGN_PREFIX, signing, rng), message=SIGN_MESSAGE
        ),
        "aes256_gcm_encrypt_1k": lambda client, rng: client.encrypt(
            name(ENCRYPT_PREFIX, encrypting, rng), PLAINTEXT_1K
        ),
        "get_key": lambda client, rng: client.get_key(any_key(rng)),
    }


def _list_keys_us_per_key(client: Any) -> float:
    listed, token = 0, ""
    started = time.perf_counter()
    for _ in range(LIST_PAGES):
        page = client.list_keys(PARENT, page_size=LIST_PAGE_SIZE, page_token=token)
        listed += len(page.keys)
        token = page.next_page_token
        if not token:
            break
    return (time.perf_counter() - started) / listed * 1e6


def _seed(data_dir: Path, vault_root: Path) -> None:
    """The account and the real keys and bucket whose rows are copied."""
    with VaultServer(data_dir, vault_root, AUTHENTICATED) as server, server.client() as client:
        client.create_account(ACCOUNT)
        client.create_key(PARENT, SIGN_SEED, "SIGN_VERIFY", "EC_SIGN_P256_SHA256")
        client.create_key(PARENT, ENCRYPT_SEED, "ENCRYPT_DECRYPT", "AES_256_GCM")
        client.create_bucket(PARENT, BUCKET_SEED)


def _populate(data_dir: Path, vault_root: Path, size: int) -> dict[str, float]:
    result: dict[str, float] = run_in_vault(
        _POPULATE, [str(size)], data_dir, vault_root, "filling the store"
    )
    return result


def measure(
    sizes: Sequence[int], calls: int = 2000, clients: int = 2, vault_root: Path = ROOT
) -> list[dict[str, Any]]:
    """The scale rows (results.json objects) for each size, smallest first."""
    rows: list[dict[str, Any]] = []
    smallest: dict[str, float] = {}
    if not sizes:
        return rows
    with tempfile.TemporaryDirectory(prefix="vault-scale-") as scratch:
        data_dir = Path(scratch) / "data"
        print(f"scale: provisioning a token in {data_dir}", flush=True)
        provision(data_dir, vault_root)
        _seed(data_dir, vault_root)
        for size in sorted(sizes):
            made = _populate(data_dir, vault_root, size)
            rate = made["created"] / made["seconds"] if made["seconds"] else float("nan")
            print(
                f"scale: {size:,} keys: {made['created']:,.0f} key rows added in "
                f"{made['seconds']:.1f} s ({rate:,.0f}/s)",
                flush=True,
            )
            server = VaultServer(data_dir, vault_root, AUTHENTICATED)
            started = time.perf_counter()
            server.start(timeout=600)
            startup = time.perf_counter() - started
            try:
                workers = server.worker_pids()
                with server.client() as client:
                    for op, call in _ops(size).items():
                        bound = partial(call, client)
                        _timed_calls(bound, calls // 10, 1)  # warm-up: connections, seeds
                        cpu_before = cpu_seconds(workers)
                        latencies, wall = _timed_calls(bound, calls, clients)
                        cpu = cpu_seconds(workers) - cpu_before
                        p50 = statistics.median(latencies) * 1e3
                        smallest.setdefault(op, p50)
                        rows.append(
                            {
                                "op": op,
                                "path": PATH,
                                "keys": size,
                                "vault_ops_per_s": round(len(latencies) / wall, 1),
                                "raw_ops_per_s": None,
                                "ratio": None,
                                "p50_ms": round(p50, 3),
                                "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
                                "clients": clients,
                                "workers": len(workers),
                                "server_cpu_us": round(cpu / len(latencies) * 1e6, 1),
                                "client_cpu_us": None,
                                "p50_vs_smallest": round(p50 / smallest[op], 3),
                                "startup_s": round(startup, 2),
                                "rows_copied_per_s": round(rate, 1),
                            }
                        )
                    per_key = _list_keys_us_per_key(client)
                rss = _rss_mib(workers)
                for row in rows:
                    if row["keys"] == size:
                        row["worker_rss_mib"] = round(rss, 1)
                rows.append(
                    {
                        "op": "list_keys",
                        "path": PATH,
                        "keys": size,
                        "us_per_listed_key": round(per_key, 2),
                        "clients": 1,
                        "workers": len(workers),
                        "startup_s": round(startup, 2),
                        "worker_rss_mib": round(rss, 1),
                    }
                )
            finally:
                server.stop()
            print(
                f"scale: {size:,} keys: start-up {startup:.1f} s, workers' RSS {rss:.0f} MiB, "
                f"ListKeys {per_key:.1f} us per key",
                flush=True,
            )
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'op':<24}{'keys':>10}{'p50 ms':>9}{'p99 ms':>9}{'vs min':>8}{'ops/s':>9}")
    for row in rows:
        if row["op"] == "list_keys":
            continue
        print(
            f"{row['op']:<24}{row['keys']:>10,}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['p50_vs_smallest']:>8.2f}{row['vault_ops_per_s']:>9.0f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help=f"comma-separated key counts (default: ${SIZES_ENV}, else 1000,100000)",
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per op and size (2000)")
    parser.add_argument("--clients", type=int, default=2, help="client threads (2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--vault-root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    sizes = args.sizes if args.sizes is not None else sizes_from_environment()
    if args.calls < args.clients or args.clients < 1:
        parser.error("--clients must be at least 1 and --calls at least --clients")
    rows = measure(sizes, args.calls, args.clients, args.vault_root.resolve())
    print_rows(rows)
    replace_rows(args.out, PATH, rows)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
