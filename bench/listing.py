"""ListKeys per listed key, layer by layer, in one process: what a page costs the server
(and the client's parsing), against the same page made through the domain Key as GetKey
converts a key.

    python -m bench.listing [--keys 10000] [--page 1000] [--rounds 30]
    python -m bench.listing --server [--before DIR] [--keys 10000] [--page 1000] [--rounds 5]

A real SQLite store (the vault's migrations, in a scratch directory) is filled with --keys
rows copied from one real key, every tenth with labels and a description, every tenth revoked
and every tenth waiting for destruction. One page in the middle is then made --rounds times
by each step, the steps taking turns, and each step's figure is its cheapest round in CPU
time of this thread, divided by the keys on the page: other work on a shared machine
inflates wall time and the average, much less the cheapest round's own CPU time. Only
figures of one run compare.

Steps of the listing path (what ListKeys runs):
- store.list_keys: the query, the driver's rows and a ListedKey tuple per key;
- key_page_to_proto: the ListKeysResponse with each Key built in place;
- serialise: the response to bytes, as gRPC sends it;
- client parse: the bytes to a ListKeysResponse, as the SDK receives it;
- response bytes, parts kept: what the server runs instead of the two before (ListKeys'
  wire bytes from each listed key's kept part, vault/transport/listing.py), every part kept;
  each round on a page the store read afresh, as a call's page is (a string computes its
  hash once, on the first lookup);
- response bytes, parts made: the same with no part kept yet (a key's first listing).

With --server, the same store behind a real server instead (`python -m bench.serve`: two
workers, authenticated and audited, as bench/scale.py runs it), one client in this process
paging through every key of the account --rounds times per turn; with --before DIR (a checkout
of other vault code, e.g. `git archive main | tar -x -C DIR` plus vault/gen copied in) the
servers of the two codes serve the store in turns, three turns each. Per turn: the client's
wall time and CPU time per listed key (the median of the rounds), the workers' CPU time per
listed key (over all rounds), and a call's fixed cost: wall and worker CPU of a one-key page.

Steps of the Key path, for comparison (how a listing was made before ListedKey): the full rows
as SQLAlchemy mappings, a domain Key per row (to_key), key_to_proto per Key and the response
from those messages. Both paths must give the same bytes, or the run fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import insert, select

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.models import Key, KeyFilter, KeyState, KeyVersion, VersionState
from vault.domain.names import KeyName
from vault.gen.vault.v1 import key_service_pb2
from vault.storage import SqlMetadataStore, open_store
from vault.storage.metadata_store import to_key
from vault.storage.paging import encode_page_token
from vault.storage.tables import key_versions, keys
from vault.transport.convert import key_page_to_proto, key_to_proto
from vault.transport.listing import ListingResponses

ACCOUNT: Final = "listing"
T0: Final = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
LISTING_STEPS: Final = ("store.list_keys", "key_page_to_proto", "serialise", "client parse")
KEPT_STEP: Final = "response bytes, parts kept"
MADE_STEP: Final = "response bytes, parts made"
KEY_STEPS: Final = ("rows as mappings + to_key", "key_to_proto + response")


def key_id(number: int) -> str:
    return f"k-{number:08d}"


def fill(store: SqlMetadataStore, count: int) -> None:
    """count keys in ACCOUNT: one made by the store, the rest copies of its rows."""
    seed = Key(
        KeyName(ACCOUNT, "seed"),
        Purpose.ENCRYPT_DECRYPT,
        Algorithm.AES_256_GCM,
        KeyState.ENABLED,
        1,
        T0,
        T0,
    )
    blob = b"\x00wrapped" * 5
    store.create_key(
        seed, KeyVersion(seed.name.version(1), VersionState.ENABLED, T0, 1, blob, None)
    )
    engine = store._engine  # the bench fills the store directly, as bench/scale.py does
    with engine.connect() as connection:
        key_row = dict(connection.execute(select(keys)).mappings().one())
        version_row = dict(connection.execute(select(key_versions)).mappings().one())
        connection.rollback()  # end the reads' implicit transaction
        rows: list[dict[str, Any]] = []
        for number in range(1, count):
            row = {**key_row, "key_id": key_id(number), "request_id": None}
            row["create_time"] = row["update_time"] = T0 + timedelta(microseconds=number)
            if number % 10 == 1:
                row["labels"] = {"team": "storage", "env": "prod"}
                row["description"] = "a key with labels and a description"
            elif number % 10 == 2:
                row.update(
                    state="REVOKED",
                    revoke_time=T0 + timedelta(hours=1),
                    revocation_reason="incident 42",
                    revocation_reason_code="COMPROMISED",
                )
            elif number % 10 == 3:
                row.update(
                    state="DESTROY_SCHEDULED",
                    destroy_scheduled_time=T0 + timedelta(days=30),
                    state_before_destroy_scheduled="ENABLED",
                )
            rows.append(row)
        with connection.begin():
            connection.execute(insert(keys), rows)
            connection.execute(
                insert(key_versions), [{**version_row, "key_id": row["key_id"]} for row in rows]
            )


def _cheapest(steps: dict[str, Callable[[], object]], rounds: int, per: int) -> dict[str, float]:
    """Each step's cheapest round in this thread's CPU time, in microseconds per key."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.thread_time()
            step()
            best[name] = min(best[name], time.thread_time() - started)
    return {name: seconds / per * 1e6 for name, seconds in best.items()}


