"""Reports of messages and users, and the operator's webhook endpoints."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from models.columns import BigId, UTCDateTime, utcnow


class ReportKind(enum.StrEnum):
    MESSAGE = "MESSAGE"
    USER = "USER"


class Report(SQLModel, table=True):
    """A user's report of a message or a user; the excerpt is what the reporter's client sent.

    The server keeps no delivered bodies, so a message report carries the text as the reporter
    saw it (bounded by a setting), as the big messengers forward it from the reporter's device.
    """

    __tablename__ = "reports"
    __table_args__ = (
        # A repeat stores nothing (resolvers/reports.py inserts with ON CONFLICT DO NOTHING): one
        # report per reporter and message, and one open report per reporter and reported user.
        Index(
            "uq_reports_message",
            "reporter_id",
            "message_id",
            unique=True,
            postgresql_where=text("message_id IS NOT NULL"),
            sqlite_where=text("message_id IS NOT NULL"),
        ),
        Index(
            "uq_reports_open_user",
            "reporter_id",
            "reported_user_id",
            unique=True,
            postgresql_where=text("kind = 'USER' AND resolved_at IS NULL"),
            sqlite_where=text("kind = 'USER' AND resolved_at IS NULL"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    reporter_id: int = Field(foreign_key="users.id", index=True, sa_type=BigId, ondelete="CASCADE")
    kind: str = Field(max_length=8)
    reported_user_id: int = Field(foreign_key="users.id", sa_type=BigId, ondelete="CASCADE")
    conversation_id: int | None = Field(default=None, sa_type=BigId)
    message_id: int | None = Field(default=None, sa_type=BigId)
    reason: str = Field(max_length=32)
    excerpt: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolution: str | None = Field(default=None, max_length=500)


class WebhookEndpoint(SQLModel, table=True):
    """Where the operator wants events delivered, signed with `secret` (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    url: str = Field(max_length=2048)
    # `whsec_<base64>`: the receiver verifies signatures with it, so the server must keep it.
    secret: str = Field(max_length=128)
    # JSON list of event types, or ["*"] for all.
    events: str
    description: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
