"""Accounts and their devices (login sessions)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import false, true
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class User(SQLModel, table=True):
    """A person with a username; `username` is stored lowercased and unique."""

    __tablename__ = "users"
    # AUTOINCREMENT on SQLite: ids of deleted rows are never handed out again.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    username: str = Field(max_length=32, unique=True, index=True)
    display_name: str = Field(max_length=64)
    # Lowercased display name, for prefix search without a functional index.
    display_name_key: str = Field(max_length=64, index=True)
    password_hash: str = Field(max_length=255)
    # Privacy: when set, nobody sees this user's last-seen time (setPrivacy).
    hide_last_seen: bool = Field(default=False)
    # Privacy: sends no READ receipts in direct conversations and sees none there (setPrivacy).
    hide_read_receipts: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    # Notification preferences: a mention is pushed even in a muted conversation unless off.
    push_mentions_when_muted: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    # Account deleted: the row stays (as "Deleted account") so conversations can still name it.
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Suspended by an operator (admin API): cannot log in, its tokens fail, others see it unavailable.
    suspended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Device(SQLModel, table=True):
    """One login: events are delivered, and acknowledged, per device."""

    __tablename__ = "devices"
    # AUTOINCREMENT on SQLite: ids of deleted rows are never handed out again.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    user_id: int = Field(foreign_key="users.id", index=True, sa_type=BigId, ondelete="CASCADE")
    name: str = Field(max_length=64)
    # SHA-256 of the bearer token: a stolen database does not yield usable tokens.
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_active_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    # Highest inbox position this device has acknowledged (see models.inbox).
    acked_seq: int = Field(default=0, sa_type=BigId)
