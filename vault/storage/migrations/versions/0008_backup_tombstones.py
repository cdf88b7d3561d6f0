"""Tombstones of revoked and destroyed keys, and the log of backup exports.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 01:30:00

key_tombstones names every revoked or destroyed key (version 0) and key version with its time
and reason; a restore checks it, so a bundle taken before a revocation or destruction never
brings the key back. Existing revocations and destructions are copied in here, so the rule
holds for what happened before this migration too.

backup_exports and backup_export_versions record each export: its id, time, selection and
the key versions whose blobs it holds (`vaultctl keys compromise` lists them).

Written out in full, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_tombstones",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("time", sa.BigInteger(), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "account", "key_id", "version", "state", name=op.f("pk_key_tombstones")
        ),
    )
    op.create_table(
        "backup_exports",
        sa.Column("export_id", sa.String(length=64), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("entry_count", sa.BigInteger(), nullable=False),
        sa.Column("signer_fingerprint", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("export_id", name=op.f("pk_backup_exports")),
    )
    op.create_table(
        "backup_export_versions",
        sa.Column("export_id", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["backup_exports.export_id"],
            name=op.f("fk_backup_export_versions_export_id_backup_exports"),
        ),
        sa.PrimaryKeyConstraint(
            "export_id", "account", "key_id", "version", name=op.f("pk_backup_export_versions")
        ),
    )
    op.create_index(
        "ix_backup_export_versions_account_key_id",
        "backup_export_versions",
        ["account", "key_id"],
    )
    # What was revoked or destroyed before this migration.
    op.execute(
        "INSERT INTO key_tombstones (account, key_id, version, state, time, reason_code, reason)"
        " SELECT account, key_id, 0, state, COALESCE(revoke_time, update_time),"
        " revocation_reason_code, revocation_reason FROM keys"
        " WHERE state IN ('REVOKED', 'DESTROYED')"
    )
    # Versions revoked on their own; those revoked with their key (same time) are covered by
    # the key's tombstone, as RevokeKey records them.
    op.execute(
        "INSERT INTO key_tombstones (account, key_id, version, state, time, reason_code, reason)"
        " SELECT v.account, v.key_id, v.version, 'REVOKED', v.revoke_time,"
        " v.revocation_reason_code, COALESCE(v.revocation_reason, '') FROM key_versions v"
        " JOIN keys k ON k.account = v.account AND k.key_id = v.key_id"
        " WHERE v.revoke_time IS NOT NULL"
        " AND (k.revoke_time IS NULL OR v.revoke_time != k.revoke_time)"
    )


def downgrade() -> None:
    op.drop_index("ix_backup_export_versions_account_key_id", table_name="backup_export_versions")
    op.drop_table("backup_export_versions")
    op.drop_table("backup_exports")
    op.drop_table("key_tombstones")
