"""ListAuditEvents on a long log: what one page call costs for each kind of filter.

    python -m bench.audit_listing [--records 1000000] [--db FILE | --postgres] [--rounds 3]
                                  [--compare VAULT_ROOT]

A store is filled with --records audit records by copying rows in bulk (one INSERT ... SELECT
over a generated series; the records need not chain for listing), then each filter's first
page (page size 100) is read through the store's list_audit_events, in this process, best of
--rounds; then the whole listing in pages of 1,000 (at most 50 calls): how many calls it
took, the slowest one and the records found. The records spread so that each filter has a
common and a rare value: 50 credentials, two methods (Encrypt and GetKey, alternating), 20 keys
with 3 versions each, and every 250,000 records one rare credential, method, key and outcome.
With --compare, the same calls are also timed with the vault package of another checkout (a
subprocess with that checkout first on sys.path), alternated with this one's on the same
database.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

T0: Final = datetime(2026, 1, 1, tzinfo=UTC)
T0_US: Final = int(T0.timestamp() * 1_000_000)
RARE_EVERY: Final = 250_000
PAGE_SIZE: Final = 100
# Calls of a whole listing followed at most (a listing of every record takes 1,000 a call).
MAX_CALLS: Final = 50
ENCRYPT: Final = "/vault.v1.CryptoService/Encrypt"
DESTROY: Final = "/vault.v1.KeyService/DestroyKey"

# name -> AuditFilter fields (times as seconds after T0, one record a millisecond)
FILTERS: Final[dict[str, dict[str, Any]]] = {
    "none": {},
    "time range (1 s, late)": {"start": 900.0, "end": 901.0},
    "time range (all)": {"start": 0.0},
    "time range (from 40%)": {"start": 400.0},
    "time range (from 90%)": {"start": 900.0},
    "time range (last 1%)": {"start": 990.0},
    "time range (last 1%) + key common": {"start": 990.0, "resource": "accounts/acme/keys/k1"},
    "credential common": {"credential_id": "AK00000000000000000001"},
    "credential rare": {"credential_id": "AKRARE0000000000000000"},
    "method common (full)": {"method": ENCRYPT},
    "method common (short)": {"method": "Encrypt"},
    "method rare (full)": {"method": DESTROY},
    "method rare (short)": {"method": "DestroyKey"},
    "key common": {"resource": "accounts/acme/keys/k1"},
    "key rare": {"resource": "accounts/acme/keys/rare"},
    "outcome common": {"outcome": "OK"},
    "outcome rare": {"outcome": "PERMISSION_DENIED"},
    "credential common + outcome rare": {
        "credential_id": "AK00000000000000000001",
        "outcome": "PERMISSION_DENIED",
    },
    "method common + key rare": {"method": ENCRYPT, "resource": "accounts/acme/keys/rare"},
    "time range (1 s) + key rare": {
        "start": 900.0,
        "end": 901.0,
        "resource": "accounts/acme/keys/rare",
    },
}

# The rows, from n = 1..records: SQLite and PostgreSQL spell the series differently.
_SELECT = """
SELECT n, {t0} + n * 1000, 'r' || n,
  CASE WHEN n % {rare} = 7 THEN 'AKRARE0000000000000000'
       ELSE 'AK' || {pad} END,
  'accounts/acme',
  CASE WHEN n % {rare} = 3 THEN '{destroy}'
       WHEN n % 2 = 0 THEN '{encrypt}' ELSE '/vault.v1.KeyService/GetKey' END,
  CASE WHEN n % {rare} = 11 THEN 'accounts/acme/keys/rare/versions/1'
       WHEN n % 3 = 0 THEN 'accounts/acme/keys/k' || (n % 20)
       ELSE 'accounts/acme/keys/k' || (n % 20) || '/versions/' || (n % 3) END,
  CASE WHEN n % {rare} = 13 THEN 'PERMISSION_DENIED' ELSE 'OK' END,
  '', 100, 'ipv4:127.0.0.1:5000', {blob}, {blob}
