"""Accounts and their devices (login sessions)."""

from __future__ import annotations

from datetime import datetime

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
