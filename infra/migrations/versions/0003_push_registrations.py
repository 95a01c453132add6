"""push registrations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 12:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.columns

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "push_registrations",
        sa.Column("device_id", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=False),
        sa.Column("platform", sa.Enum("WEBPUSH", "APNS", "FCM", name="pushplatform", native_enum=False, length=8), nullable=False),
        sa.Column("token", sa.String(length=4096), nullable=True),
        sa.Column("endpoint", sa.String(length=2048), nullable=True),
        sa.Column("p256dh", sa.String(length=128), nullable=True),
        sa.Column("auth", sa.String(length=64), nullable=True),
        sa.Column("created_at", models.columns.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index(op.f("ix_push_registrations_user_id"), "push_registrations", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_push_registrations_user_id"), table_name="push_registrations")
    op.drop_table("push_registrations")
