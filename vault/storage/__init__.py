"""The metadata, identity and audit stores: SQLAlchemy Core over SQLite (default) or PostgreSQL,
all in one database."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.storage.audit import SqlAuditStore
from vault.storage.backup_store import SqlBackupStore
from vault.storage.bucket_store import SqlBucketStore
from vault.storage.engine import is_postgresql, make_engine, store_url, write_transaction
from vault.storage.identity_store import SqlIdentityStore
from vault.storage.import_store import SqlImportJobStore
from vault.storage.limits_store import SqlSharedCounters
from vault.storage.metadata_store import KEY_CACHE_SIZE, SqlMetadataStore
from vault.storage.transactions import unavailable

__all__ = [
    "SqlAuditStore",
    "SqlBackupStore",
    "SqlBucketStore",
    "SqlIdentityStore",
    "SqlImportJobStore",
    "SqlMetadataStore",
    "SqlSharedCounters",
    "Stores",
    "migrate",
    "open_store",
    "open_stores",
    "shares_limits",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Stores(NamedTuple):
    """The stores of one database, sharing one engine (one connection pool)."""

    metadata: SqlMetadataStore
    identity: SqlIdentityStore
    audit: SqlAuditStore
    buckets: SqlBucketStore
    backups: SqlBackupStore
    imports: SqlImportJobStore
    # PostgreSQL only: limits, replay protection and the credential epoch of every host using
    # the database. None on SQLite, where one host's workers share a mapped file instead.
    counters: SqlSharedCounters | None = None

    def close(self) -> None:
        """Close the audit lock file and every pooled connection. No store may be used after."""
        self.audit.close()
        self.identity.close()
        self.metadata.close()
        if self.counters is not None:
            self.counters.close()


def open_store(url: str, key_cache_size: int = KEY_CACHE_SIZE) -> SqlMetadataStore:
    """Connect to the store at url, bring its schema to the newest migration, and return it.

    Safe to call from several processes at once on one SQLite file: the upgrade runs in one
    write transaction, so the first caller migrates and the others then find nothing to do.
    StoreUnavailable if the database cannot be reached.
    """
    return SqlMetadataStore(_open_engine(url), key_cache_size)


def open_stores(url: str, key_cache_size: int = KEY_CACHE_SIZE) -> Stores:
    """As open_store (one migration run), returning the metadata, identity, audit, bucket
    and import-job stores of the database, which share its engine."""
    engine = _open_engine(url)
    metadata = SqlMetadataStore(engine, key_cache_size)
    # An in-memory database is one connection: every store must take turns on the same lock.
    serial = metadata._serial
    return Stores(
        metadata=metadata,
        identity=SqlIdentityStore(engine, serial=serial),
        audit=SqlAuditStore(engine, serial=serial),
        buckets=SqlBucketStore(engine, serial=serial),
        backups=SqlBackupStore(engine, serial=serial),
        imports=SqlImportJobStore(engine, serial=serial),
        counters=SqlSharedCounters(engine) if is_postgresql(engine.url) else None,
    )


def shares_limits(url: str) -> bool:
    """Whether the store at url keeps the limits, nonces and credential epoch itself
    (Stores.counters), for every host using it: PostgreSQL does, SQLite does not."""
    return is_postgresql(store_url(url))


def _open_engine(url: str) -> Engine:
    engine = make_engine(url)
    try:
        with write_transaction(engine) as conn:
            migrate(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise unavailable(exc) from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(connection: Connection) -> None:
    """Upgrade the schema to head on connection, inside the caller's transaction."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def alembic_config() -> Config:
    """An Alembic configuration built in code, so no alembic.ini is needed at run time and the
    migrations are found from an installed package and from any working directory."""
    config = Config()
    # ConfigParser interpolates '%', which may legitimately occur in an install path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config
