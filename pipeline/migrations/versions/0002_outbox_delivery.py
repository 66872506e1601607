"""Outbox: which sinks accepted an event, and a parked (dead-letter) state.

The relay publishes each event to every configured sink and marks it sent only when
all accepted; remembering the sinks that already accepted keeps a webhook outage from
re-publishing to the Redis stream, and a parked event (a sink refused it for good)
stops coming back until a person re-queues it.

Revision ID: 0002_outbox_delivery
Revises: 0001_initial
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_outbox_delivery"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("delivered_to", sa.JSON(), nullable=False,
                                   server_default=sa.text("'[]'")))
        batch.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("parked_at")
        batch.drop_column("delivered_to")
