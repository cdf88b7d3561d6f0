"""Rows cached in memory for exactly as long as nobody has changed the tables they come from.

The one-row table metadata_changes counts, by SQLite triggers in the writing transaction
itself, every change to keys and key versions, from any process (migration 0003). Each thread
keeps a probe connection; the rows read since the count last moved are shared by every thread
of the process, in one LRU of bounded size: one primary-key read instead of the query. Rows
kept per thread, cleared when full, covered a thread's share of the traffic only and missed
on nearly every call with 10,000 keys in use. (SQLite's PRAGMA data_version would be cheaper,
but it moves on any commit to the file, and every request appends to the audit log in the
same file.)

The probe connection also serves the hot path's primary-key reads (fetch_one) and ListKeys'
pages (fetch_all): a statement run on it directly costs about 30 us at 10^5 keys, against
200-500 us for the same query in a pooled SQLAlchemy transaction (checkout, BEGIN, event hooks,
COMMIT); one statement in autocommit is one consistent snapshot.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

from vault.domain.errors import StoreUnavailable

_CHANGES = "SELECT changes FROM metadata_changes WHERE id = 1"
K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _ThreadState:
    connection: sqlite3.Connection


class UnchangedSinceCache(Generic[K, V]):
    def __init__(self, database: Path, max_rows: int) -> None:
        self._database = str(database)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # only for the list of connections to close
        self._rows: LRUCache[K, V] = LRUCache(max_rows)
        self._rows_version = -1  # the change count the rows were read at (or after)
        self._rows_lock = threading.Lock()

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            # Autocommit, so every read sees the latest commit; this connection never writes.
            connection = sqlite3.connect(
                self._database, isolation_level=None, check_same_thread=False
            )
            with self._lock:
                self._connections.append(connection)
            state = _ThreadState(connection)
            self._local.state = state
        return state

    def get(self, key: K) -> tuple[V | None, int]:
        """The cached row, if nothing was committed since it was read, and the version to
        pass to put() after reading it from the database."""
        return self._recall(key, int(self._state().connection.execute(_CHANGES).fetchone()[0]))

    def get_with(self, key: K, query: str) -> tuple[V | None, int, int]:
        """get(), and one more integer read in the same statement: query (constant SQL, never
        built from input) gives the change count and that integer, from one consistent
        snapshot, in one trip into SQLite instead of two (each releases the GIL)."""
        version, value = self._state().connection.execute(query).fetchone()
        return (*self._recall(key, int(version)), int(value))

    def _recall(self, key: K, version: int) -> tuple[V | None, int]:
        with self._rows_lock:
            if version != self._rows_version:
                # Moved on (or, for an instant, another thread already saw a newer count):
                # what is kept may predate a commit, so none of it is used.
                self._rows.clear()
                self._rows_version = version
                return None, version
            return self._rows.get(key), version

    def scalar(self, query: str) -> int:
        """One integer read on this thread's probe connection (a constant query, never
        built from input), for other single-row counters kept beside the change count."""
        return int(self._state().connection.execute(query).fetchone()[0])

    def fetch_one(self, query: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        """The first row of a read-only query (constant SQL, values bound as parameters) on
        this thread's probe connection; StoreUnavailable if the database fails, naming only
        the driver's error class (its message may quote values)."""
        row: tuple[Any, ...] | None = self._fetch(query, params, sqlite3.Cursor.fetchone)
        return row

    def fetch_all(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row of a read-only query, as fetch_one reads its first."""
        rows: list[tuple[Any, ...]] = self._fetch(query, params, sqlite3.Cursor.fetchall)
        return rows

    def _fetch(
        self, query: str, params: Sequence[Any], take: Callable[[sqlite3.Cursor], Any]
    ) -> Any:
        # The fetch is inside too: SQLite reads most rows while fetching them.
        try:
            return take(self._state().connection.execute(query, params))
        except sqlite3.Error as error:
            raise StoreUnavailable(
                "the metadata store is unavailable", metadata={"error": type(error).__name__}
            ) from None

    def put(self, key: K, value: V, version: int) -> None:
        """Keep a row read after get() returned version. If a commit slipped in between,
        the next get() sees a new version and drops it."""
        with self._rows_lock:
            if self._rows_version == version:
                self._rows[key] = value

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
