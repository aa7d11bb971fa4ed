"""Initial schema: jobs and their candidates.

Hand-written to match ``core/db/models.py`` exactly; a test compares the
migrated schema with the models on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("queued", "preparing", "searching", "finalizing", "done", "failed", "cancelled")
CANDIDATE_STATUSES = ("running", "complete", "duplicate", "failed")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*JOB_STATUSES, name="job_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("profile", sa.JSON(), nullable=True),
        sa.Column("baseline", sa.JSON(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])

    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*CANDIDATE_STATUSES, name="candidate_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("ratios", sa.JSON(), nullable=False),
        sa.Column("proposed", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("flops", sa.Float(), nullable=False),
        sa.Column("params", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("device", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_candidates_job_trial", "candidates", ["job_id", "trial_number"], unique=True
    )
    op.create_index("ix_candidates_job_key", "candidates", ["job_id", "key"])


def downgrade() -> None:
    op.drop_index("ix_candidates_job_key", table_name="candidates")
    op.drop_index("ix_candidates_job_trial", table_name="candidates")
    op.drop_table("candidates")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_table("jobs")
