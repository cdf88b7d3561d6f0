"""Engine construction and transaction helpers shared by the store and the migrations."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

# Execution option read by the SQLite "begin" hook: this transaction is going to write.
WRITE_OPTION = "vault_write"

# How long a SQLite connection waits for another process's write lock before SQLITE_BUSY.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def is_sqlite_memory(url: URL) -> bool:
    if not is_sqlite(url):
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    return is_sqlite_uri(url) and (":memory:" in database or url.query.get("mode") == "memory")


def is_sqlite_uri(url: URL) -> bool:
    return str(url.query.get("uri", "")).lower() in ("true", "1", "yes", "on")


def is_postgresql(url: URL) -> bool:
    return url.get_backend_name() == "postgresql"


def store_url(url: str | URL) -> URL:
    """url parsed; a PostgreSQL URL without a driver gets psycopg 3, the one the vault ships
    with (SQLAlchemy's default would be psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """An engine for the store: one per process, shared by all its threads."""
    parsed = store_url(url)
    # hide_parameters keeps bound values (wrapped blobs, labels, request ids) out of the
    # messages of every SQLAlchemy error, and so out of chained tracebacks and logs.
    options: dict[str, Any] = {"hide_parameters": True}
    if is_sqlite_memory(parsed):
        # An in-memory database lives and dies with its one connection, so every thread must
        # share it; the store serialises access (see SqlMetadataStore).
        options["poolclass"] = StaticPool
        options["connect_args"] = {"check_same_thread": False}
    elif is_sqlite(parsed):
        if parsed.database and not is_sqlite_uri(parsed):
            _create_private_file(Path(parsed.database))
    else:
        # A server database may drop idle connections (restart, failover, idle timeout).
        options["pool_pre_ping"] = True
    engine = create_engine(parsed, **options)
    if is_sqlite(parsed):
        _install_sqlite_hooks(engine)
    elif is_postgresql(parsed):
        _install_postgresql_hooks(engine)
    _dispose_in_forked_children(engine)
    return engine


def _create_private_file(path: Path) -> None:
    """Create the database file as 0600 (its -wal and -shm files copy its mode): it holds
    wrapped key blobs and, later, credentials, whatever the process umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the sqlite3 module (which would issue a deferred BEGIN only
        # before DML, and none before SELECT or DDL); the "begin" hook below emits our own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS:d}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Content that is overwritten or deleted is zeroed, not left in free space: a
            # destroyed key version's wrapped blob must not outlive its row (crypto-shredding;
            # checkpoint_and_truncate removes the WAL's copies).
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes must upgrade its lock; when two
        # processes both do that, one gets SQLITE_BUSY at once (busy_timeout cannot help, as
        # waiting would deadlock). Writers therefore take the write lock up front and queue on
        # busy_timeout instead. Readers stay deferred so WAL lets them run beside a writer.
        if conn.get_execution_options().get(WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _install_postgresql_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _without_values(context: ExceptionContext) -> None:
        # The server's message comes with a DETAIL (a unique or check violation quotes the
        # whole row: wrapped blobs, request ids) and a CONTEXT; the error's text, and so every
        # chained traceback and log line, keeps the primary message only. A data exception's
        # primary message quotes the offending value, so of those only the code is kept.
        original = context.original_exception
        text = scrub_server_message(original)
        # SQLAlchemy's error copied the driver's text when it was made, before this hook.
        wrapped = context.sqlalchemy_exception
        if text is not None and wrapped is not None:
            kind = type(original)
            wrapped.args = (f"({kind.__module__}.{kind.__name__}) {text}", *wrapped.args[1:])


def scrub_server_message(error: BaseException) -> str | None:
    """Cut a PostgreSQL error's text (in place) down to its primary message and SQLSTATE,
    without the DETAIL and CONTEXT that quote values; the new text, or None for an error that
    did not come from the server."""
    diag = getattr(error, "diag", None)
    sqlstate = getattr(diag, "sqlstate", None)
    if not sqlstate:
        return None
    primary = getattr(diag, "message_primary", None) or ""
    if sqlstate.startswith("22") or not primary:
        primary = "data exception" if sqlstate.startswith("22") else "database error"
    text = f"{primary} (SQLSTATE {sqlstate})"
    error.args = (text,)
    return text


def _enable_wal(cursor: Any) -> None:
    # Switching a new database file to WAL fails at once with SQLITE_BUSY while another
    # process is switching it too: SQLite does not call the busy handler here. So wait for
    # the other process ourselves, as busy_timeout would. Once the file is in WAL mode (it
    # stays so), this returns on the first try.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.fetchall()
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def checkpoint_and_truncate(engine: Engine) -> bool:
    """Copy the write-ahead log into the database file and truncate the log to zero bytes,
    so values overwritten since (a destroyed key's wrapped blob) are in neither file. True
    when done; False when readers kept part of the log in use past busy_timeout. No-op on
    other databases."""
    if not is_sqlite(engine.url) or is_sqlite_memory(engine.url):
        return True
    raw = engine.raw_connection()
    try:
        # The raw driver connection is in autocommit (isolation_level None): a checkpoint
        # cannot run inside a transaction.
        cursor = raw.cursor()
        try:
            busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            cursor.close()
    finally:
        raw.close()
    return int(busy) == 0


def _dispose_in_forked_children(engine: Engine) -> None:
    # Pooled connections must not cross fork(): parent and child would share one SQLite file
    # handle or one server socket. The child drops its inherited pool without closing the
    # parent's connections. A weak reference so the hook does not keep the engine alive.
    ref = weakref.ref(engine)

    def _after_fork() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that may write (BEGIN IMMEDIATE on SQLite)."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that only reads (one consistent snapshot)."""
    with engine.connect() as conn, conn.begin():
        yield conn
