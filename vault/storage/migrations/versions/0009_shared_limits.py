"""Rate limits, quotas, replay protection, failure counts and the credential epoch in the store.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 01:30:00

One vault host keeps this state in a file its worker processes map (vault/coordination/
limits.py). Several hosts sharing one PostgreSQL store must share it too, or a request signed
once could be replayed against each host, and every host would grant its own rate and quota:
there it lives in these tables (vault/storage/limits_store.py). They are made on SQLite too,
so both backends have one schema, but nothing uses them there.

shared_nonces and shared_counters are UNLOGGED on PostgreSQL: no write-ahead log for a row
written by every signed request. A crash empties them; the sentinel row of shared_nonces is
then gone too, which moves replay_horizon to the recovery (requests stamped before are
refused, as for a new limits file). Counters lost in a crash start afresh, which can only be
more lenient, and quotas are re-seeded from usage_counters.

Written out in full, like 0001.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _unlogged() -> list[str]:
    return ["UNLOGGED"] if op.get_bind().dialect.name == "postgresql" else []


def upgrade() -> None:
    op.create_table(
        "shared_limits_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("credential_epoch", sa.BigInteger(), nullable=False),
        sa.Column("replay_horizon", sa.Float(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_shared_limits_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shared_limits_state")),
    )
    # No nonce was stored before this table existed: refuse requests stamped before now, as
    # for a new limits file (the next whole second: timestamps are whole seconds).
    horizon = float(math.ceil(time.time()))
    op.execute(
        sa.text(
            "INSERT INTO shared_limits_state (id, credential_epoch, replay_horizon) "
            "VALUES (1, 0, :horizon)"
        ).bindparams(horizon=horizon)
    )
    op.create_table(
        "shared_nonces",
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_shared_nonces")),
        prefixes=_unlogged(),
    )
    op.create_index("ix_shared_nonces_expires_at", "shared_nonces", ["expires_at"])
    op.create_table(
        "shared_counters",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_shared_counters")),
        prefixes=_unlogged(),
    )


def downgrade() -> None:
    op.drop_table("shared_counters")
    op.drop_index("ix_shared_nonces_expires_at", table_name="shared_nonces")
    op.drop_table("shared_nonces")
    op.drop_table("shared_limits_state")
