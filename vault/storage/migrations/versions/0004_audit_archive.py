"""Markers of archived audit log segments.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00

`vaultctl audit archive` moves the oldest records of the audit log, up to a signed checkpoint,
into an archive file and deletes them from the store. What stays is a marker: the archived
segment's last seq and hash, signed by the token's audit key, from which the remaining chain
is verified. Written out in full, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_archive_markers",
        sa.Column("through_seq", _SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("through_hash", sa.LargeBinary(), nullable=False),
        sa.Column("archived_at", sa.BigInteger(), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("through_seq", name="pk_audit_archive_markers"),
    )


def downgrade() -> None:
    op.drop_table("audit_archive_markers")
