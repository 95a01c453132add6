"""Every setting Parley reads, from `PARLEY_*` environment variables, read once."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET_KEY = "parley-development-secret-change-me"  # noqa: S105 - the known default we refuse in production


class Settings(BaseSettings):
    """Configuration of one Parley process; tests build it explicitly instead of touching the environment."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", frozen=True, extra="forbid")

    # `development` turns on what only a developer's machine should have (GraphiQL, introspection,
    # the web chat, private push endpoints); `production` also refuses the development secret.
    # Unset, each of those is off as in production: a deployment that forgot the variable gets
    # the safe value, and only `scripts/serve` (the quick start) sets `development` for you.
    env: Literal["development", "production"] | None = None
    database_url: str = "sqlite+aiosqlite:///./parley.db"
    redis_url: str | None = None
    # Prefixes every Redis key and pub/sub channel, so deployments (and test runs) can share a Redis.
    redis_prefix: str = "parley:"
    secret_key: str = DEFAULT_SECRET_KEY
    # Browser origins allowed to open WebSockets: comma-separated ("https://app.example,https://x.example").
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # GraphiQL and introspection: on with PARLEY_ENV=development; otherwise off unless enabled.
    graphiql: bool | None = None
    introspection: bool | None = None
    # The example web chat at `/`: on with PARLEY_ENV=development; otherwise off unless enabled.
    web_chat: bool | None = None
    # Apollo automatic persisted queries: `auto` stores hashes on first use (Redis, or in process);
    # `allowlist` accepts only the operations of frontend_schema/operations (and their hashes);
    # `off` ignores the extension.
    persisted_queries: Literal["off", "auto", "allowlist"] = "auto"
    # Persisted query texts kept (Redis, shared; or in process), the least recently used evicted
    # first: anyone may register texts, so this bounds the store (each text at most 32 KiB).
    persisted_query_max_entries: int = Field(default=2000, ge=1)
    # Operations per HTTP batch (a JSON array of requests); each counts against the usual limits.
    max_batch_operations: int = Field(default=10, ge=1, le=100)
    log_level: str = "INFO"
    # `json`: one JSON object per line (operation id and name, user and device ids, duration,
    # outcome; never a token, password or message body). `text`: one readable line.
    log_format: Literal["text", "json"] = "text"

    # Operations (README "Operations"). On SIGTERM a process first answers /readyz with 503 for
    # `shutdown_drain_seconds` (load balancers stop sending), then closes its WebSockets with
    # 1012 and gives operations in flight `shutdown_grace_seconds` to finish.
    shutdown_drain_seconds: float = Field(default=0, ge=0, le=300)
    shutdown_grace_seconds: float = Field(default=10, ge=0, le=600)
    # Prometheus metrics on a port of their own (never on the API's): unset, no metrics.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # OpenTelemetry: spans are exported over OTLP/HTTP to this endpoint (e.g.
    # http://collector:4318); unset, tracing costs nothing.
    otlp_endpoint: str | None = None
    otel_service_name: str = "parley"
    # How long an operation waits for a new database connection to open, and for a free one in
    # a full pool, before answering UNAVAILABLE. A stopped database fails at connect; the pool
    # wait is for bursts (a 100-member group reconnecting at once queues for a while) and for
    # a database that hangs.
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    database_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Connections per process: SQLAlchemy's pool (and its overflow) for most operations, and the
    # asyncpg pool of the send/acknowledge path. PostgreSQL's max_connections must cover every
    # process's sum (see docs/operations.md), or PgBouncer must sit in between.
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_max_overflow: int = Field(default=20, ge=0, le=1000)
    delivery_pool_size: int = Field(default=10, ge=1, le=1000)
    # PARLEY_REDIS_URL names one node of a Redis Cluster (sharded pub/sub, hash-tagged keys).
    redis_cluster: bool = False

    # Limits from the contract (these are its defaults).
    max_group_members: int = Field(default=100, ge=2, le=10_000)
    max_body_length: int = Field(default=4000, ge=1, le=1_000_000)
    max_attachments: int = Field(default=10, ge=0, le=100)
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_query_depth: int = Field(default=10, ge=2, le=100)
    max_presence_watch: int = Field(default=100, ge=1, le=10_000)
    max_aliases: int = Field(default=30, ge=1)
    max_tokens: int = Field(default=2000, ge=100)
    max_subscriptions_per_connection: int = Field(default=20, ge=1)
    # HTTP request bodies and WebSocket messages, in bytes.
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A request body (or an upload to the built-in storage) still arriving after this many
    # seconds is cut off with 408: a client trickling bytes cannot hold a connection for ever.
    request_body_timeout_seconds: float = Field(default=30.0, gt=0)
    upload_body_timeout_seconds: float = Field(default=900.0, gt=0)
    # Messages one user may send per minute (across all devices).
    send_rate_per_minute: int = Field(default=300, ge=1)
    # Message lifecycle (issue 13): how long a sender may edit, and delete for everyone, a message.
    edit_window_seconds: float = Field(default=900, ge=0)
    delete_window_seconds: float = Field(default=86400, ge=0)
    # Distinct emoji one user may react with to one message.
    max_reactions_per_user_per_message: int = Field(default=5, ge=1, le=50)

    # Brute-force protection: failed logins per username within the window (the window ends,
    # so a stranger cannot lock a user out for good).
    login_max_failures: int = Field(default=10, ge=1)
    login_failure_window_seconds: int = Field(default=300, ge=1)
    # login/register attempts per client address within the same window.
    auth_attempts_per_address: int = Field(default=30, ge=1)
    # Password hashes (argon2, 64 MiB each) running at once in this process; more get RATE_LIMITED.
    max_concurrent_password_hashes: int = Field(default=4, ge=1)
    # Addresses of reverse proxies whose X-Forwarded-For is believed (comma-separated IPs or
    # CIDR networks). Empty: the client address is the socket's peer.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Fan-out abuse: per user and hour, conversations started or created, members added, renames.
    conversations_per_hour: int = Field(default=60, ge=1)
    member_additions_per_hour: int = Field(default=500, ge=1)
    renames_per_hour: int = Field(default=30, ge=1)
    # A typing indicator is passed on at most once per (user, conversation) per this many seconds.
    typing_interval_seconds: float = Field(default=2.0, ge=0)

    # Query cost per operation: fields weighted by the sizes of the lists they sit in, at the
    # sizes the request asks for. The client kit's operations at the largest pages the server
    # allows (a pendingEvents page of 500 events costs about 160,000) pass.
    max_query_cost: int = Field(default=250_000, ge=100)
    # Sockets that do not send connection_init within this many seconds are closed (4408).
    connection_init_timeout_seconds: float = Field(default=10.0, gt=0)

    # Devices unused this long are expired with their pending events (contract point 8).
    device_inactivity_days: float = Field(default=30, gt=0)
    sweep_interval_seconds: float = Field(default=3600, gt=0)

    # Presence registry: each process refreshes its liveness key every third of this TTL; a
    # process that stops (killed, hung) has its users shown offline within about 4/3 of it.
    presence_node_ttl_seconds: float = Field(default=30, ge=1, le=3600)

    # File sharing (README "File sharing"). With a bucket, files go to S3 (any mode); the
    # internal endpoint is what the server talks to, the public one what URLs are signed for
    # (PITFALLS.md: a presigned URL is bound to its host). Keys: the AWS default chain when unset.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    # Without a bucket: files under this folder, uploaded to and served by the app itself, at
    # URLs under `public_url` (default: the scheme and host the request came to).
    files_dir: str = "./parley-files"
    public_url: str | None = None
    # Lifetimes of an upload ticket and of a download URL.
    upload_ticket_seconds: int = Field(default=600, ge=1, le=7 * 86400)
    download_url_seconds: int = Field(default=300, ge=1, le=7 * 86400)
    # Content types an upload may declare (comma-separated).
    allowed_content_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "image/avif",
            "video/mp4", "video/quicktime", "video/webm",
            "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/webm", "audio/wav",
            "application/pdf", "text/plain", "application/zip",
        ]
    )  # fmt: skip
    # Files of a delivered (deleted) message are kept this long, so recipients can still download
    # them; an upload never attached to a message is deleted after `unattached_upload_hours`.
    file_retention_days: float = Field(default=30, ge=0)
    unattached_upload_hours: float = Field(default=24, ge=0)
    # Thumbnails of image attachments: the longest side, and decompression-bomb limits (a JPEG,
    # decoded at a reduced scale, may have 4 times the pixels), and how many one worker process
    # makes at once (each may take hundreds of MiB while decoding).
    thumbnail_size: int = Field(default=320, ge=16, le=2048)
    thumbnail_max_pixels: int = Field(default=16_000_000, ge=1000)
    thumbnail_max_source_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    thumbnail_concurrency: int = Field(default=1, ge=1, le=64)
    # Upload tickets one user may ask for per hour, and the bytes they may declare in all.
    uploads_per_hour: int = Field(default=500, ge=1)
    upload_bytes_per_hour: int = Field(default=1024 * 1024 * 1024, ge=1)
    # JPEG, PNG and WebP attachments lose their EXIF and XMP metadata (GPS position, camera,
    # times) when attached, all but the orientation, unless this keeps it. They are read whole
    # for it, so while it is off they are at most `max_image_bytes`.
    keep_image_metadata: bool = False
    max_image_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    # The thumbnail worker looks for work this often when no notice woke it.
    thumbnail_poll_seconds: float = Field(default=10.0, gt=0)

    # Push notifications (README "Push notifications"). WebPush: the VAPID key pair from
    # `parley vapid-keys` (private key, base64url) and a contact URI the push services may use.
    push_vapid_private_key: str | None = None
    push_vapid_subject: str = "mailto:admin@localhost.localdomain"
    # Plain http and private/loopback WebPush endpoints (SSRF); None: allowed only with
    # PARLEY_ENV=development.
    push_allow_private_endpoints: bool | None = None
    # The message body in the payload (push services and OS vendors then see it): off by default.
    push_include_body: bool = False
    # How long a push service keeps an undelivered notification, and its urgency (RFC 8030).
    push_ttl_seconds: int = Field(default=86400, ge=0)
    push_urgency: Literal["very-low", "low", "normal", "high"] = "high"
    # Messages to one recipient in one conversation within this window become one notification.
    push_coalesce_seconds: float = Field(default=2.0, ge=0)
    # Attempts per job before it goes to the dead-letter stream; backoff doubles from the base.
    push_max_attempts: int = Field(default=5, ge=1)
    push_retry_base_seconds: float = Field(default=1.0, gt=0)
    push_retry_max_seconds: float = Field(default=300.0, gt=0)
    # The longest Retry-After honoured, and only from the big push services (APNs, FCM, and the
    # WebPush hosts of Google, Mozilla, Apple and Microsoft): any other endpoint gets the backoff.
    push_retry_after_max_seconds: float = Field(default=60.0, gt=0)
    # A job a worker has held unacknowledged this long (the worker died) is taken over by another.
    push_claim_idle_seconds: float = Field(default=60.0, gt=0)
    # On SIGTERM a worker gives in-flight jobs this long, then leaves them to the other workers.
    push_shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    push_stream_max_length: int = Field(default=100_000, ge=1000)
    # Jobs one worker holds at once (most wait out the coalescing window: cheap tasks), and the
    # timeout of one request to a push service.
    push_worker_concurrency: int = Field(default=500, ge=1)
    push_request_timeout_seconds: float = Field(default=10.0, gt=0)
    # registerPush calls one user may make per hour (each resolves a client-chosen host name).
    push_registrations_per_hour: int = Field(default=60, ge=1)
    # APNs: token auth (the .p8 key's PEM text, its key id, the team id), the app's bundle id,
    # and the endpoint (the sandbox, https://api.sandbox.push.apple.com, for development builds).
    push_apns_key: str | None = None
    push_apns_key_id: str | None = None
    push_apns_team_id: str | None = None
    push_apns_topic: str | None = None
    push_apns_endpoint: str = "https://api.push.apple.com"
    # FCM HTTP v1: the service account's JSON key (its text), and the endpoints (tests point them
    # at local servers; the project id comes from the key).
    push_fcm_service_account: str | None = None
    push_fcm_endpoint: str = "https://fcm.googleapis.com"
    push_fcm_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a password

    @field_validator("allowed_origins", "trusted_proxies", "allowed_content_types", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env == "production" and (self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32):
            raise ValueError(
                "PARLEY_SECRET_KEY must be set to a random value of at least 32 characters "
                "in production (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        return self

    @property
    def uses_development_secret(self) -> bool:
        """True with the published default secret: anyone can forge message ids with it."""
        return self.secret_key == DEFAULT_SECRET_KEY

    @property
    def env_chosen(self) -> bool:
        """Whether PARLEY_ENV (or `env=`) was given."""
        return self.env is not None

    @property
    def is_production(self) -> bool:
        """True when running with `PARLEY_ENV=production`."""
        return self.env == "production"

    @property
    def is_development(self) -> bool:
        """True only with an explicit `PARLEY_ENV=development`: what turns on the development defaults."""
        return self.env == "development"

    @property
    def graphiql_enabled(self) -> bool:
        """GraphiQL is served in development unless turned off; elsewhere only when turned on."""
        return self.graphiql if self.graphiql is not None else self.is_development

    @property
    def web_chat_enabled(self) -> bool:
        """The example web chat is served in development unless turned off; elsewhere only when turned on."""
        return self.web_chat if self.web_chat is not None else self.is_development

    @property
    def introspection_enabled(self) -> bool:
        """Introspection follows GraphiQL unless set on its own."""
        return self.introspection if self.introspection is not None else self.graphiql_enabled

    @property
    def push_private_endpoints_allowed(self) -> bool:
        """Whether WebPush endpoints may be plain http or private addresses (in development by default)."""
        if self.push_allow_private_endpoints is not None:
            return self.push_allow_private_endpoints
        return self.is_development

    @property
    def is_sqlite(self) -> bool:
        """The embedded mode's database."""
        return self.database_url.startswith("sqlite")
