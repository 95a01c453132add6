"""attachments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.columns

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attachments",
        sa.Column("id", BigId, nullable=False),
        sa.Column("uploader_id", BigId, nullable=False),
        sa.Column("storage_key", sa.String(length=200), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=127), nullable=False),
        sa.Column("declared_size", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column(
            "state",
            sa.Enum("PENDING", "READY", "DELETING", name="uploadstate", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", models.columns.UTCDateTime(timezone=True), nullable=False),
        sa.Column("conversation_id", BigId, nullable=True),
        sa.Column("message_id", BigId, nullable=True),
        sa.Column("released_at", models.columns.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "thumbnail_state",
            sa.Enum("PENDING", "WORKING", "DONE", "FAILED", name="thumbnailstate", native_enum=False, length=16),
            nullable=True,
        ),
        sa.Column("thumbnail_key", sa.String(length=220), nullable=True),
        sa.Column("thumbnail_attempts", sa.Integer(), nullable=False),
        sa.Column("thumbnail_claimed_at", models.columns.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["uploader_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("storage_key"),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_attachments_uploader_id"), "attachments", ["uploader_id"], unique=False)
    op.create_index(op.f("ix_attachments_state"), "attachments", ["state"], unique=False)
    op.create_index(op.f("ix_attachments_created_at"), "attachments", ["created_at"], unique=False)
    op.create_index(op.f("ix_attachments_message_id"), "attachments", ["message_id"], unique=False)
    op.create_index(op.f("ix_attachments_thumbnail_state"), "attachments", ["thumbnail_state"], unique=False)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("attachments", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("attachments")
    for column in ("thumbnail_state", "message_id", "created_at", "state", "uploader_id"):
        op.drop_index(op.f(f"ix_attachments_{column}"), table_name="attachments")
    op.drop_table("attachments")
