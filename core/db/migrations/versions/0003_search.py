"""Candidates keep their objectives and ladder record; measured latencies are cached.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("candidates", sa.Column("objectives", sa.JSON(), nullable=True))
    op.add_column("candidates", sa.Column("rungs", sa.JSON(), nullable=True))
    op.create_table(
        "latencies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("arch", sa.String(200), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_latencies_key", "latencies", ["device", "arch", "batch"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_latencies_key", table_name="latencies")
    op.drop_table("latencies")
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("rungs")
        batch.drop_column("objectives")
