"""Alembic environment for the vault metadata store.

open_store() runs the migrations with its own connection in config.attributes["connection"],
already inside a write transaction. For developer use from the command line (alembic -c
vault/storage/migrations/alembic.ini -x url=sqlite:///path/vault.db upgrade head), the URL comes
from -x url=... or sqlalchemy.url, and the same engine settings as the store's are used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from vault.storage.engine import make_engine, write_transaction
from vault.storage.tables import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters tables by copying them; batch mode lets autogenerate emit that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database with -x url=... or sqlalchemy.url")
    return url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the transaction; Alembic sees it and does not begin or commit.
        _configure(connection)
        context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with write_transaction(engine) as conn:
            _configure(conn)
            context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
