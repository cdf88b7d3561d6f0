"""Initial schema: keys, key versions, root key generations.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Written out in full rather than derived from vault.storage.tables, so this migration keeps
creating the same schema however the tables module changes later. Times are integer
microseconds since the Unix epoch, UTC (see tables.UtcDateTime).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("primary_version", sa.Integer(), nullable=False),
        sa.Column("token_resident", sa.Boolean(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("destroy_scheduled_time", sa.BigInteger(), nullable=True),
        sa.Column("state_before_destroy_scheduled", sa.String(32), nullable=True),
        sa.Column("revocation_reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("etag", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account", "key_id", name="pk_keys"),
        sa.UniqueConstraint("account", "request_id", name="uq_keys_account_request_id"),
    )
    op.create_index(
        "ix_keys_state_destroy_scheduled_time", "keys", ["state", "destroy_scheduled_time"]
    )

    op.create_table(
        "key_versions",
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("root_generation", sa.Integer(), nullable=True),
        sa.Column("wrapped_blob", sa.LargeBinary(), nullable=True),
        sa.Column("token_label", sa.String(128), nullable=True),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=True),
        sa.Column("destroy_time", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("account", "key_id", "version", name="pk_key_versions"),
        sa.ForeignKeyConstraint(
            ["account", "key_id"],
            ["keys.account", "keys.key_id"],
            name="fk_key_versions_account_key_id_keys",
        ),
        sa.UniqueConstraint("token_label", name="uq_key_versions_token_label"),
    )
    op.create_index("ix_key_versions_state", "key_versions", ["state"])

    op.create_table(
        "root_generations",
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token_label", sa.String(128), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("retired", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("generation", name="pk_root_generations"),
    )


def downgrade() -> None:
    op.drop_table("root_generations")
    op.drop_index("ix_key_versions_state", table_name="key_versions")
    op.drop_table("key_versions")
    op.drop_index("ix_keys_state_destroy_scheduled_time", table_name="keys")
    op.drop_table("keys")
