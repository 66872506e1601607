"""Hotline batches: a batch per output directory, and the call a batch job came from.

Revision ID: 0004_batches
Revises: 0003_job_lease
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_batches"
down_revision: str | None = "0003_job_lease"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("call_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("source_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("agent_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("caller_channel", sa.Integer(), nullable=True))
        batch.create_index("ix_jobs_batch", ["batch_id", "call_id"])
        batch.create_foreign_key("fk_jobs_batch_id_batches", "batches", ["batch_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_batch_id_batches", type_="foreignkey")
        batch.drop_index("ix_jobs_batch")
        for name in ("caller_channel", "agent_id", "source_path", "call_id", "batch_id"):
            batch.drop_column(name)
    op.drop_table("batches")
