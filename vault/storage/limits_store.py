"""Rate limits, daily quotas, replay protection, failed-authentication counts and the credential
epoch in a PostgreSQL store, shared by every vault host using it (migration 0009).

The same operations as vault.coordination.limits.SharedLimits, which one host's workers share
through a mapped file; here every operation is one statement, atomic on the server, so hosts
need no lock of their own:

- a nonce is an INSERT ... ON CONFLICT that only overwrites an expired row; RETURNING says
  whether it was taken (a replay returns no row);
- a token bucket, a failure window and a quota are each an upsert whose new values are
  computed from the old ones inside the statement, RETURNING what the caller needs.

shared_nonces and shared_counters are UNLOGGED (a crash empties them). A sentinel nonce row
that never expires tells: when it is missing, the table lost its rows, and replay_horizon()
moves to now, so that a request whose nonce was forgotten cannot be replayed.

Expired nonces, and counters idle long enough to be back at their starting value, are
deleted every PURGE_SECONDS by whichever process notices first.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final, TypeVar

import psycopg
from sqlalchemy import Engine

from vault.domain.errors import StoreUnavailable

__all__ = ["PURGE_SECONDS", "SqlSharedCounters"]

PURGE_SECONDS: Final = 30.0
# A token bucket or failure window untouched this long is deleted: a bucket refilled at any
# configured rate of at least one request a day is full again by then, which is what a new
# one starts with; no failure window is configured this long.
IDLE_SECONDS: Final = 86_400.0
_T = TypeVar("_T")
_MAX_COUNT: Final = 1 << 62
_SECONDS_PER_DAY: Final = 86_400
# No nonce digest is all zeros (BLAKE2b output); this row marks a table that kept its rows.
_SENTINEL: Final = bytes(16)


def _sql(statement: str) -> str:
    """statement with psycopg's placeholders: the constants below are written with :name."""
    return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", statement)


_STATE = _sql(
    "SELECT replay_horizon, credential_epoch, "
    "EXISTS (SELECT 1 FROM shared_nonces WHERE digest = :sentinel) "
    "FROM shared_limits_state WHERE id = 1"
)
_EPOCH = _sql("SELECT credential_epoch FROM shared_limits_state WHERE id = 1")
_BUMP_EPOCH = _sql(
    "UPDATE shared_limits_state SET credential_epoch = credential_epoch + 1 WHERE id = 1"
)
_MOVE_HORIZON = _sql(
    "UPDATE shared_limits_state SET replay_horizon = greatest(replay_horizon, :horizon) "
    "WHERE id = 1 RETURNING replay_horizon"
)
_PLANT_SENTINEL = _sql(
    "INSERT INTO shared_nonces (digest, expires_at) VALUES (:sentinel, 'Infinity') "
    "ON CONFLICT (digest) DO NOTHING"
)
# A row comes back when the nonce was new or its old row had expired; none for a replay.
_REMEMBER_NONCE = _sql(
    "INSERT INTO shared_nonces AS old (digest, expires_at) VALUES (:digest, :expires_at) "
    "ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at "
    "WHERE old.expires_at <= :now "
    "RETURNING 1"
)
# n is 1 when a token was taken, 0 when the bucket had less than one.
_TAKE_TOKEN = _sql(
    "INSERT INTO shared_counters AS old (kind, key, x, y, n) "
    "VALUES ('token', :key, :burst - 1.0, :now, 1) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "x = CASE WHEN least(:burst, old.x + greatest(:now - old.y, 0.0) * :rate) >= 1.0 "
    "THEN least(:burst, old.x + greatest(:now - old.y, 0.0) * :rate) - 1.0 "
    "ELSE least(:burst, old.x + greatest(:now - old.y, 0.0) * :rate) END, "
    # Never refill backwards, nor twice for one interval (another host's clock may lag).
    "y = greatest(old.y, :now), "
    "n = CASE WHEN least(:burst, old.x + greatest(:now - old.y, 0.0) * :rate) >= 1.0 "
    "THEN 1 ELSE 0 END "
    "RETURNING x, n"
)
_RECORD_FAILURE = _sql(
    "INSERT INTO shared_counters AS old (kind, key, x, y, n) "
    "VALUES ('failure', :key, :now, 0.0, 1) "
    "ON CONFLICT (kind, key) DO UPDATE SET "
    "x = CASE WHEN :now < old.x + :window THEN old.x ELSE :now END, "
    "n = CASE WHEN :now < old.x + :window THEN least(old.n + 1, :max_count) ELSE 1 END "
    "RETURNING n"
)
_FAILURES = _sql("SELECT x, n FROM shared_counters WHERE kind = 'failure' AND key = :key")
_CONSUME_QUOTA = _sql(
    "UPDATE shared_counters SET n = n + 1 "
    "WHERE kind = 'quota' AND key = :key AND x = :day AND n < :limit RETURNING n"
)
_QUOTA_DAY = _sql("SELECT x FROM shared_counters WHERE kind = 'quota' AND key = :key")
# A counter another process started for the same day meanwhile wins over this seed.
_SEED_QUOTA = _sql(
    "INSERT INTO shared_counters AS old (kind, key, x, y, n) "
    "VALUES ('quota', :key, :day, 0.0, :seed) "
    "ON CONFLICT (kind, key) DO UPDATE SET x = excluded.x, n = excluded.n "
    "WHERE old.x <> excluded.x"
)
_PURGE_NONCES = _sql("DELETE FROM shared_nonces WHERE expires_at <= :now")
_PURGE_COUNTERS = _sql(
    "DELETE FROM shared_counters WHERE "
    "(kind = 'quota' AND x < :day) OR "
    "(kind = 'token' AND y < :idle) OR "
    "(kind = 'failure' AND x < :idle)"
)


