"""moderation and integration: silenced members, slow mode, announcement groups, frozen
conversations, suspended accounts, reports, webhook endpoints

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.columns

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = models.columns.UTCDateTime(timezone=True)
_ID = models.columns.BigId


def upgrade() -> None:
    with op.batch_alter_table("members") as batch:
        # muteMember: the member receives but may not send, react or type (until lifted or the time).
        batch.add_column(sa.Column("silenced", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("silenced_until", _TIME, nullable=True))
        # Slow mode: the member's last message here, set by the send's one statement.
        batch.add_column(sa.Column("last_sent_at", _TIME, nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("only_admins_send", sa.Boolean(), nullable=False, server_default=sa.false()))
        # True: only owners and admins edit a group's title and timer, as before these settings.
        batch.add_column(sa.Column("only_admins_edit", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("slow_mode_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("frozen_at", _TIME, nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("suspended_at", _TIME, nullable=True))
    op.create_table(
        "reports",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("reporter_id", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("reported_user_id", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("conversation_id", _ID, nullable=True),
        sa.Column("message_id", _ID, nullable=True),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("excerpt", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("resolved_at", _TIME, nullable=True),
        sa.Column("resolution", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_reports_created_at", "reports", ["created_at"])
    op.create_index("ix_reports_reporter_id", "reports", ["reporter_id"])
    # A repeat stores nothing: one report per reporter and message, one open one per reporter and user.
    op.create_index(
        "uq_reports_message",
        "reports",
        ["reporter_id", "message_id"],
        unique=True,
        postgresql_where=sa.text("message_id IS NOT NULL"),
        sqlite_where=sa.text("message_id IS NOT NULL"),
    )
    op.create_index(
        "uq_reports_open_user",
        "reports",
        ["reporter_id", "reported_user_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'USER' AND resolved_at IS NULL"),
        sqlite_where=sa.text("kind = 'USER' AND resolved_at IS NULL"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("secret", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("events", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("disabled_at", _TIME, nullable=True),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
    op.drop_index("uq_reports_open_user", table_name="reports")
    op.drop_index("uq_reports_message", table_name="reports")
    op.drop_index("ix_reports_reporter_id", table_name="reports")
    op.drop_index("ix_reports_created_at", table_name="reports")
    op.drop_table("reports")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("suspended_at")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("frozen_at")
        batch.drop_column("slow_mode_seconds")
        batch.drop_column("only_admins_edit")
        batch.drop_column("only_admins_send")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("last_sent_at")
        batch.drop_column("silenced_until")
        batch.drop_column("silenced")
