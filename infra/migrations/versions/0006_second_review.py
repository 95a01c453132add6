"""second security review: deletions remembered past the message row, engagement for presence

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.columns

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A delete for everyone outlives the message row: an edit after delivery must still see it.
    with op.batch_alter_table("sent_keys") as batch:
        batch.add_column(sa.Column("deleted_at", models.columns.UTCDateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE sent_keys SET deleted_at = (SELECT m.deleted_at FROM messages m WHERE m.id = sent_keys.message_id) "
        "WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = sent_keys.message_id AND m.deleted_at IS NOT NULL)"
    )
    # Presence goes only to people one has engaged with: set when a member sends or creates.
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("engaged", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Existing memberships: owners created their group, and senders with a remembered send engaged.
    op.execute("UPDATE members SET engaged = true WHERE role = 'OWNER'")
    op.execute(
        "UPDATE members SET engaged = true WHERE EXISTS (SELECT 1 FROM sent_keys k "
        "WHERE k.sender_id = members.user_id AND k.conversation_id = members.conversation_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("engaged")
    with op.batch_alter_table("sent_keys") as batch:
        batch.drop_column("deleted_at")
