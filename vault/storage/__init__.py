"""The metadata store: SQLAlchemy Core over SQLite (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from vault.storage.engine import make_engine, write_transaction
from vault.storage.sql_store import SqlMetadataStore, unavailable

__all__ = ["SqlMetadataStore", "migrate", "open_store"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def open_store(url: str) -> SqlMetadataStore:
    """Connect to the store at url, bring its schema to the newest migration, and return it.

    Safe to call from several processes at once on one SQLite file: the upgrade runs in one
    write transaction, so the first caller migrates and the others then find nothing to do.
    StoreUnavailable if the database cannot be reached.
    """
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
    return SqlMetadataStore(engine)


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