def measure(key_count: int = 10_000, page_size: int = 1000, rounds: int = 30) -> dict[str, float]:
    """Microseconds per listed key of each step of LISTING_STEPS and KEY_STEPS, and the totals
    "listing path" and "Key path" (the server's steps of each)."""
    with tempfile.TemporaryDirectory(prefix="vault-listing-") as scratch:
        store = open_store(f"sqlite:///{Path(scratch) / 'vault.db'}")
        try:
            return _measure(store, key_count, page_size, rounds)
        finally:
            store.close()


def _measure(
    store: SqlMetadataStore, key_count: int, page_size: int, rounds: int
) -> dict[str, float]:
    fill(store, key_count)
    # A page from the middle, as a client paging through the account reads most of them.
    after = key_id(max(0, key_count // 2 - page_size // 2))
    token = encode_page_token(after)
    no_filter = KeyFilter()
    full_rows = (
        select(keys)
        .where(keys.c.account == ACCOUNT, keys.c.key_id > after)
        .order_by(keys.c.key_id)
        .limit(page_size)
    )

    def key_path_rows() -> list[Key]:
        with store._engine.connect() as connection:
            return [to_key(row) for row in connection.execute(full_rows).mappings().all()]

    page = store.list_keys(ACCOUNT, no_filter, page_size, token)
    domain_keys = key_path_rows()
    response = key_page_to_proto(page)
    response.ClearField("next_page_token")
    data = response.SerializeToString()
    before = key_service_pb2.ListKeysResponse(keys=[key_to_proto(key) for key in domain_keys])
    if before.SerializeToString(deterministic=True) != response.SerializeToString(
        deterministic=True
    ):
        raise AssertionError("the listing path and the Key path give different pages")
    responses = ListingResponses(len(page.items))
    if responses.response_bytes(page) != key_page_to_proto(page).SerializeToString():
        raise AssertionError("the kept parts and the message path give different bytes")
    fresh_pages = iter(
        [store.list_keys(ACCOUNT, no_filter, page_size, token) for _ in range(rounds)]
    )
    per = len(page.items)
    figures = _cheapest(
        {
            "store.list_keys": lambda: store.list_keys(ACCOUNT, no_filter, page_size, token),
            "key_page_to_proto": lambda: key_page_to_proto(page),
            "serialise": response.SerializeToString,
            "client parse": lambda: key_service_pb2.ListKeysResponse.FromString(data),
            KEPT_STEP: lambda: responses.response_bytes(next(fresh_pages)),
            MADE_STEP: lambda: ListingResponses(len(page.items)).response_bytes(page),
            "rows as mappings + to_key": key_path_rows,
            "key_to_proto + response": lambda: key_service_pb2.ListKeysResponse(
                keys=[key_to_proto(key) for key in domain_keys]
            ),
        },
        rounds,
        per,
    )
    figures["listing path"] = sum(figures[step] for step in LISTING_STEPS[:3])
    figures["listing path, parts kept"] = figures["store.list_keys"] + figures[KEPT_STEP]
    figures["Key path"] = sum(figures[step] for step in KEY_STEPS) + figures["serialise"]
    return figures


# -- through a real server ----------------------------------------------------------------

SERVER_SETTINGS: Final = {"VAULT_SERVER__WORKERS": "2"}
TURNS: Final = 3


def measure_server(
    key_count: int, page_size: int, rounds: int, before: Path | None = None
) -> list[dict[str, Any]]:
    """One row per turn: the code ("now", or "before" for the checkout before), and its
    figures per listed key (client wall, client CPU, workers' CPU) and per call of one key."""
    from bench.server import AUTHENTICATED, ROOT, VaultServer, provision

    codes = [("now", ROOT)] + ([("before", before.resolve())] if before is not None else [])
    with tempfile.TemporaryDirectory(prefix="vault-listing-") as scratch:
        data_dir = Path(scratch) / "data"
        provision(data_dir, ROOT)
        with (
            VaultServer(data_dir, ROOT, AUTHENTICATED, SERVER_SETTINGS) as server,
            server.client() as client,
        ):
            client.create_account(ACCOUNT)
        store = open_store(f"sqlite:///{data_dir / 'vault.db'}")
        try:
            fill(store, key_count)
        finally:
            store.close()
        rows: list[dict[str, Any]] = []
        for turn in range(TURNS):
            for code, root in codes:
                with VaultServer(data_dir, root, AUTHENTICATED, SERVER_SETTINGS) as server:
                    row = _serve_turn(server, page_size, rounds)
                rows.append({"code": code, "turn": turn + 1, **row})
                print(_format_turn(rows[-1]), flush=True)
        return rows


def _serve_turn(server: Any, page_size: int, rounds: int) -> dict[str, float]:
    from bench.server import cpu_seconds

    workers = server.worker_pids()
    parent = f"accounts/{ACCOUNT}"
    with server.client() as client:

        def page_through() -> int:
            listed, token = 0, ""
            while True:
                page = client.list_keys(parent, page_size=page_size, page_token=token)
                listed += len(page.keys)
                token = page.next_page_token
                if not token:
                    return listed

        page_through()  # warm-up: connections, each worker's first calls
        wall, cpu = [], []
        workers_before, listed_in_all = cpu_seconds(workers), 0
        for _ in range(rounds):
            cpu_before = time.process_time()
            started = time.perf_counter()
            listed = page_through()
            wall.append((time.perf_counter() - started) / listed * 1e6)
            cpu.append((time.process_time() - cpu_before) / listed * 1e6)
            listed_in_all += listed
        # Over all rounds: /proc counts CPU time in ticks of 10 ms, 1 us per key of a round.
        workers_cpu = (cpu_seconds(workers) - workers_before) / listed_in_all * 1e6
        calls = 200
        workers_before = cpu_seconds(workers)
        started = time.perf_counter()
        for _ in range(calls):
            client.list_keys(parent, page_size=1)
        call_wall = (time.perf_counter() - started) / calls * 1e6
        call_cpu = (cpu_seconds(workers) - workers_before) / calls * 1e6
    return {
        "client_wall_us_per_key": statistics.median(wall),
        "client_cpu_us_per_key": statistics.median(cpu),
        "workers_cpu_us_per_key": workers_cpu,
        "one_key_call_wall_us": call_wall,
        "one_key_call_workers_cpu_us": call_cpu,
    }


def _format_turn(row: dict[str, Any]) -> str:
    return (
        f"{row['code']:<7} turn {row['turn']}: per listed key: client wall "
        f"{row['client_wall_us_per_key']:.2f} us, client CPU {row['client_cpu_us_per_key']:.2f}"
        f" us, workers' CPU {row['workers_cpu_us_per_key']:.2f} us; a one-key call: wall "
        f"{row['one_key_call_wall_us']:.0f} us, workers' CPU "
        f"{row['one_key_call_workers_cpu_us']:.0f} us"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the store (10000)")
    parser.add_argument("--page", type=int, default=1000, help="keys per page (1000)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per step (30), per turn with --server (5)"
    )
    parser.add_argument("--server", action="store_true", help="through a real server")
    parser.add_argument("--before", type=Path, help="with --server: other code to take turns with")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else 5 if args.server else 30
    if args.keys < 2 or not 1 <= args.page <= 1000 or rounds < 1:
        parser.error("--keys must be at least 2, --page 1 to 1000, --rounds at least 1")
    if args.before is not None and not args.server:
        parser.error("--before needs --server")
    if args.server:
        print(f"ListKeys through a server (pages of {args.page}, {args.keys:,} keys):")
        measure_server(args.keys, args.page, rounds, args.before)
        return 0
    figures = measure(args.keys, args.page, rounds)
    print(f"ListKeys, us per listed key (pages of {args.page}, {args.keys:,} keys):")
    for name, value in figures.items():
        print(f"  {name:<28}{value:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
