"""Every setting Parley reads, from `PARLEY_*` environment variables, read once."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")

DEFAULT_SECRET_KEY = "parley-development-secret-change-me"  # noqa: S105 - the known default we refuse in production


class Settings(BaseSettings):
    """Configuration of one Parley process; tests build it explicitly instead of touching the environment."""

    # Each field's docstring (the string literal under it) is its meaning for an operator:
    # infra/settings_reference.py renders them into docs/settings.md. Comments are for developers.
    model_config = SettingsConfigDict(env_prefix="PARLEY_", frozen=True, extra="forbid", use_attribute_docstrings=True)

    # Unset means the safe value: a deployment that forgot the variable gets production's
    # behaviour, and only `scripts/serve` (the quick start) sets `development` for you.
    env: Literal["development", "production"] | None = None
    """`development` turns on what only a developer's machine should have (GraphiQL, introspection, the web chat,
    private push endpoints); `production` also refuses the development secret. unset: each of those is off as in
    production, and `parley serve` refuses a non-loopback `--host` with the development secret."""
    database_url: str = "sqlite+aiosqlite:///./parley.db"
    """The database: SQLite (the embedded mode), or `postgresql+asyncpg://…` for production. A primary with standbys:
    name every server, `postgresql+asyncpg://user:password@/parley?host=db1:5432&host=db2:5432` (or
    `…@db1:5432,db2:5432/parley`); each connection goes to the one that takes writes (`target_session_attrs=read-write`
    unless the URL says otherwise), so a promoted standby is followed without a restart."""
    redis_url: str | None = None
    """Redis, through which several processes share the bus, presence, rate limits and job queues. unset: all of those
    in process, for one process only."""
    redis_prefix: str = "parley:"
    """Prefix of every Redis key and pub/sub channel, so deployments (and test runs) can share a Redis."""
    secret_key: str = DEFAULT_SECRET_KEY
    """Signs message ids and the built-in storage's upload and download tokens. The default is public: production
    refuses it and needs a random value of at least 32 characters."""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated browser origins allowed to open WebSockets (`https://app.example,https://x.example`); clients
    without `Origin`, such as mobile apps, always may."""
    graphiql: bool | None = None
    """GraphiQL on or off. unset: on with `PARLEY_ENV=development` only."""
    introspection: bool | None = None
    """Schema introspection on or off. unset: as GraphiQL."""
    web_chat: bool | None = None
    """The example web chat at `/` on or off. unset: on with `PARLEY_ENV=development` only."""
    persisted_queries: Literal["off", "auto", "allowlist"] = "auto"
    """Apollo automatic persisted queries: `auto` stores hashes on first use (in Redis, or in process); `allowlist`
    accepts only the operations of `frontend_schema/operations` (and their hashes); `off` ignores the extension."""
    # Anyone may register texts, so this bounds the store.
    persisted_query_max_entries: int = Field(default=2000, ge=1)
    """Persisted query texts kept (in Redis, shared; or in process), each at most 32 KiB, the least recently used
    evicted first."""
    max_batch_operations: int = Field(default=10, ge=1, le=100)
    """Operations per HTTP batch (a JSON array of requests); each counts against the usual limits."""
    log_level: str = "INFO"
    """Log level, as Python's logging names them (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`)."""
    log_format: Literal["text", "json"] = "text"
    """`text`: one readable line per event. `json`: one JSON object per line, one line per operation (id, type, name,
    root field, user, device, duration, outcome); never tokens, passwords, variables or message bodies."""

    # Operations (docs/operations.md, "Restarts and processes").
    shutdown_drain_seconds: float = Field(default=0, ge=0, le=300)
    """On SIGTERM, how long `/readyz` first answers 503 so load balancers stop sending, before WebSockets close with
    1012."""
    shutdown_grace_seconds: float = Field(default=10, ge=0, le=600)
    """On SIGTERM, after the drain, how long operations in flight get to finish."""
    # Never on the API's port: the endpoint has no authentication.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of Prometheus `/metrics`, a port of its own. unset: no metrics."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics port listens on; `0.0.0.0` only on a network Prometheus alone can reach (no
    authentication)."""
    # The operators' API (docs/operations.md, "Admin API and `parley admin`"): a port of its own,
    # never routed by the public app. Off unless both the port and the token are set.
    admin_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the admin API (suspend, delete, reports, freeze, webhooks; `parley admin` calls it). unset: no admin
    API."""
    admin_host: str = "127.0.0.1"
    """Address the admin port listens on; keep it on a network only operators reach."""
    admin_token: str | None = None
    """The operators' bearer token for the admin API (at least 32 characters outside `PARLEY_ENV=development`, e.g.
    `python -c 'import secrets; print(secrets.token_urlsafe(32))'`). unset: no admin API."""
    otlp_endpoint: str | None = None
    """OpenTelemetry: spans are exported over OTLP/HTTP to this collector (e.g. `http://collector:4318`). unset: no
    tracing, at no cost."""
    otel_service_name: str = "parley"
    """The `service.name` of the exported spans."""
    # A stopped database fails at connect; the pool wait is for bursts (a 100-member group
    # reconnecting at once queues for a while) and for a database that hangs.
    database_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """How long an operation waits for a free connection in a full pool before answering `UNAVAILABLE`."""
    database_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """How long an operation waits for a new database connection to open before answering `UNAVAILABLE`."""
    # PostgreSQL's max_connections must cover every process's sum of the three pools below
    # (see docs/operations.md), or PgBouncer must sit in between.
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    """Database connections per process kept in SQLAlchemy's pool (most operations)."""
    database_max_overflow: int = Field(default=20, ge=0, le=1000)
    """Further connections SQLAlchemy's pool may open per process under load."""
    delivery_pool_size: int = Field(default=10, ge=1, le=1000)
    """Database connections per process of the send/acknowledge path (an asyncpg pool of its own)."""
    redis_cluster: bool = False
    """`PARLEY_REDIS_URL` names one node of a Redis Cluster (sharded pub/sub, hash-tagged keys)."""
    # Sentinel (docs/operations.md, "Redis with Sentinel"): every Redis client is built in infra/redis_clients.py.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated `host:port` of the Redis Sentinels (`10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379`), asked where
    the master `PARLEY_REDIS_SENTINEL_MASTER` is; after a failover every process follows the new master. Then
    `PARLEY_REDIS_URL` gives only the password, database number and `rediss` (TLS), not the host (unset:
    `redis://<master name>/0`). unset: no Sentinel."""
    redis_sentinel_master: str = "mymaster"
    """The master's name in the Sentinels' configuration (`sentinel monitor <name> …`)."""
    redis_sentinel_password: str | None = None
    """Password of the Sentinels themselves (their `requirepass`), if they have one; the master's goes in
    `PARLEY_REDIS_URL`."""

    # Limits on what one request, message or user may do.
    max_group_members: int = Field(default=100, ge=2, le=10_000)
    """Members per group, owner included."""
    max_body_length: int = Field(default=4000, ge=1, le=1_000_000)
    """Characters per message."""
    max_attachments: int = Field(default=10, ge=0, le=100)
    """Attachments per message."""
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    """Size of one uploaded file, in bytes."""
    max_query_depth: int = Field(default=10, ge=2, le=100)
    """Query depth (root fields are depth 0)."""
    max_presence_watch: int = Field(default=100, ge=1, le=10_000)
    """Users one presence subscription may watch."""
    max_aliases: int = Field(default=30, ge=1)
    """Aliases per document."""
    max_tokens: int = Field(default=2000, ge=100)
    """Tokens per document."""
    max_subscriptions_per_connection: int = Field(default=20, ge=1)
    """Operations open at once on one WebSocket."""
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Size of an HTTP request body and of a WebSocket message, in bytes."""
    # A client trickling bytes must not hold a connection for ever.
    request_body_timeout_seconds: float = Field(default=30.0, gt=0)
    """A request body still arriving after this many seconds is cut off with 408."""
    upload_body_timeout_seconds: float = Field(default=900.0, gt=0)
    """An upload to the built-in storage still arriving after this many seconds is cut off with 408."""
    send_rate_per_minute: int = Field(default=300, ge=1)
    """Messages one user may send per minute, all devices together (edits, deletes and reactions count too)."""
    edit_window_seconds: float = Field(default=900, ge=0)
    """How long after sending its sender may `editMessage`."""
    delete_window_seconds: float = Field(default=86400, ge=0)
    """How long after sending its sender may `deleteMessage` for everyone (group owners and admins: always)."""
    max_reactions_per_user_per_message: int = Field(default=5, ge=1, le=50)
    """Distinct emoji one user may react with to one message."""
    disappearing_min_seconds: int = Field(default=30, ge=1)
    """Shortest disappearing-message timer `setDisappearingTimer` accepts, in seconds."""
    disappearing_max_seconds: int = Field(default=90 * 86400, ge=1)
    """Longest disappearing-message timer `setDisappearingTimer` accepts, in seconds."""
    max_report_excerpt_length: int = Field(default=4000, ge=1, le=100_000)
    """Characters of the reported text a `reportMessage` excerpt (or a `reportUser`'s details) may carry."""
    max_ciphertext_length: int = Field(default=65536, ge=64, le=1_000_000)
    """Characters (base64) of one message's `ciphertext` in an end-to-end encrypted conversation, as sent or edited."""
    max_to_device_payload_bytes: int = Field(default=65536, ge=256, le=1_000_000)
    """Bytes (UTF-8) of one `sendToDevice` message's opaque payload."""
    to_device_per_minute: int = Field(default=1000, ge=1)
    """To-device messages one user may send per minute, all devices together (each message of a call counts)."""

    # Brute-force protection. The window ends, so a stranger cannot lock a user out for good.
    login_max_failures: int = Field(default=10, ge=1)
    """Failed logins (and wrong old passwords) per username within the window before `RATE_LIMITED`."""
    login_failure_window_seconds: int = Field(default=300, ge=1)
    """The window of the login failure and per-address attempt counts."""
    auth_attempts_per_address: int = Field(default=30, ge=1)
    """`login`/`register` attempts per client address within that window (IPv6 per /64)."""
    # Each hash takes 64 MiB (argon2).
    max_concurrent_password_hashes: int = Field(default=4, ge=1)
    """Password hashes running at once per process; beyond that, after a short wait, `RATE_LIMITED`."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated IPs or CIDR networks of reverse proxies whose `X-Forwarded-For`/`-Proto` are believed. Empty: the
    client address is the socket's peer."""

    # Fan-out abuse: per user and hour.
    conversations_per_hour: int = Field(default=60, ge=1)
    """Conversations one user may start or create per hour (an existing direct conversation does not count)."""
    member_additions_per_hour: int = Field(default=500, ge=1)
    """Users one user may add to groups per hour."""
    renames_per_hour: int = Field(default=30, ge=1)
    """Group renames one user may make per hour."""
    typing_interval_seconds: float = Field(default=2.0, ge=0)
    """A repeated `setTyping(true)` is passed on at most once per (user, conversation) per this many seconds."""
    disappearing_timer_changes_per_hour: int = Field(default=30, ge=1)
    """Disappearing-message timer changes (`setDisappearingTimer`) one user may make per hour."""
    conversation_settings_per_hour: int = Field(default=600, ge=1)
    """Changes of one's own view of conversations (mute, archive, pin) and of notification preferences, per user and
    hour."""
    max_pinned_conversations: int = Field(default=5, ge=1, le=100)
    """Conversations one user may have pinned at once (`pinConversation` beyond that is `BAD_USER_INPUT`)."""

    # Invite links (createInvite, joinByInvite). A code has 192 random bits, so guessing is hopeless
    # anyway; the failure limits keep guessing traffic off the database.
    invite_max_uses: int = Field(default=1000, ge=1, le=1_000_000)
    """The largest `maxUses` an invite link may be given (null: no count of its own, the group's size still holds)."""
    invite_max_lifetime_seconds: int = Field(default=30 * 86400, ge=60, le=366 * 86400)
    """The longest an invite link may live; one created without `expiresIn` lives this long."""
    invite_max_live_per_group: int = Field(default=20, ge=1, le=1000)
    """Invite links one group may have usable at once (not expired, revoked or used up); beyond that `CONFLICT`."""
    invites_per_hour: int = Field(default=30, ge=1)
    """Invite links one user may create per hour."""
    invite_joins_per_hour: int = Field(default=60, ge=1)
    """Groups one user may join by invite link per hour."""
    invite_failures_per_user: int = Field(default=10, ge=1)
    """`joinByInvite` attempts whose code names no usable link, per user within the window, before `RATE_LIMITED`."""
    invite_failures_per_address: int = Field(default=100, ge=1)
    """The same per client address (IPv6 per /64): more than per user, as many users may share an address (NAT)."""
    invite_failure_window_seconds: int = Field(default=900, ge=1)
    """The window of those two counts."""

    # Group moderation (banMember, muteMember, updateConversationSettings; docs/security.md).
    moderation_max_seconds: int = Field(default=366 * 86400, ge=60)
    """The furthest ahead a ban's or a mute's `until` may be; null `until` lasts until lifted."""
    slow_mode_max_seconds: int = Field(default=21600, ge=1, le=86400)
    """The longest slow mode (`slowModeSeconds`: one message per member per this many seconds) a group may have."""
    moderation_actions_per_hour: int = Field(default=300, ge=1)
    """Bans, unbans, mutes, unmutes and conversation settings changes one user may make per hour."""
    data_exports_per_hour: int = Field(default=3, ge=1, le=100)
    """`exportMyData` calls one user may make per hour (each reads every row the server holds about them)."""
    reports_per_hour: int = Field(default=20, ge=1, le=10_000)
    """Reports (`reportMessage`, `reportUser`) one user may file per hour; a repeated report does not count."""

    # The key directory of end-to-end encryption (uploadDeviceKeys, claimOneTimeKeys; docs/security.md).
    max_one_time_keys: int = Field(default=100, ge=1, le=10_000)
    """One-time keys a device may hold on the server at once (`uploadDeviceKeys` beyond that is `BAD_USER_INPUT`)."""
    max_one_time_keys_per_upload: int = Field(default=50, ge=1, le=1000)
    """One-time keys one `uploadDeviceKeys` call may carry."""
    one_time_keys_low: int = Field(default=10, ge=0, le=10_000)
    """A claim that leaves a device fewer one-time keys than this sends it a `OneTimeKeysLowEvent` (once per upload)."""
    key_uploads_per_hour: int = Field(default=60, ge=1)
    """`uploadDeviceKeys` calls one device may make per hour."""
    key_claims_per_hour: int = Field(default=1000, ge=1)
    """Devices whose keys one user may claim per hour (`claimOneTimeKeys` counts each device asked for)."""
    key_claims_per_device_per_hour: int = Field(default=200, ge=1)
    """One-time keys of one device handed out per hour, whoever claims them; past it claimers get its fallback key,
    so draining a device's pool is bounded."""

    # The client kit's operations at the largest pages the server allows (a pendingEvents page
    # of 500 events costs about 160,000) pass (tests/test_frontend_kit.py checks).
    max_query_cost: int = Field(default=250_000, ge=100)
    """Cost per operation: each field weighted by the sizes of the lists it sits in, at the sizes the request asks
    for."""
    connection_init_timeout_seconds: float = Field(default=10.0, gt=0)
    """A WebSocket that does not send `connection_init` within this many seconds is closed (4408)."""

    device_inactivity_days: float = Field(default=30, gt=0)
    """Devices unused this long expire with their pending events."""
    sweep_interval_seconds: float = Field(default=3600, gt=0)
    """How often each process runs that clean-up (and the deletion of expired files)."""
    expiry_sweep_interval_seconds: float = Field(default=30, gt=0)
    """How often each process removes expired disappearing messages with their files (they are never delivered after
    expiry in any case; this bounds how long the server still holds them)."""

    presence_node_ttl_seconds: float = Field(default=30, ge=1, le=3600)
    """Liveness of a process in the presence registry: refreshed every third of it; a process that stops (killed, hung)
    has its users shown offline within about 4/3 of it."""

    # File sharing (docs/operations.md, "File sharing"). A presigned URL is bound to the host it
    # was signed for, hence the separate public endpoint.
    s3_bucket: str | None = None
    """Set: files go to this S3 bucket (any mode). unset: to `PARLEY_FILES_DIR`, served by the app."""
    s3_endpoint_url: str | None = None
    """The S3 endpoint the server talks to (path-style addressing when set). unset: AWS."""
    s3_public_endpoint_url: str | None = None
    """The S3 endpoint download and upload URLs are signed for (the host clients reach). unset: as
    `PARLEY_S3_ENDPOINT_URL`."""
    s3_region: str = "us-east-1"
    """The bucket's region."""
    s3_access_key_id: str | None = None
    """S3 access key id. unset: the AWS default credential chain."""
    s3_secret_access_key: str | None = None
    """S3 secret access key. unset: the AWS default credential chain."""
    files_dir: str = "./parley-files"
    """Without a bucket: the folder of the built-in storage, whose uploads and downloads the app serves itself."""
    public_url: str | None = None
    """Scheme and host of the built-in storage's URLs. unset: those the request came to."""
    upload_ticket_seconds: int = Field(default=600, ge=1, le=7 * 86400)
    """Lifetime of an upload ticket."""
    download_url_seconds: int = Field(default=300, ge=1, le=7 * 86400)
    """Lifetime of a download URL."""
    allowed_content_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "image/heif", "image/avif",
            "video/mp4", "video/quicktime", "video/webm",
            "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/webm", "audio/wav",
            "application/pdf", "text/plain", "application/zip",
        ]
    )  # fmt: skip
    """Comma-separated content types an upload may declare."""
    file_retention_days: float = Field(default=30, ge=0)
    """Files of a delivered (deleted) message are kept this long, so recipients can still download them."""
    unattached_upload_hours: float = Field(default=24, ge=0)
    """An upload never attached to a message is deleted after this long."""
    # A JPEG, decoded at a reduced scale, may have 4 times the pixels; each thumbnail may take
    # hundreds of MiB while decoding, hence one at a time per worker by default.
    thumbnail_size: int = Field(default=320, ge=16, le=2048)
    """Longest side of an image attachment's preview, in pixels."""
    thumbnail_max_pixels: int = Field(default=16_000_000, ge=1000)
    """Images with more pixels get no preview (decompression-bomb limit)."""
    thumbnail_max_source_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    """Images larger than this, in bytes, get no preview."""
    thumbnail_concurrency: int = Field(default=1, ge=1, le=64)
    """Previews one worker process makes at once."""
    uploads_per_hour: int = Field(default=500, ge=1)
    """Upload tickets one user may ask for per hour."""
    upload_bytes_per_hour: int = Field(default=1024 * 1024 * 1024, ge=1)
    """Bytes one user's upload tickets may declare per hour, in all."""
    keep_image_metadata: bool = False
    """Keep the EXIF and XMP metadata (GPS position, camera, times) of JPEG, PNG and WebP attachments; off, all but the
    orientation is removed when they are attached."""
    # Cleaning reads an image whole, hence the limit.
    max_image_bytes: int = Field(default=30 * 1024 * 1024, ge=1024)
    """Size of a JPEG, PNG or WebP attachment, in bytes, while `PARLEY_KEEP_IMAGE_METADATA` is off."""
    thumbnail_poll_seconds: float = Field(default=10.0, gt=0)
    """How often a thumbnail worker looks for work when no notice woke it."""

    # Push notifications (docs/operations.md, "Push notifications").
    push_vapid_private_key: str | None = None
    """WebPush: the VAPID private key (base64url) from `parley vapid-keys`. unset: no WebPush."""
    push_vapid_subject: str = "mailto:admin@localhost.localdomain"
    """WebPush: a contact URI (`mailto:` or `https:`) the push services may use."""
    # Private and loopback endpoints would let clients make the worker reach internal hosts (SSRF).
    push_allow_private_endpoints: bool | None = None
    """Allow plain `http` and private/loopback WebPush endpoints. unset: allowed with `PARLEY_ENV=development` only."""
    push_include_body: bool = False
    """Put the message body in the notification's payload (push services and OS vendors then see it)."""
    push_ttl_seconds: int = Field(default=86400, ge=0)
    """How long a push service keeps an undelivered notification."""
    push_urgency: Literal["very-low", "low", "normal", "high"] = "high"
    """The WebPush urgency of notifications (RFC 8030)."""
    push_coalesce_seconds: float = Field(default=2.0, ge=0)
    """Messages to one recipient in one conversation within this window become one notification."""
    push_max_attempts: int = Field(default=5, ge=1)
    """Attempts (and hand-outs of a job) before it goes to the dead-letter stream."""
    push_retry_base_seconds: float = Field(default=1.0, gt=0)
    """The first retry's delay; it doubles with each attempt (with jitter)."""
    push_retry_max_seconds: float = Field(default=300.0, gt=0)
    """The longest delay between retries."""
    push_retry_after_max_seconds: float = Field(default=60.0, gt=0)
    """The longest `Retry-After` honoured, and only from APNs, FCM and the WebPush hosts of Google, Mozilla, Apple and
    Microsoft; any other endpoint gets the backoff."""
    push_claim_idle_seconds: float = Field(default=60.0, gt=0)
    """A job a worker has held unacknowledged this long (the worker died) is taken over by another."""
    push_shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    """On SIGTERM, how long a worker lets in-flight jobs finish before leaving them to the other workers."""
    push_stream_max_length: int = Field(default=100_000, ge=1000)
    """Approximate cap of the job stream (`XADD MAXLEN ~`; a few hundred bytes per job)."""
    # Most jobs wait out the coalescing window: cheap tasks, hence the high default.
    push_worker_concurrency: int = Field(default=500, ge=1)
    """Jobs one worker holds at once."""
    push_request_timeout_seconds: float = Field(default=10.0, gt=0)
    """Timeout of one request to a push service."""
    # Each registration resolves a client-chosen host name.
    push_registrations_per_hour: int = Field(default=60, ge=1)
    """`registerPush` calls one user may make per hour."""
    push_apns_key: str | None = None
    """APNs token auth: the `.p8` key's PEM text. unset: no APNs."""
    push_apns_key_id: str | None = None
    """APNs: the key's id."""
    push_apns_team_id: str | None = None
    """APNs: the team id."""
    push_apns_topic: str | None = None
    """APNs: the app's bundle id."""
    push_apns_endpoint: str = "https://api.push.apple.com"
    """APNs endpoint; the sandbox, `https://api.sandbox.push.apple.com`, for development builds."""
    push_fcm_service_account: str | None = None
    """FCM HTTP v1: the service account's JSON key (its text; the project id is read from it). unset: no FCM."""
    # Tests point the FCM endpoints at local servers.
    push_fcm_endpoint: str = "https://fcm.googleapis.com"
    """FCM endpoint."""
    push_fcm_token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a password
    """FCM's OAuth token endpoint."""

    # Outgoing webhooks (docs/operations.md, "Webhooks"). Endpoints also live in the `webhook_endpoints` table.
    webhooks: str | None = None
    """Webhook endpoints as a JSON list of `{"url": …, "secret": "whsec_…", "events": ["message.sent", …]}` (events
    `["*"]` or left out: all), beside those of the admin API. unset: only the admin API's."""
    webhook_include_body: bool = False
    """Put message bodies in `message.sent` and `message.edited` webhook payloads (the receivers then see them)."""
    # An operator's endpoint on an internal host would let a stolen admin token probe the network (SSRF).
    webhook_allow_private_endpoints: bool | None = None
    """Allow plain `http` and private/loopback webhook endpoints. unset: allowed with `PARLEY_ENV=development` only."""
    webhook_max_attempts: int = Field(default=15, ge=1, le=100)
    """Delivery attempts of one event to one endpoint before it goes to the dead-letter stream."""
    webhook_retry_base_seconds: float = Field(default=2.0, gt=0)
    """The first retry's delay; it doubles with each attempt (with jitter)."""
    webhook_retry_max_seconds: float = Field(default=600.0, gt=0)
    """The longest delay between retries."""
    webhook_retry_after_max_seconds: float = Field(default=300.0, gt=0)
    """The longest `Retry-After` of a receiver that is honoured; a longer one waits this long."""
    webhook_request_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """Timeout of one delivery (connecting, sending and reading at most 16 KiB of the answer)."""
    webhook_endpoint_concurrency: int = Field(default=4, ge=1, le=100)
    """Deliveries one worker has in flight to one endpoint; a slow endpoint holds only these."""
    webhook_claim_idle_seconds: float = Field(default=60.0, gt=0)
    """A delivery a worker has held unacknowledged this long (the worker died) is taken over by another."""
    webhook_stream_max_length: int = Field(default=100_000, ge=1000)
    """Approximate cap of each endpoint's job stream (`XADD MAXLEN ~`)."""
    webhook_refresh_seconds: float = Field(default=30.0, gt=0)
    """How often each process re-reads the endpoints table (changes through the admin API apply at once where made)."""

    # The before-send hook (docs/operations.md, "Before-send hook"): synchronous moderation of each send.
    hook_before_send_url: str | None = None
    """The operator's hook every new message is POSTed to (signed) before it is stored; it answers allow, reject or
    replace. unset: no hook, at no cost to sends."""
    hook_secret: str | None = None
    """The Standard Webhooks secret (`whsec_` + base64) the hook's requests are signed with; needed with a hook."""
    hook_before_send_timeout_ms: int = Field(default=300, ge=10, le=10_000)
    """How long a send waits for the hook's answer (connecting included), in milliseconds."""
    # Closed by default: the hook is there to keep messages out, and UNAVAILABLE makes clients
    # retry with the same clientId, so a hook outage delays messages instead of passing them unchecked.
    hook_before_send_fail_open: bool = False
    """When the hook gives no usable answer (timeout, error, non-2xx, malformed): `true` stores the message unchanged;
    `false` refuses the send with `UNAVAILABLE` (clients retry)."""
    # Operators often run the hook beside Parley on a private network: allowing that is their explicit choice.
    hook_before_send_allow_private: bool | None = None
    """Allow a plain `http` hook URL on a private/loopback address. unset: allowed with `PARLEY_ENV=development`
    only."""

    @field_validator("allowed_origins", "trusted_proxies", "allowed_content_types", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            value = [entry.strip() for entry in value.split(",") if entry.strip()]
        if isinstance(value, list):
            for entry in value:
                host, _, port = str(entry).rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(f"{entry!r} is not host:port")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sentinel_url(cls, data: Any) -> Any:
        # With Sentinels, PARLEY_REDIS_URL only carries credentials and the database: the mode still keys off it.
        if isinstance(data, dict) and data.get("redis_sentinels") and not data.get("redis_url"):
            return {**data, "redis_url": f"redis://{data.get('redis_sentinel_master') or 'mymaster'}/0"}
        return data

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
        if self.redis_sentinels and self.redis_cluster:
            raise ValueError("PARLEY_REDIS_SENTINELS and PARLEY_REDIS_CLUSTER exclude each other")
        if self.redis_sentinels and not self.redis_sentinel_master.strip():
            raise ValueError("PARLEY_REDIS_SENTINEL_MASTER must name the master the Sentinels monitor")
        if self.env == "production" and (self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32):
            raise ValueError(
                "PARLEY_SECRET_KEY must be set to a random value of at least 32 characters "
                "in production (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
            )
        if self.admin_token is not None and not self.is_development and len(self.admin_token.strip()) < 32:
            raise ValueError(
                "PARLEY_ADMIN_TOKEN must be a random value of at least 32 characters outside development "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
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
    def webhook_private_endpoints_allowed(self) -> bool:
        """Whether webhook endpoints may be plain http or private addresses (in development by default)."""
        if self.webhook_allow_private_endpoints is not None:
            return self.webhook_allow_private_endpoints
        return self.is_development

    @property
    def push_private_endpoints_allowed(self) -> bool:
        """Whether WebPush endpoints may be plain http or private addresses (in development by default)."""
        if self.push_allow_private_endpoints is not None:
            return self.push_allow_private_endpoints
        return self.is_development

    @property
    def hook_before_send_private_allowed(self) -> bool:
        """Whether the before-send hook may be plain http on a private address (in development by default)."""
        if self.hook_before_send_allow_private is not None:
            return self.hook_before_send_allow_private
        return self.is_development

    @property
    def is_sqlite(self) -> bool:
        """The embedded mode's database."""
        return self.database_url.startswith("sqlite")


def settings_record(record: type[R], settings: Settings, *, prefix: str = "", **derived: Any) -> R:
    """A config record (a dataclass) whose fields are the settings of the same names, so defaults live here only.

    A field `x` reads the setting `prefix + x`; `derived` gives the fields computed from settings
    (another unit, type or name); a field that is neither keeps the record's own default.
    """
    names = type(settings).model_fields
    values = {
        field.name: derived[field.name] if field.name in derived else getattr(settings, prefix + field.name)
        for field in dataclasses.fields(record)
        if field.name in derived or prefix + field.name in names
    }
    return record(**values)
