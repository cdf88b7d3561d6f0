"""Revocation reasons and times, and the key material epoch.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02 23:55:00

RevokeKey records a reason code (COMPROMISED, SUPERSEDED, CESSATION_OF_OPERATION) and a time,
on the key and on every version it revokes; a single version can be revoked on its own (the
compromise of one version, then a rotation). ListRevocations and the signed revocation feed
read the versions' columns.

key_material_epoch is one row whose number moves whenever a version's material stops being
usable (destruction, revocation, disable): every worker compares it on each request and drops
its cached key handles when it moved, instead of keeping them until their TTL ends.

Written out in full, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("keys", sa.Column("revocation_reason_code", sa.String(32), nullable=True))
    op.add_column("keys", sa.Column("revoke_time", sa.BigInteger(), nullable=True))
    op.add_column("key_versions", sa.Column("revocation_reason_code", sa.String(32), nullable=True))
    op.add_column("key_versions", sa.Column("revocation_reason", sa.Text(), nullable=True))
    op.add_column("key_versions", sa.Column("revoke_time", sa.BigInteger(), nullable=True))
    op.create_index("ix_key_versions_revoke_time", "key_versions", ["revoke_time"])
    op.create_table(
        "key_material_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_key_material_epoch_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_material_epoch")),
    )
    op.execute("INSERT INTO key_material_epoch (id, epoch) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("key_material_epoch")
    op.drop_index("ix_key_versions_revoke_time", table_name="key_versions")
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("revoke_time")
        batch.drop_column("revocation_reason")
        batch.drop_column("revocation_reason_code")
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("revoke_time")
        batch.drop_column("revocation_reason_code")
