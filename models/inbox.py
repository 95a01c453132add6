"""Per-user inbox: the durable events each user's devices have yet to acknowledge.

Positions (`seq`) count up per user and are handed out under a row lock on
`InboxHead`, so a user's entries commit in position order: a subscriber that has
seen position N has seen every committed entry below N.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Enum, Text
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class EventKind(enum.StrEnum):
    MESSAGE = "MESSAGE"
    RECEIPT = "RECEIPT"
    CONVERSATION = "CONVERSATION"
    # Message lifecycle (payload entries naming a message the clients hold): edit, delete, reaction.
    EDIT = "EDIT"
    DELETE = "DELETE"
    REACTION = "REACTION"
    # The reader's own other devices: how far they read a conversation and what is left unread there.
    READ_STATE = "READ_STATE"
    # A report in a group, for its owners and admins (resolvers/reports.py).
    REPORT = "REPORT"
    # End-to-end encryption's key directory (resolvers/device_keys.py, resolvers/device_lists.py): a device's
    # one-time keys run low (for that device only), a member of an encrypted conversation gained or lost a device.
    KEYS_LOW = "KEYS_LOW"
    DEVICE_LIST = "DEVICE_LIST"
    # An opaque message from one device to one device (resolvers/to_device.py); `device_id` is set.
    TO_DEVICE = "TO_DEVICE"


class InboxHead(SQLModel, table=True):
    """The last position handed out in a user's inbox."""

    __tablename__ = "inbox_heads"

    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    last_seq: int = Field(default=0, sa_type=BigId)


class InboxEntry(SQLModel, table=True):
    """One durable event for one user; deleted once every device of the user is past it."""

    __tablename__ = "inbox_entries"

    user_id: int = Field(foreign_key="users.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    seq: int = Field(primary_key=True, sa_type=BigId)
    kind: EventKind = Field(sa_column=Column(Enum(EventKind, native_enum=False, length=12), nullable=False))
    # Set for MESSAGE entries; the message row lives while any entry refers to it.
    message_id: int | None = Field(
        default=None, foreign_key="messages.id", index=True, sa_type=BigId, ondelete="CASCADE"
    )
    # JSON for RECEIPT and CONVERSATION entries (they outlive any row they speak of).
    payload: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Set for an entry meant for one device of the user only (to-device messages); the others skip it.
    device_id: int | None = Field(default=None, sa_type=BigId)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReceiptWatermark(SQLModel, table=True):
    """How far `reader` has received and read `sender`'s messages in a conversation."""

    __tablename__ = "receipt_watermarks"

    conversation_id: int = Field(foreign_key="conversations.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    sender_id: int = Field(primary_key=True, sa_type=BigId)
    reader_id: int = Field(primary_key=True, sa_type=BigId)
    delivered_upto: int = Field(default=0, sa_type=BigId)
    read_upto: int = Field(default=0, sa_type=BigId)
