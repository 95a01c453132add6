"""Push channels: at most one per device, gone with the device (revoked, logged out or expired)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Column, Enum
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class PushPlatform(enum.StrEnum):
    WEBPUSH = "WEBPUSH"
    APNS = "APNS"
    FCM = "FCM"


class PushRegistration(SQLModel, table=True):
    """Where to push for one device: a WebPush subscription, or an APNs or FCM token.

    The device is the primary key, so a new registration replaces the old one; the
    foreign key cascades, so a device deleted for any reason loses its registration.
    """

    __tablename__ = "push_registrations"

    device_id: int = Field(foreign_key="devices.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    # Denormalised from the device: the worker looks registrations up by recipient.
    user_id: int = Field(foreign_key="users.id", index=True, sa_type=BigId, ondelete="CASCADE")
    platform: PushPlatform = Field(sa_column=Column(Enum(PushPlatform, native_enum=False, length=8), nullable=False))
    # APNs device token or FCM registration token.
    token: str | None = Field(default=None, max_length=4096)
    # WebPush subscription: endpoint URL, the client's P-256 key and auth secret (base64url).
    endpoint: str | None = Field(default=None, max_length=2048)
    p256dh: str | None = Field(default=None, max_length=128)
    auth: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
