"""The model registry: which Whisper model the workers load, as a history of promotions.

The current model is the newest row; a rollback is a new row naming the model before.
Workers read it at the start of every job, so a promotion needs no restart.

Revision ID: 0006_models
Revises: 0005_review
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_models"
down_revision: str | None = "0005_review"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("validation_cer", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("action IN ('promote', 'rollback')",
                           name=op.f("ck_model_promotions_action")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_promotions")),
    )


def downgrade() -> None:
    op.drop_table("model_promotions")