"""


def _insert_sql(dialect: str, records: int) -> str:
    columns = (
        "seq, occurred_at, request_id, credential_id, account, method, resource, outcome, "
        "reason, latency_us, source, prev_hash, hash"
    )
    if dialect == "sqlite":
        pad = "substr('00000000000000000000' || (n % 50), -20, 20)"
        blob = "zeroblob(32)"
    else:
        pad = "lpad((n % 50)::text, 20, '0')"
        blob = "decode(repeat('00', 32), 'hex')"
    select = _SELECT.format(
        t0=T0_US, rare=RARE_EVERY, pad=pad, destroy=DESTROY, encrypt=ENCRYPT, blob=blob
    )
    if dialect == "sqlite":
        return (
            f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s "
            f"WHERE n < {records}) INSERT INTO audit_events ({columns}) {select} FROM s"
        )
    return (
        f"INSERT INTO audit_events ({columns}) {select} FROM generate_series(1, {records}) AS s(n)"
    )


def fill(url: str, records: int) -> float:
    from sqlalchemy import text

    from vault.storage import open_stores

    stores = open_stores(url)
    stores.audit.close()
    from vault.storage.engine import make_engine

    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as connection:
        have = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        if have < records:
            connection.execute(text("DELETE FROM audit_events"))
            connection.execute(text(_insert_sql(engine.dialect.name, records)))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE audit_events"))
    engine.dispose()
    return time.perf_counter() - started


def _filter(fields: dict[str, Any]) -> Any:
    from vault.domain.ports import AuditFilter

    values = dict(fields)
    start, end = values.pop("start", None), values.pop("end", None)
    return AuditFilter(
        start_time=None if start is None else T0 + timedelta(seconds=start),
        end_time=None if end is None else T0 + timedelta(seconds=end),
        **values,
    )


def time_filters(url: str, rounds: int, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """name -> best seconds of a first-page call, records on that page, whether it ends."""
    from vault.storage import open_stores

    stores = open_stores(url)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            audit_filter = _filter(FILTERS[name])
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                page = stores.audit.list_audit_events(audit_filter, PAGE_SIZE, "")
                best = min(best, time.perf_counter() - started)
            # The whole listing, following the tokens: how many calls, the slowest of them.
            calls, slowest, found, token = 0, 0.0, 0, ""
            while True:
                started = time.perf_counter()
                listed = stores.audit.list_audit_events(audit_filter, 1000, token)
                slowest = max(slowest, time.perf_counter() - started)
                calls, found, token = calls + 1, found + len(listed.items), listed.next_page_token
                if not token or calls == MAX_CALLS:
                    break
            results[name] = {
                "seconds": best,
                "records": len(page.items),
                "more": bool(page.next_page_token),
                "calls": calls,
                "slowest": slowest,
                "found": found,
            }
    finally:
        stores.audit.close()
    return results


def _child(root: str, url: str, rounds: int, names: Sequence[str]) -> dict[str, Any]:
    """time_filters in a fresh process importing the vault package of root."""
    code = (
        "import json, runpy, sys; sys.path.insert(0, sys.argv[1]); "
        "run = runpy.run_path(sys.argv[2])['time_filters']; "
        "print(json.dumps(run(sys.argv[3], int(sys.argv[4]), sys.argv[5:])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, root, __file__, url, str(rounds), *names],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", default=None, help="another checkout's root")
    parser.add_argument("--only", default="", help="filter names, separated by ;")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(";") if n] or list(FILTERS)
    cluster = None
    if args.postgres:
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster()
        cluster.__enter__()
        url = cluster.new_url()
    else:
        db = args.db or Path(tempfile.mkdtemp()) / "vault.db"
        url = f"sqlite:///{db}"
    try:
        print(f"filled in {fill(url, args.records):.1f} s", flush=True)
        here = str(Path(__file__).resolve().parent.parent)
        width = max(len(n) for n in names)
        for name in names:
            row = {"this": _child(here, url, args.rounds, [name])[name]}
            if args.compare:
                row["other"] = _child(args.compare, url, args.rounds, [name])[name]
            cells = "  ".join(
                f"{label} {r['seconds'] * 1000:7.1f} ms {r['records']:3d} rec "
                f"{'more' if r['more'] else 'end '} | all: {r['calls']:2d} calls, slowest "
                f"{r['slowest'] * 1000:6.1f} ms, {r['found']} rec"
                for label, r in row.items()
            )
            print(f"{name:<{width}}  {cells}", flush=True)
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
