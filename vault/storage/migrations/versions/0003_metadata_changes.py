"""A counter of changes to keys, for the per-process key cache.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 00:00:00

The key cache (vault/storage/freshness.py) used to drop its rows whenever SQLite's
data_version moved, that is on any commit to the file; once every request appends to the
audit log, that is every request. Triggers now count the changes to the key tables alone, in
the same transaction as the change, whoever makes it (any process, or someone with the sqlite3
shell), and the cache compares that count instead.

Written out in full, like 0001. The triggers are SQLite's; other databases get the table only
(the key cache is a SQLite optimisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("keys", "key_versions")
_EVENTS = ("INSERT", "UPDATE", "DELETE")


def _trigger(table: str, event: str) -> str:
    return f"metadata_changes_{table}_{event.lower()}"


_BUMP = "UPDATE metadata_changes SET changes = changes + 1 WHERE id = 1;"


def _create_trigger(table: str, event: str) -> str:
    # Names and events come from the constants above, never from input.
    return " ".join(
        (
            "CREATE TRIGGER",
            _trigger(table, event),
            "AFTER",
            event,
            "ON",
            table,
            "BEGIN",
            _BUMP,
            "END",
        )
    )


def upgrade() -> None:
    op.create_table(
        "metadata_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_metadata_changes_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metadata_changes")),
    )
    op.execute("INSERT INTO metadata_changes (id, changes) VALUES (1, 0)")
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _TABLES:
        for event in _EVENTS:
            op.execute(_create_trigger(table, event))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in _TABLES:
            for event in _EVENTS:
                op.execute(f"DROP TRIGGER IF EXISTS {_trigger(table, event)}")
    op.drop_table("metadata_changes")
