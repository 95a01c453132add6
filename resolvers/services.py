"""The service container use cases receive, and the configuration records it carries (from settings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from models.columns import utcnow
from resolvers.ports import (
    BeforeSendHook,
    Bus,
    Database,
    Fanout,
    FileStorage,
    InboxStore,
    PasswordHasher,
    Presence,
    PushQueue,
    RateLimiter,
    Telemetry,
    Thumbnailer,
)
from resolvers.webhook_endpoints import Webhooks


@dataclass(frozen=True)
class FileConfig:
    """What file sharing allows; each field but the last is a setting of that name (or derived from one)."""

    max_upload_bytes: int
    allowed_content_types: frozenset[str]
    upload_ticket_seconds: int
    download_url_seconds: int
    retention_seconds: float
    unattached_seconds: float
    thumbnail_size: int
    thumbnail_max_pixels: int
    thumbnail_max_source_bytes: int
    # The scheme and host of download and upload URLs, when not the request's own.
    public_url: str | None
    uploads_per_hour: int
    thumbnail_concurrency: int
    upload_bytes_per_hour: int
    # JPEG, PNG and WebP originals lose their EXIF/XMP (GPS positions) but their orientation,
    # unless kept; they are read whole for it, so they are at most `max_image_bytes`.
    keep_image_metadata: bool
    max_image_bytes: int
    thumbnail_max_attempts: int = 3


@dataclass(frozen=True)
class PushConfig:
    """What the API says and checks about push channels (from settings)."""

    web_push_public_key: str | None = None
    allow_private_endpoints: bool = True


@dataclass(frozen=True)
class BeforeSend:
    """The operator's before-send hook, and whether a send it gives no answer about is stored (fail-open)."""

    hook: BeforeSendHook
    fail_open: bool


class NullTelemetry:
    """Telemetry that records nothing (metrics off, and tools that wire services by hand)."""

    def operation(self, *, kind: str, field: str, outcome: str, seconds: float) -> None:
        """Records nothing."""

    def socket_opened(self) -> None:
        """Records nothing."""

    def socket_closed(self) -> None:
        """Records nothing."""

    def subscription_started(self, field: str) -> None:
        """Records nothing."""

    def subscription_ended(self, field: str) -> None:
        """Records nothing."""

    def send_committed(self, seconds: float) -> None:
        """Records nothing."""

    def notices_published(self, seconds: float) -> None:
        """Records nothing."""

    def events_delivered(self, count: int) -> None:
        """Records nothing."""


@dataclass(frozen=True)
class Limits:
    """Input limits the use cases enforce: each field is the setting of that name (infra/settings.py)."""

    max_group_members: int
    max_body_length: int
    max_attachments: int
    max_presence_watch: int
    login_max_failures: int
    login_failure_window_seconds: int
    device_inactivity_days: float
    send_rate_per_minute: int
    auth_attempts_per_address: int
    conversations_per_hour: int
    member_additions_per_hour: int
    renames_per_hour: int
    typing_interval_seconds: float
    edit_window_seconds: float
    delete_window_seconds: float
    max_reactions_per_user_per_message: int
    push_registrations_per_hour: int
    conversation_settings_per_hour: int = 600
    max_pinned_conversations: int = 5
    disappearing_min_seconds: int = 30
    disappearing_max_seconds: int = 90 * 86400
    disappearing_timer_changes_per_hour: int = 30
    invite_max_uses: int = 1000
    invite_max_lifetime_seconds: int = 30 * 86400
    invite_max_live_per_group: int = 20
    invites_per_hour: int = 30
    invite_joins_per_hour: int = 60
    invite_failures_per_user: int = 10
    invite_failures_per_address: int = 100
    invite_failure_window_seconds: int = 900
    moderation_max_seconds: int = 366 * 86400
    slow_mode_max_seconds: int = 21600
    moderation_actions_per_hour: int = 300
    data_exports_per_hour: int = 3
    max_report_excerpt_length: int = 4000
    reports_per_hour: int = 20
    max_one_time_keys: int = 100
    max_one_time_keys_per_upload: int = 50
    one_time_keys_low: int = 10
    key_uploads_per_hour: int = 60
    key_claims_per_hour: int = 1000
    key_claims_per_device_per_hour: int = 200
    max_ciphertext_length: int = 65536
    max_to_device_payload_bytes: int = 65536
    to_device_per_minute: int = 1000


@dataclass(frozen=True)
class Services:
    """Everything a use case may touch, wired once in `infra/app.py`."""

    db: Database
    bus: Bus
    fanout: Fanout
    inbox_store: InboxStore
    presence: Presence
    rate_limiter: RateLimiter
    passwords: PasswordHasher
    limits: Limits
    file_config: FileConfig
    # None: push notifications are not queued (tests and tools that wire services by hand).
    push_queue: PushQueue | None = None
    push: PushConfig = field(default_factory=PushConfig)
    # None: file sharing is off (tools that wire services by hand); createUpload answers UNAVAILABLE.
    files: FileStorage | None = None
    thumbnailer: Thumbnailer | None = None
    telemetry: Telemetry = field(default_factory=NullTelemetry)
    # The time expiries are judged by (disappearing messages): tests move it instead of waiting.
    clock: Callable[[], datetime] = utcnow
    # None: no webhooks (tools that wire services by hand); see resolvers/webhooks.py.
    webhooks: Webhooks | None = None
    # None: no before-send hook, and a send pays nothing for it (resolvers/before_send.py).
    before_send: BeforeSend | None = None
