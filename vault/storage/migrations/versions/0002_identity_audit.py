"""Accounts, access keys, API keys, usage counters and the audit chain.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01 00:00:00

Written out in full, like 0001. Times are integer microseconds since the Unix epoch, UTC.
Usage and audit rows carry credential ids without foreign keys: they outlive the credential.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# INTEGER on SQLite makes the single-column primary key an alias of the rowid.
_SEQUENCE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", name="pk_accounts"),
    )

    op.create_table(
        "access_keys",
        sa.Column("access_key_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("grants", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("secret_salt", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("secret_reset_time", sa.BigInteger(), nullable=True),
        sa.Column("last_used_time", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("access_key_id", name="pk_access_keys"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_access_keys_account_id_accounts",
        ),
    )
    op.create_index("ix_access_keys_account_id", "access_keys", ["account_id"])

    op.create_table(
        "api_keys",
        sa.Column("api_key_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("expire_time", sa.BigInteger(), nullable=True),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("daily_quota", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("last_used_time", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("api_key_id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.account_id"],
            name="fk_api_keys_account_id_accounts",
        ),
    )
    op.create_index("ix_api_keys_account_id", "api_keys", ["account_id"])

    op.create_table(
        "usage_counters",
        sa.Column("credential_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", "day", "method", name="pk_usage_counters"),
    )

    op.create_table(
        "audit_events",
        sa.Column("seq", _SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("credential_id", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("latency_us", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"])
    op.create_index("ix_audit_events_credential_id", "audit_events", ["credential_id"])
    op.create_index("ix_audit_events_method", "audit_events", ["method"])

    op.create_table(
        "audit_checkpoints",
        sa.Column("head_seq", _SEQUENCE, autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("key_label", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("head_seq", name="pk_audit_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_events_method", table_name="audit_events")
    op.drop_index("ix_audit_events_credential_id", table_name="audit_events")
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("usage_counters")
    op.drop_index("ix_api_keys_account_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_access_keys_account_id", table_name="access_keys")
    op.drop_table("access_keys")
    op.drop_table("accounts")
