"""重复件 and 一类事: what the matcher needs of each ticket, clusters, and their history.

- ``ticket_matters``: one row per ticket: its caller key, time, leaf, place parts,
  area and matter keys (the blocking keys), its first ticket and its cluster.
- ``clusters``: one row per 一类事 (id from its earliest member; a merged one is kept
  with status 'merged'), with its counts, heat, description and a version that each
  change bumps (the cluster.updated event's revision).
- ``repeat_history``: who linked, unlinked, merged or split what, and when.

Revision ID: 0008_repeats_clusters
Revises: 0007_lm_registry
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008_repeats_clusters"
down_revision: str | None = "0007_lm_registry"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("anchor_ticket_id", sa.String(32), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("object", sa.String(64), nullable=True),
        sa.Column("county", sa.String(64), nullable=True),
        sa.Column("town", sa.String(64), nullable=True),
        sa.Column("village", sa.String(64), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("callers", sa.Integer(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("urgent", sa.Integer(), nullable=False),
        sa.Column("heat", sa.Float(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("merged_into", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('active', 'merged', 'dissolved')",
                           name=op.f("ck_clusters_status")),
        sa.ForeignKeyConstraint(["anchor_ticket_id"], ["tickets.id"], ondelete="CASCADE",
                                name=op.f("fk_clusters_anchor_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clusters")),
    )
    op.create_index("ix_clusters_list", "clusters", ["status", "heat"])
    op.create_index("ix_clusters_place", "clusters", ["town", "category"])
    op.create_table(
        "ticket_matters",
        sa.Column("ticket_id", sa.String(32), nullable=False),
        sa.Column("caller", sa.String(200), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("county", sa.String(64), nullable=True),
        sa.Column("town", sa.String(64), nullable=True),
        sa.Column("village", sa.String(64), nullable=True),
        sa.Column("road", sa.String(100), nullable=True),
        sa.Column("landmark", sa.String(100), nullable=True),
        sa.Column("objects", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("area", sa.String(200), nullable=True),
        sa.Column("matter", sa.String(100), nullable=True),
        sa.Column("duplicate_of", sa.String(32), nullable=True),
        sa.Column("repeat_count", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=True),
        sa.Column("cluster_pinned", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], ondelete="CASCADE",
                                name=op.f("fk_ticket_matters_ticket_id_tickets")),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"],
                                name=op.f("fk_ticket_matters_cluster_id_clusters")),
        sa.PrimaryKeyConstraint("ticket_id", name=op.f("pk_ticket_matters")),
    )
    op.create_index("ix_ticket_matters_caller", "ticket_matters", ["caller", "at"])
    op.create_index("ix_ticket_matters_block", "ticket_matters", ["area", "matter", "at"])
    op.create_index("ix_ticket_matters_cluster", "ticket_matters", ["cluster_id"])
    op.create_index("ix_ticket_matters_first", "ticket_matters", ["duplicate_of"])
    op.create_table(
        "repeat_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=True),
        sa.Column("ticket_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repeat_history")),
    )
    op.create_index("ix_repeat_history_cluster", "repeat_history", ["cluster_id", "id"])
    op.create_index("ix_repeat_history_ticket", "repeat_history", ["ticket_id", "id"])


def downgrade() -> None:
    op.drop_table("repeat_history")
    op.drop_table("ticket_matters")
    op.drop_table("clusters")
