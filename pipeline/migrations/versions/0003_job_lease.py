"""Jobs: a heartbeat lease, the broker hand-off time and the work measured.

- ``heartbeat_at``: a running job's worker refreshes it; a job whose heartbeat is older
  than the lease belongs to a dead worker and may be claimed again.
- ``worker``: who holds it (host:pid), for people reading a stuck job.
- ``enqueued_at``: when the job was last handed to the broker; NULL means "not yet"
  (the broker was down at upload), so the dispatcher hands it over later.
- ``audio_seconds`` / ``processing_seconds``: what /metrics sums into the real-time factor.

Revision ID: 0003_job_lease
Revises: 0002_outbox_delivery
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_job_lease"
down_revision: str | None = "0002_outbox_delivery"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("worker", sa.String(128), nullable=True))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("audio_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("processing_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in ("processing_seconds", "audio_seconds", "enqueued_at", "worker",
                     "heartbeat_at"):
            batch.drop_column(name)