def _nonce_digest(nonce: bytes) -> bytes:
    # Fixed-size keys; no salt is needed, as nothing is probed by hash here.
    return hashlib.blake2b(nonce, digest_size=16, person=b"vault-nonce").digest()


class SqlSharedCounters:
    """The SharedCounters of a PostgreSQL store: one instance per process, thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self._connections = _ThreadConnections(engine)
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return "SqlSharedCounters()"

    def close(self) -> None:
        self._connections.close()

    def _run(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of one statement, run in autocommit on this thread's connection."""

        def execute(c: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            cursor = c.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

        return self._connections.run(execute)

    # -- replay protection ---------------------------------------------------------------

    def prepare(self, now: float | None = None) -> float:
        """replay_horizon(), called by a starting server: it serves from the horizon on."""
        return self.replay_horizon() if now is None else self._horizon(now)

    def replay_horizon(self) -> float:
        """Requests stamped before it may have been accepted with a nonce this store no longer
        holds (stored before its nonce table was made or emptied by a crash)."""
        return self._horizon(time.time())

    def _horizon(self, now: float) -> float:
        ((horizon, _, intact),) = self._run(_STATE, {"sentinel": _SENTINEL})
        if intact:
            return float(horizon)

        def repair(c: psycopg.Connection[Any]) -> float:
            # Signed timestamps are whole seconds: from the next one on, as for a new file.
            with c.transaction():
                row = c.execute(_MOVE_HORIZON, {"horizon": float(math.ceil(now))}).fetchone()
                c.execute(_PLANT_SENTINEL, {"sentinel": _SENTINEL})
            assert row is not None
            return float(row[0])

        return self._connections.run(repair)

    def remember_nonce(self, nonce: bytes, *, expires_at: float, now: float) -> bool:
        """True if nonce was not seen (and is now remembered until expires_at); False if it
        was seen, on any host, and has not expired (a replay)."""
        if not (math.isfinite(expires_at) and math.isfinite(now)):
            raise ValueError("expires_at and now must be finite")
        self._purge_when_due(now)
        if expires_at <= now:
            return True  # already expired: remembering it would change nothing
        params = {"digest": _nonce_digest(nonce), "expires_at": expires_at, "now": now}
        return bool(self._run(_REMEMBER_NONCE, params))

    # -- counters ------------------------------------------------------------------------

    def take_token(self, key: str, *, rate_per_second: float, burst: int, now: float) -> float:
        """Token bucket for key: 0.0 when a token was taken, else the seconds until one will
        be available (nothing taken). A new key starts with a full bucket."""
        if not (0.0 < rate_per_second < math.inf and burst >= 1 and math.isfinite(now)):
            raise ValueError("rate_per_second must be positive, burst >= 1 and now finite")
        params = {"key": key, "burst": float(burst), "rate": rate_per_second, "now": now}
        ((tokens, taken),) = self._run(_TAKE_TOKEN, params)
        if taken:
            return 0.0
        return max((1.0 - float(tokens)) / rate_per_second, 1e-9)

    def record_failure(self, key: str, *, window_seconds: float, now: float) -> int:
        """Count one failed authentication for key; the failures in its current fixed window,
        this one included."""
        if not (0.0 < window_seconds < math.inf and math.isfinite(now)):
            raise ValueError("window_seconds must be positive and now finite")
        params = {"key": key, "now": now, "window": window_seconds, "max_count": _MAX_COUNT}
        ((count,),) = self._run(_RECORD_FAILURE, params)
        return int(count)

    def failures(self, key: str, *, window_seconds: float, now: float) -> int:
        rows = self._run(_FAILURES, {"key": key})
        if not rows or not now < float(rows[0][0]) + window_seconds:
            return 0
        return int(rows[0][1])

    def consume_quota(self, key: str, *, day: int, limit: int, seed: Callable[[], int]) -> bool:
        """Daily quota (day: days since the epoch, UTC). A key's counter for a new day starts
        from seed(), the count recorded in usage_counters for that day; then one is counted
        if fewer than limit were."""
        # Each statement is atomic on its own; between them another host may count or seed,
        # which the next statement's conditions take into account.
        params = {"key": key, "day": float(day), "limit": limit}
        if self._run(_CONSUME_QUOTA, params):
            return True
        current = self._run(_QUOTA_DAY, params)
        if current and float(current[0][0]) == float(day):
            return False  # today's counter exists and is at the limit
        # seed() queries the store: while this thread holds no statement of ours open.
        seeded = min(max(int(seed()), 0), _MAX_COUNT)
        self._run(_SEED_QUOTA, {**params, "seed": seeded})
        return bool(self._run(_CONSUME_QUOTA, params))

    # -- credential epoch ----------------------------------------------------------------

    def credential_epoch(self) -> int:
        """Moves whenever any credential changes, through any host: read on every request,
        so a revocation on one host is seen by the others on their next request."""
        ((epoch,),) = self._run(_EPOCH)
        return int(epoch)

    def bump_credential_epoch(self) -> None:
        self._run(_BUMP_EPOCH)

    # -- housekeeping --------------------------------------------------------------------

    def _purge_when_due(self, now: float) -> None:
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            if now < self._next_purge:
                return
            self._next_purge = now + PURGE_SECONDS
            self.purge(now)
        finally:
            self._purge_lock.release()

    def purge(self, now: float) -> None:
        """Delete expired nonces (never the sentinel: it does not expire) and idle counters."""
        self._run(_PURGE_NONCES, {"now": now})
        params = {"day": float(int(now // _SECONDS_PER_DAY)), "idle": now - IDLE_SECONDS}
        self._run(_PURGE_COUNTERS, params)


class _ThreadConnections:
    """A psycopg connection per thread, in autocommit, outside SQLAlchemy's pool.

    Every authenticated request makes a few of these one-statement calls; through the pool
    (checkout, pre-ping, BEGIN, COMMIT, statement handling) each took about 300 us here, on a
    connection of the thread's own about 50 us. A connection inherited across fork() is
    never used nor closed in the child (closing it would end the parent's session); one that
    failed is dropped, and the thread's next call connects anew.
    """

    def __init__(self, engine: Engine) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        kwargs.pop("context", None)  # SQLAlchemy's type adapters; these queries need none
        self._args, self._kwargs = list(args), dict(kwargs)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[int, psycopg.Connection[Any]]] = []

    def run(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        try:
            connection = self._connection()
            try:
                return work(connection)
            except psycopg.OperationalError:
                self._drop(connection)
                raise
        except psycopg.Error as exc:
            # The class name only: a server message may quote values (DETAIL).
            raise StoreUnavailable(
                "the metadata store is unavailable", metadata={"error": type(exc).__name__}
            ) from None

    def _connection(self) -> psycopg.Connection[Any]:
        held: tuple[int, psycopg.Connection[Any]] | None = getattr(self._local, "held", None)
        pid = os.getpid()
        if held is not None and held[0] == pid and not held[1].closed:
            return held[1]
        if held is not None and held[0] != pid:
            _INHERITED.append(held[1])
        connection = psycopg.connect(*self._args, **self._kwargs, autocommit=True)
        with self._lock:
            self._open.append((pid, connection))
        self._local.held = (pid, connection)
        return connection

    def _drop(self, connection: psycopg.Connection[Any]) -> None:
        self._local.held = None
        with self._lock:
            self._open = [held for held in self._open if held[1] is not connection]
        with suppress(psycopg.Error):
            connection.close()

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            for owner, connection in self._open:
                if owner == pid:
                    with suppress(psycopg.Error):
                        connection.close()
                else:
                    _INHERITED.append(connection)
            self._open.clear()


# Connections a forked child inherited: kept referenced so they are never closed there.
_INHERITED: list[Any] = []


if TYPE_CHECKING:
    from vault.domain.ports import SharedCounters

    # Makes mypy prove that the class satisfies the port it implements.
    _PORT_CHECK: type[SharedCounters] = SqlSharedCounters
