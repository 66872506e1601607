"""The language-model registry: model_promotions rows get a kind, 'asr' or 'lm'.

Every existing row is a Whisper promotion ('asr', the server default); `minyin lm
promote` writes 'lm' rows. SQLite needs batch mode to add a NOT NULL column.

Revision ID: 0007_lm_registry
Revises: 0006_models
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_lm_registry"
down_revision: str | None = "0006_models"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_promotions") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False,
                                   server_default="asr"))


def downgrade() -> None:
    with op.batch_alter_table("model_promotions") as batch:
        batch.drop_column("kind")
