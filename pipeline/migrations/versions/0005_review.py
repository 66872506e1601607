"""Staff review: staff users, sign-in sessions, ticket revisions, queue columns.

- ``staff_users``: people who sign in to the review page (argon2 password hashes).
- ``staff_sessions``: a signed-in browser: the SHA-256 of its cookie, its CSRF token.
- ``ticket_revisions``: one row per staff save or approval, with the document after it.
- ``tickets.confidence``: the duration-weighted mean segment confidence, so the queue
  can sort least confident first without reading JSON (filled in for existing rows).
- ``tickets.updated_by`` / ``reviewed_by`` / ``reviewed_at``: who saved last, who approved.

Revision ID: 0005_review
Revises: 0004_batches
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_review"
down_revision: str | None = "0004_batches"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "staff_users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('staff', 'admin')", name=op.f("ck_staff_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_users")),
        sa.UniqueConstraint("username", name=op.f("uq_staff_users_username")),
    )
    op.create_table(
        "staff_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["staff_users.id"], ondelete="CASCADE",
                                name=op.f("fk_staff_sessions_user_id_staff_users")),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE",
                                name=op.f("fk_staff_sessions_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_sessions")),
    )
    op.create_index("ix_staff_sessions_expires_at", "staff_sessions", ["expires_at"])
    op.create_table(
        "ticket_revisions",
        sa.Column("ticket_id", sa.String(32), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("action IN ('save', 'approve')",
                           name=op.f("ck_ticket_revisions_action")),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], ondelete="CASCADE",
                                name=op.f("fk_ticket_revisions_ticket_id_tickets")),
        sa.PrimaryKeyConstraint("ticket_id", "revision", name=op.f("pk_ticket_revisions")),
    )
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("updated_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(200), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_tickets_queue", ["status", "urgency", "confidence"])
    # existing tickets: the same duration-weighted mean the store computes for new ones
    op.execute(sa.text(
        "UPDATE tickets SET confidence = (SELECT "
        " CASE WHEN SUM(CASE WHEN s.\"end\" > s.start THEN s.\"end\" - s.start ELSE 0 END) > 0"
        " THEN SUM(s.confidence * (CASE WHEN s.\"end\" > s.start"
        "      THEN s.\"end\" - s.start ELSE 0 END))"
        "    / SUM(CASE WHEN s.\"end\" > s.start THEN s.\"end\" - s.start ELSE 0 END)"
        " ELSE AVG(s.confidence) END"
        " FROM segments s WHERE s.ticket_id = tickets.id)"
    ))


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_queue")
        for name in ("reviewed_at", "reviewed_by", "updated_by", "confidence"):
            batch.drop_column(name)
    op.drop_table("ticket_revisions")
    op.drop_index("ix_staff_sessions_expires_at", table_name="staff_sessions")
    op.drop_table("staff_sessions")
    op.drop_table("staff_users")
