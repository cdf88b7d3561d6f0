"""The metadata schema as SQLAlchemy Core tables.

This module describes the schema the queries are written against; the migrations in
vault/storage/migrations create it and are the authority for what is in a database. Keep the
two in step: a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Dialect,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

# Named constraints, so later migrations can drop or alter them by name (SQLite batch mode
# needs names to recreate tables; PostgreSQL would otherwise invent its own).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Room for the longest id names.py allows (63) with margin; PostgreSQL enforces it, SQLite not.
ID_LENGTH = 64
STATE_LENGTH = 32


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as integer microseconds since the Unix epoch (UTC).

    Integers compare and sort the same on every backend (keys_due_for_destruction compares in
    SQL), keep full microsecond precision, and avoid SQLite's lack of a time-zone type. Naive
    datetimes are refused rather than guessed at: the domain always uses aware UTC.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return to_micros(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return from_micros(int(value))


def to_micros(value: datetime) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the metadata store only accepts timezone-aware datetimes")
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


metadata = MetaData(naming_convention=NAMING_CONVENTION)

keys = Table(
    "keys",
    metadata,
    Column("account", String(ID_LENGTH), primary_key=True),
    Column("key_id", String(ID_LENGTH), primary_key=True),
    Column("purpose", String(STATE_LENGTH), nullable=False),
    Column("algorithm", String(64), nullable=False),
    Column("state", String(STATE_LENGTH), nullable=False),
    Column("primary_version", Integer, nullable=False),
    Column("token_resident", Boolean, nullable=False),
    # JSON (text in SQLite) so a label filter runs in SQL on both SQLite and PostgreSQL.
    Column("labels", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("destroy_scheduled_time", UtcDateTime, nullable=True),
    Column("state_before_destroy_scheduled", String(STATE_LENGTH), nullable=True),
    Column("revocation_reason", Text, nullable=False),
    # NULL when the request carried none: NULLs never collide in a unique constraint on any
    # backend, which a partial index would otherwise be needed for.
    Column("request_id", String(128), nullable=True),
    Column("etag", Integer, nullable=False),
    UniqueConstraint("account", "request_id"),
)

# Listing by account uses the primary key (account, key_id), which is also the page order.
Index(None, keys.c.state, keys.c.destroy_scheduled_time)

key_versions = Table(
    "key_versions",
    metadata,
    Column("account", String(ID_LENGTH), primary_key=True),
    Column("key_id", String(ID_LENGTH), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("state", String(STATE_LENGTH), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("root_generation", Integer, nullable=True),
    Column("wrapped_blob", LargeBinary, nullable=True),
    Column("token_label", String(128), nullable=True, unique=True),
    Column("public_key_der", LargeBinary, nullable=True),
    Column("destroy_time", UtcDateTime, nullable=True),
    ForeignKeyConstraint(["account", "key_id"], [keys.c.account, keys.c.key_id]),
)

# Start-up reconciliation scans versions by state (PENDING, not DESTROYED).
Index(None, key_versions.c.state)

root_generations = Table(
    "root_generations",
    metadata,
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("token_label", String(128), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("retired", Boolean, nullable=False),
)
