"""Conversations (direct and group) and their members."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Enum, UniqueConstraint, false
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class ConversationKind(enum.StrEnum):
    DIRECT = "DIRECT"
    GROUP = "GROUP"


class MemberRole(enum.StrEnum):
    OWNER = "OWNER"
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"


class Conversation(SQLModel, table=True):
    """A chat; `direct_key` ("<low id>:<high id>") makes one DIRECT conversation per pair."""

    __tablename__ = "conversations"
    # AUTOINCREMENT on SQLite: ids of deleted rows are never handed out again.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    kind: ConversationKind = Field(
        sa_column=Column(Enum(ConversationKind, native_enum=False, length=8), nullable=False)
    )
    title: str | None = Field(default=None, max_length=100)
    direct_key: str | None = Field(default=None, max_length=41, unique=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Bumped on every message: orders the viewer's conversation list.
    last_activity_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Member(SQLModel, table=True):
    """A user's membership of a conversation; `muted` is that user's own setting."""

    __tablename__ = "members"
    # The primary key serves "members of a conversation"; this serves "conversations of a user".
    __table_args__ = (UniqueConstraint("user_id", "conversation_id"),)

    conversation_id: int = Field(foreign_key="conversations.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    role: MemberRole = Field(sa_column=Column(Enum(MemberRole, native_enum=False, length=8), nullable=False))
    joined_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    muted: bool = False
    # Has sent a message here or created the conversation: only then may others see this
    # member's presence through it (resolvers/privacy.py).
    engaged: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
