"""end-to-end encryption: device keys, one-time keys, per-device inbox entries, encrypted
conversations and their ciphertext

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import models.columns

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = models.columns.UTCDateTime(timezone=True)
_ID = models.columns.BigId


def upgrade() -> None:
    op.create_table(
        "device_keys",
        sa.Column("device_id", _ID, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", _ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("identity_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("signing_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("signature", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("fallback_key_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("fallback_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("fallback_signature", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("low_keys_notified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", _TIME, nullable=False),
    )
    op.create_index("ix_device_keys_user_id", "device_keys", ["user_id"])
    op.create_table(
        "one_time_keys",
        sa.Column("device_id", _ID, sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=64), primary_key=True),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("signature", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
    )
    with op.batch_alter_table("inbox_entries") as batch:
        # To-device messages: an entry for one device of the user only (others skip it).
        batch.add_column(sa.Column("device_id", _ID, nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("encrypted", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("ciphertext", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    with op.batch_alter_table("attachments") as batch:
        # An encrypted conversation's upload: an opaque blob, never checked or previewed.
        batch.add_column(sa.Column("opaque", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("opaque")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("ciphertext")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("encrypted")
    with op.batch_alter_table("inbox_entries") as batch:
        batch.drop_column("device_id")
    op.drop_table("one_time_keys")
    op.drop_index("ix_device_keys_user_id", table_name="device_keys")
    op.drop_table("device_keys")
