"""The store's schema (keys, identities, usage, audit log) as SQLAlchemy Core tables.

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
    CheckConstraint,
    Column,
    Dialect,
    Float,
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
DISPLAY_NAME_LENGTH = 256
USAGE_METHOD_LENGTH = 64

# A sequence number: BIGINT on a server database; on SQLite, INTEGER, which makes a
# single-column primary key an alias of the rowid (no second index, and the newest row is found
# at the end of the table's own b-tree).
SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")


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
    Column("revocation_reason_code", String(STATE_LENGTH), nullable=True),
    Column("revoke_time", UtcDateTime, nullable=True),
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
    Column("revocation_reason_code", String(STATE_LENGTH), nullable=True),
    Column("revocation_reason", Text, nullable=True),
    Column("revoke_time", UtcDateTime, nullable=True),
    ForeignKeyConstraint(["account", "key_id"], [keys.c.account, keys.c.key_id]),
)

# Start-up reconciliation scans versions by state (PENDING, not DESTROYED).
Index(None, key_versions.c.state)
# ListRevocations reads the revoked versions only.
Index(None, key_versions.c.revoke_time)

# A bucket's master key is the keys row (account, master_key_id); its state is the bucket's.
buckets = Table(
    "buckets",
    metadata,
    Column("account", String(ID_LENGTH), primary_key=True),
    Column("bucket_id", String(ID_LENGTH), primary_key=True),
    Column("master_key_id", String(ID_LENGTH), nullable=False),
    Column("labels", JSON, nullable=False),
    # The bucket-key policy: lifetime in microseconds; NULL limits are no limit.
    Column("key_lifetime_us", BigInteger, nullable=False),
    Column("max_objects_per_key", BigInteger, nullable=True),
    Column("max_bytes_per_key", BigInteger, nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("etag", Integer, nullable=False),
    ForeignKeyConstraint(["account", "master_key_id"], [keys.c.account, keys.c.key_id]),
    UniqueConstraint("account", "master_key_id"),
    UniqueConstraint("account", "request_id"),
)

# Import jobs (migration 0007): a key's wrapping key pairs; the private half is a token object
# under token_label until destroy_time.
import_jobs = Table(
    "import_jobs",
    metadata,
    Column("account", String(ID_LENGTH), primary_key=True),
    Column("key_id", String(ID_LENGTH), primary_key=True),
    Column("job_id", String(ID_LENGTH), primary_key=True),
    Column("method", String(64), nullable=False),
    Column("token_label", String(128), nullable=False, unique=True),
    Column("public_key_der", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("expire_time", UtcDateTime, nullable=False),
    Column("destroy_time", UtcDateTime, nullable=True),
    ForeignKeyConstraint(["account", "key_id"], [keys.c.account, keys.c.key_id]),
)

# The expiry job looks for jobs past expire_time whose private key is still in the token.
Index(None, import_jobs.c.destroy_time, import_jobs.c.expire_time)

root_generations = Table(
    "root_generations",
    metadata,
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("token_label", String(128), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("retired", Boolean, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(ID_LENGTH), primary_key=True),
    Column("display_name", String(DISPLAY_NAME_LENGTH), nullable=False),
    Column("admin", Boolean, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
)

access_keys = Table(
    "access_keys",
    metadata,
    Column("access_key_id", String(ID_LENGTH), primary_key=True),
    Column("account_id", String(ID_LENGTH), nullable=False),
    Column("state", String(STATE_LENGTH), nullable=False),
    # [{"resource": "keys/...", "level": 1..3}]; an empty list is full access to the account.
    Column("grants", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("secret_salt", LargeBinary, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("secret_reset_time", UtcDateTime, nullable=True),
    Column("last_used_time", UtcDateTime, nullable=True),
    ForeignKeyConstraint(["account_id"], ["accounts.account_id"]),
)

Index(None, access_keys.c.account_id)

api_keys = Table(
    "api_keys",
    metadata,
    Column("api_key_id", String(ID_LENGTH), primary_key=True),
    Column("account_id", String(ID_LENGTH), nullable=False),
    Column("state", String(STATE_LENGTH), nullable=False),
    # [{"methods": [sorted names], "resources": [names in the order given]}]
    Column("scopes", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("token_hash", LargeBinary, nullable=False),
    Column("expire_time", UtcDateTime, nullable=True),
    # Both NULL when the key has no rate limit of its own.
    Column("rate_per_second", Float, nullable=True),
    Column("burst", Integer, nullable=True),
    Column("daily_quota", BigInteger, nullable=False),  # 0: no quota
    Column("create_time", UtcDateTime, nullable=False),
    Column("last_used_time", UtcDateTime, nullable=True),
    ForeignKeyConstraint(["account_id"], ["accounts.account_id"]),
)

Index(None, api_keys.c.account_id)

# One row counting changes to keys and key_versions (SQLite triggers, migration 0003): the
# per-process key cache is valid while it has not moved.
metadata_changes = Table(
    "metadata_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("changes", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

# One row whose number moves whenever a version's material stops being usable (migration
# 0006): workers drop their cached key handles when it moved.
key_material_epoch = Table(
    "key_material_epoch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

# Usage and audit rows name credentials without a foreign key: they must outlive a deleted
# credential, since they are the record of what it did.
usage_counters = Table(
    "usage_counters",
    metadata,
    Column("credential_id", String(ID_LENGTH), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC: sorts as it reads
    Column("method", String(USAGE_METHOD_LENGTH), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# Free-form columns are Text: a value longer than some limit must never make an append fail
# on a database that enforces lengths, since a failed append refuses the request it records.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", SEQUENCE, primary_key=True, autoincrement=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("credential_id", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("latency_us", BigInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

Index(None, audit_events.c.occurred_at)
Index(None, audit_events.c.credential_id)
Index(None, audit_events.c.method)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("head_seq", SEQUENCE, primary_key=True, autoincrement=False),
    Column("head_hash", LargeBinary, nullable=False),
    Column("signed_at", UtcDateTime, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_label", String(128), nullable=False),
)

# One row per `vaultctl audit archive`: the signed end of the segment moved to an archive file;
# the newest one is where the stored chain now starts (migration 0004).
audit_archive_markers = Table(
    "audit_archive_markers",
    metadata,
    Column("through_seq", SEQUENCE, primary_key=True, autoincrement=False),
    Column("through_hash", LargeBinary, nullable=False),
    Column("archived_at", UtcDateTime, nullable=False),
    Column("record_count", BigInteger, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("key_label", String(128), nullable=False),
)
