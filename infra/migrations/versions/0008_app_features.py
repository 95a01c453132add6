"""app features: unread counters, mentions, per-user conversation state, invites, bans,
disappearing messages, read-receipt privacy, notification preferences, deleted accounts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.columns

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = models.columns.UTCDateTime(timezone=True)
_ID = models.columns.BigId


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        # Kept by the send and markRead statements, never by counting rows (messages go on delivery).
        batch.add_column(sa.Column("unread_count", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("unread_mentions", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("read_upto", _ID, nullable=False, server_default="0"))
        batch.add_column(sa.Column("muted_until", _TIME, nullable=True))
        batch.add_column(sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("pinned_at", _TIME, nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("disappear_after_seconds", sa.Integer(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("mentions", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("expires_at", _TIME, nullable=True))
        # Partial: only disappearing messages are in it, so a plain send writes no entry.
        batch.create_index(
            "ix_messages_expires_at",
            ["expires_at"],
            postgresql_where=sa.text("expires_at IS NOT NULL"),
            sqlite_where=sa.text("expires_at IS NOT NULL"),
        )
    with op.batch_alter_table("sent_keys") as batch:
        # markRead recounts what is left unread after the message read: sends of the conversation by id.
        batch.create_index("ix_sent_keys_conversation_message", ["conversation_id", "message_id"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("hide_read_receipts", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("push_mentions_when_muted", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("deleted_at", _TIME, nullable=True))
    op.create_table(
        "mentions",
        sa.Column("user_id", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("conversation_id", _ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("message_id", _ID, primary_key=True),
        sa.Column("sent_at", _TIME, nullable=False),
    )
    op.create_index("ix_mentions_sent_at", "mentions", ["sent_at"])
    op.create_table(
        "invites",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", _ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_by", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("revoked_at", _TIME, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_invites_conversation_id", "invites", ["conversation_id"])
    op.create_table(
        "bans",
        sa.Column("conversation_id", _ID, sa.ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("banned_by", _ID, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("bans")
    op.drop_index("ix_invites_conversation_id", table_name="invites")
    op.drop_table("invites")
    op.drop_index("ix_mentions_sent_at", table_name="mentions")
    op.drop_table("mentions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("push_mentions_when_muted")
        batch.drop_column("hide_read_receipts")
    with op.batch_alter_table("sent_keys") as batch:
        batch.drop_index("ix_sent_keys_conversation_message")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_expires_at")
        batch.drop_column("expires_at")
        batch.drop_column("mentions")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("disappear_after_seconds")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("pinned_at")
        batch.drop_column("archived")
        batch.drop_column("muted_until")
        batch.drop_column("read_upto")
        batch.drop_column("unread_mentions")
        batch.drop_column("unread_count")
