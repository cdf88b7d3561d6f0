"""Buckets: one row per bucket, pointing at its master key in keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 00:00:00

A bucket's master key is an ordinary keys row (purpose BUCKET_MASTER, id "~{bucket}"), so its
versions, states and destruction are the keys tables' own and the metadata_changes triggers of
0003 already count its changes. This table adds what only a bucket has: labels, the
bucket-key policy and the idempotency token of its creation.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "buckets",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("bucket_id", sa.String(length=64), nullable=False),
        sa.Column("master_key_id", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("key_lifetime_us", sa.BigInteger(), nullable=False),
        sa.Column("max_objects_per_key", sa.BigInteger(), nullable=True),
        sa.Column("max_bytes_per_key", sa.BigInteger(), nullable=True),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("etag", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account", "master_key_id"],
            ["keys.account", "keys.key_id"],
            name=op.f("fk_buckets_account_master_key_id_keys"),
        ),
        sa.PrimaryKeyConstraint("account", "bucket_id", name=op.f("pk_buckets")),
        sa.UniqueConstraint(
            "account", "master_key_id", name=op.f("uq_buckets_account_master_key_id")
        ),
        sa.UniqueConstraint("account", "request_id", name=op.f("uq_buckets_account_request_id")),
    )


def downgrade() -> None:
    op.drop_table("buckets")
