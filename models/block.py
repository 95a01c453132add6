"""Blocks: one user refusing contact from another."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class Block(SQLModel, table=True):
    """`blocker_id` receives nothing more from `blocked_id`, and cannot be added by them to a group."""

    __tablename__ = "blocks"

    blocker_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    blocked_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
