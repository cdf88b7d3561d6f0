"""Knowing, cheaply, whether anyone changed the database since we last looked.

SQLite's PRAGMA data_version changes whenever another connection (in this process or any
other) commits. Read on a connection of our own that never writes, it says whether rows
cached in this process may have changed: a few microseconds instead of a query.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SqliteChangeCounter:
    def __init__(self, database: Path) -> None:
        # Autocommit, so every read sees the latest commit; shared by the request threads.
        self._connection = sqlite3.connect(
            str(database), isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()

    def current(self) -> int:
        with self._lock:
            row = self._connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()
