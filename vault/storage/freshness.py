"""Rows cached in memory for exactly as long as nobody has changed the tables they come from.

The one-row table metadata_changes counts, by SQLite triggers in the writing transaction
itself, every change to keys and key versions, from any process (migration 0003). Each thread
keeps a probe connection, the count it last saw, and the rows it read since: one primary-key
read instead of the query. (SQLite's PRAGMA data_version would be cheaper, but it moves on any
commit to the file, and every request appends to the audit log in the same file.)
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

_CHANGES = "SELECT changes FROM metadata_changes WHERE id = 1"
K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _ThreadState(Generic[K, V]):
    connection: sqlite3.Connection
    version: int = -1
    rows: dict[K, V] = field(default_factory=dict)


class UnchangedSinceCache(Generic[K, V]):
    def __init__(self, database: Path, max_rows: int) -> None:
        self._database = str(database)
        self._max_rows = max_rows
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # only for the list of connections to close

    def _state(self) -> _ThreadState[K, V]:
        state: _ThreadState[K, V] | None = getattr(self._local, "state", None)
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
        state = self._state()
        version = int(state.connection.execute(_CHANGES).fetchone()[0])
        if version != state.version:
            state.rows.clear()
            state.version = version
        return state.rows.get(key), version

    def scalar(self, query: str) -> int:
        """One integer read on this thread's probe connection (a constant query, never
        built from input), for other single-row counters kept beside the change count."""
        return int(self._state().connection.execute(query).fetchone()[0])

    def put(self, key: K, value: V, version: int) -> None:
        """Keep a row read after get() returned version. If a commit slipped in between,
        the next get() sees a new version and drops it."""
        state = self._state()
        if state.version != version:
            return
        if len(state.rows) >= self._max_rows:
            state.rows.clear()
        state.rows[key] = value

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
