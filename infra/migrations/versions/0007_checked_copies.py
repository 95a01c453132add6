"""checked copies of uploads: what was checked is what is served

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Uploads checked before this revision have none: they are checked (and copied) again when attached.
    with op.batch_alter_table("attachments") as batch:
        batch.add_column(sa.Column("checked_key", sa.String(length=220), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("checked_key")
