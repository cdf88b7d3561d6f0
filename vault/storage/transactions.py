"""What every store does around its SQL: transactions, the lock an in-memory database needs,
aware times, and database errors turned into domain errors that quote no values."""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from vault.domain.errors import DiskFull, StoreUnavailable, VaultError
from vault.storage.engine import is_sqlite_memory, read_transaction, write_transaction

# PostgreSQL's disk_full condition (class 53, insufficient resources).
_PG_DISK_FULL = "53100"


def unavailable(exc: SQLAlchemyError) -> StoreUnavailable:
    # Only the driver's error class: its message may quote values (PostgreSQL's DETAIL does).
    cause = getattr(exc, "orig", None) or exc
    if is_disk_full(cause):
        return DiskFull()
    return StoreUnavailable(
        "the metadata store is unavailable", metadata={"error": type(cause).__name__}
    )


def is_disk_full(cause: BaseException) -> bool:
    """Whether a driver's (or the file system's) error says the disk is full."""
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    # psycopg names it sqlstate, psycopg2 pgcode.
    return _PG_DISK_FULL in (getattr(cause, "sqlstate", None), getattr(cause, "pgcode", None))


def new_serial_lock(engine: Engine) -> threading.Lock | None:
    """A lock for the stores of an in-memory database, which is one shared connection; None
    for any other database."""
    return threading.Lock() if is_sqlite_memory(engine.url) else None


def serialised(serial: threading.Lock | None) -> AbstractContextManager[Any]:
    return serial if serial is not None else nullcontext()


@contextmanager
def guarded_transaction(
    engine: Engine,
    serial: threading.Lock | None,
    *,
    write: bool,
    on_duplicate: Callable[[], VaultError] | None = None,
) -> Iterator[Connection]:
    """One transaction, committed when the block ends, rolled back if it raises.

    Database failures become domain errors whose messages carry no data values: a unique
    violation becomes on_duplicate() (called after the transaction has been rolled back, so
    it may query), anything else StoreUnavailable.
    """
    try:
        with serialised(serial):
            begin = write_transaction if write else read_transaction
            with begin(engine) as conn:
                yield conn
    except IntegrityError as exc:
        if on_duplicate is None:
            raise unavailable(exc) from exc
        raise on_duplicate() from exc
    except SQLAlchemyError as exc:
        raise unavailable(exc) from exc


def aware(value: datetime) -> datetime:
    # Checked before any SQL runs, so a naive time is a ValueError at the call site rather
    # than a database error (UtcDateTime refuses it too, as a last line).
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the store only accepts timezone-aware datetimes")
    return value


def aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)
