"""Dialect routing: who speaks what, and what each ticket was said in.

- ``staff_users.dialects``: the varieties a reviewer understands (a JSON list, exactly
  as declared; empty: none declared, read as Mandarin only).
- ``tickets.variety`` (indexed) and ``tickets.readable``: the document's
  ``transcript.variety`` and ``transcript.readable``, so the review queue filters and
  orders by them without reading JSON. Existing tickets are filled from their
  documents; one without them gets mandarin and readable.

Revision ID: 0009_dialect_routing
Revises: 0008_repeats_clusters
Create Date: 2026-12-02
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision: str = "0009_dialect_routing"
down_revision: str | None = "0008_repeats_clusters"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("staff_users") as batch:
        batch.add_column(sa.Column("dialects", sa.JSON(), nullable=False,
                                   server_default="[]"))
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("variety", sa.String(16), nullable=True))
        batch.add_column(sa.Column("readable", sa.Boolean(), nullable=True))
        batch.create_index("ix_tickets_variety", ["variety"])
    # existing tickets: from their documents, as the store reads them
    bind = op.get_bind()
    tickets = sa.table("tickets", sa.column("id", sa.String), sa.column("document", sa.JSON),
                       sa.column("variety", sa.String), sa.column("readable", sa.Boolean))
    rows = bind.execute(sa.select(tickets.c.id, tickets.c.document)).all()
    for ticket_id, document in rows:
        if isinstance(document, str):
            document = json.loads(document)
        transcript = (document or {}).get("transcript") or {}
        readable = transcript.get("readable")
        bind.execute(tickets.update().where(tickets.c.id == ticket_id).values(
            variety=transcript.get("variety") or "mandarin",
            readable=True if readable is None else bool(readable)))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_variety")
        batch.drop_column("readable")
        batch.drop_column("variety")
    with op.batch_alter_table("staff_users") as batch:
        batch.drop_column("dialects")
