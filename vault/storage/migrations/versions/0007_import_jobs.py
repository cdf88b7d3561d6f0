"""Import jobs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 01:30:00

CreateImportJob makes a wrapping key pair in the token for one key; the row keeps the job's
method, public key, expiry and the label of its private key, and when that private key was
destroyed (the job expired).

Written out in full, like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_jobs",
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("token_label", sa.String(128), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("expire_time", sa.BigInteger(), nullable=False),
        sa.Column("destroy_time", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account", "key_id"],
            ["keys.account", "keys.key_id"],
            name=op.f("fk_import_jobs_account_key_id_keys"),
        ),
        sa.PrimaryKeyConstraint("account", "key_id", "job_id", name=op.f("pk_import_jobs")),
        sa.UniqueConstraint("token_label", name=op.f("uq_import_jobs_token_label")),
    )
    op.create_index(
        "ix_import_jobs_destroy_time_expire_time",
        "import_jobs",
        ["destroy_time", "expire_time"],
    )


def downgrade() -> None:
    op.drop_index("ix_import_jobs_destroy_time_expire_time", table_name="import_jobs")
    op.drop_table("import_jobs")
