"""End-to-end encryption's key directory: each device's published keys (the server holds no secret)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import false
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class DeviceKey(SQLModel, table=True):
    """A device's Olm identity (Curve25519) and signing (Ed25519) keys, and its signed fallback key."""

    __tablename__ = "device_keys"

    device_id: int = Field(foreign_key="devices.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    user_id: int = Field(foreign_key="users.id", index=True, sa_type=BigId, ondelete="CASCADE")
    identity_key: str = Field(max_length=64)
    signing_key: str = Field(max_length=64)
    # The device's Ed25519 signature over its keys, checked by the clients that fetch them.
    signature: str = Field(max_length=128)
    # Handed out when no one-time key is left (weaker: it is reused until replaced).
    fallback_key_id: str | None = Field(default=None, max_length=64)
    fallback_key: str | None = Field(default=None, max_length=64)
    fallback_signature: str | None = Field(default=None, max_length=128)
    # A OneTimeKeysLowEvent went out since the last upload: one is enough until the device uploads again.
    low_keys_notified: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OneTimeKey(SQLModel, table=True):
    """A signed Curve25519 one-time key of a device: handed out once by claimOneTimeKeys, then deleted."""

    __tablename__ = "one_time_keys"

    device_id: int = Field(foreign_key="devices.id", primary_key=True, sa_type=BigId, ondelete="CASCADE")
    key_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
