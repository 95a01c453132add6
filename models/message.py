"""Messages, kept only while some device has yet to acknowledge them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class Message(SQLModel, table=True):
    """A pending message; deleted once no inbox entry refers to it."""

    __tablename__ = "messages"
    __table_args__ = (
        # Only disappearing messages are in it: a plain send writes no entry (the expiry sweep's order).
        Index(
            "ix_messages_expires_at",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL"),
            sqlite_where=text("expires_at IS NOT NULL"),
        ),
        # AUTOINCREMENT on SQLite: ids of deleted rows are never handed out again.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    conversation_id: int = Field(foreign_key="conversations.id", index=True, sa_type=BigId, ondelete="CASCADE")
    sender_id: int = Field(foreign_key="users.id", sa_type=BigId, ondelete="CASCADE")
    client_id: str = Field(max_length=64)
    body: str | None = None
    # The attachments' metadata as JSON (resolvers/files.py), so events need no lookup to show them.
    attachments: str | None = None
    sent_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The message this one replies to: its row id and sender (together they re-issue its signed id).
    reply_to_id: int | None = Field(default=None, sa_type=BigId)
    reply_to_sender_id: int | None = Field(default=None, sa_type=BigId)
    # Deleted for everyone while still pending: body and attachments are gone, and no device gets it.
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The mentioned user ids as JSON, so events show them without a lookup.
    mentions: str | None = None
    # Disappearing messages: never delivered after this time, and removed then.
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # An encrypted conversation's message: opaque to the server (base64), instead of a body.
    ciphertext: str | None = None


class Mention(SQLModel, table=True):
    """A user named in a message; markRead recounts `unreadMentions` from these (swept with sent keys)."""

    __tablename__ = "mentions"

    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    conversation_id: int = Field(foreign_key="conversations.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    message_id: int = Field(primary_key=True, sa_type=BigId)
    sent_at: datetime = Field(sa_type=UTCDateTime, index=True)


class SentKey(SQLModel, table=True):
    """The idempotency record of a send, kept (without the body) after the message is gone.

    A retried `sendMessage` finds its first result here even when the message was
    already delivered and deleted; swept after a retention period.
    """

    __tablename__ = "sent_keys"
    # markRead recounts what is left unread after the message read: sends of the conversation by id.
    __table_args__ = (Index("ix_sent_keys_conversation_message", "conversation_id", "message_id"),)

    sender_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    client_id: str = Field(primary_key=True, max_length=64)
    # Indexed: an edit or delete after delivery finds the message's send time here.
    message_id: int = Field(sa_type=BigId, index=True)
    conversation_id: int = Field(sa_type=BigId)
    sent_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    # Deleted for everyone: remembered here, since the message row goes once delivered.
    deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Reaction(SQLModel, table=True):
    """One user's emoji on one message, kept after the message is gone (swept after file retention)."""

    __tablename__ = "reactions"

    message_id: int = Field(primary_key=True, sa_type=BigId)
    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    emoji: str = Field(primary_key=True, max_length=64)
    conversation_id: int = Field(foreign_key="conversations.id", sa_type=BigId, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
