"""Conversations (direct and group) and their members."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Enum, UniqueConstraint, false, true
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
    # Disappearing messages: each message sent while set expires this many seconds after sending.
    disappear_after_seconds: int | None = None
    # Moderation (updateConversationSettings): announcement groups, who edits, slow mode. Only
    # owners and admins edit a group's title and timer unless `only_admins_edit` is turned off.
    only_admins_send: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    only_admins_edit: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    slow_mode_seconds: int | None = None
    # Frozen by an operator (admin API): nobody sends, reacts or changes anything until unfrozen.
    frozen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # End-to-end encrypted (set at creation, never turned off): messages carry ciphertext only.
    encrypted: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


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
    # Badges: kept by the send and markRead statements, never by counting rows (messages go on
    # delivery). `read_upto` is the newest message id this member has read here.
    unread_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    unread_mentions: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    read_upto: int = Field(default=0, sa_type=BigId, sa_column_kwargs={"server_default": "0"})
    # This member's own view of the conversation: muted until a time, archived, pinned.
    muted_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    archived: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    pinned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Silenced by an owner/admin (muteMember): receives, but may not send, react or type, until
    # unmuted (`silenced_until` null) or that time.
    silenced: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    silenced_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Slow mode: this member's last message here.
    last_sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Invite(SQLModel, table=True):
    """A link that lets anyone holding its code join a group; only the code's SHA-256 is stored."""

    __tablename__ = "invites"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    conversation_id: int = Field(foreign_key="conversations.id", index=True, sa_type=BigId, ondelete="CASCADE")
    code_hash: str = Field(max_length=64, unique=True)
    created_by: int = Field(foreign_key="users.id", sa_type=BigId, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    max_uses: int | None = None
    uses: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Ban(SQLModel, table=True):
    """A user barred from a group: they cannot join it (by invite or otherwise) until it expires."""

    __tablename__ = "bans"

    conversation_id: int = Field(foreign_key="conversations.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    banned_by: int | None = Field(default=None, sa_type=BigId)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
