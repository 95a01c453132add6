"""message lifecycle: replies, deletes, reactions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.columns

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("reply_to_id", BigId, nullable=True))
        batch.add_column(sa.Column("reply_to_sender_id", BigId, nullable=True))
        batch.add_column(sa.Column("deleted_at", models.columns.UTCDateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_sent_keys_message_id"), "sent_keys", ["message_id"], unique=False)
    op.create_table(
        "reactions",
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("emoji", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", BigId, nullable=False),
        sa.Column("created_at", models.columns.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "user_id", "emoji"),
    )
    op.create_index(op.f("ix_reactions_created_at"), "reactions", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_reactions_created_at"), table_name="reactions")
    op.drop_table("reactions")
    op.drop_index(op.f("ix_sent_keys_message_id"), table_name="sent_keys")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("reply_to_sender_id")
        batch.drop_column("reply_to_id")
