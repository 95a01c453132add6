"""The composition root: `create_app(settings)` wires every adapter and serves the API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from graph.persisted_queries import Allowlist, PersistedQueries
from graph.schema import build_schema
from graph.view import ParleyGraphQL
from infra.admin_api import admin_exposed
from infra.before_send_hook import before_send_hook
from infra.body_limit import BodyLimit
from infra.bus import BroadcastBus
from infra.db import Database, create_engine
from infra.fanout import Fanout
from infra.forwarded import TrustedProxies
from infra.metrics_server import metrics_exposed
from infra.metrics_telemetry import telemetry_for
from infra.migrate import migrate
from infra.passwords import Argon2Hasher
from infra.persisted_queries import persisted_query_store
from infra.pg_inbox_store import PgInboxStore
from infra.presence_hub import PresenceHub
from infra.presence_memory import MemoryPresence
from infra.presence_redis import RedisPresence
from infra.push.runtime import embedded_worker, push_config, push_queue
from infra.rate_limit import MemoryRateLimiter, RedisRateLimiter
from infra.redis_batch import RedisBatch
from infra.redis_clients import redis_client, redis_endpoint
from infra.redis_cluster import ClusterBus, hash_tagged
from infra.security_headers import SecurityHeaders
from infra.settings import Settings, settings_record
from infra.sql_inbox_store import SqlInboxStore
from infra.storage.local import LocalStorage
from infra.storage.s3 import S3Storage
from infra.thumbnails import PillowThumbnailer
from infra.tracing import TracingMiddleware, tracing
from infra.webhooks.runtime import webhooks_for, webhooks_running
from models.columns import utcnow
from resolvers.errors import Unavailable
from resolvers.expiry import sweep_expired
from resolvers.file_retention import sweep_files
from resolvers.ids import MessageIds
from resolvers.maintenance import sweep
from resolvers.ports import FileStorage, InboxStore
from resolvers.services import FileConfig, Limits, Services
from resolvers.thumbnails import run_thumbnail_worker

log = logging.getLogger("parley.app")


@dataclass
class Overrides:
    """Replacements for wired services (tests inject failures through these)."""

    wrap: Callable[[Services], Services] | None = None
    fast_password_hashing: bool = False
    # The clock of the periodic sweeps, of the built-in storage's tokens and of message expiry:
    # tests move it forward instead of waiting for something to expire.
    now: Callable[[], datetime] = utcnow


@dataclass
class Draining:
    """Set once the process begins its shutdown (infra/server.py): `/readyz` answers 503 from then on."""

    active: bool = False


@dataclass
class _Runtime:
    services: Services | None = None

    def get(self) -> Services:
        if self.services is None:
            raise RuntimeError("Parley is not started (lifespan has not run)")
        return self.services


def _file_config(settings: Settings) -> FileConfig:
    return settings_record(
        FileConfig,
        settings,
        allowed_content_types=frozenset(settings.allowed_content_types),
        retention_seconds=settings.file_retention_days * 86400,
        unattached_seconds=settings.unattached_upload_hours * 3600,
    )


@contextlib.asynccontextmanager
async def _file_storage(settings: Settings, now: Callable[[], datetime]) -> AsyncIterator[FileStorage]:
    """S3 when a bucket is configured (any mode), else the folder the app serves itself."""
    if settings.s3_bucket:
        async with S3Storage.open(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        ) as s3:
            yield s3
    else:
        yield local_storage(settings, now)


def local_storage(settings: Settings, now: Callable[[], datetime] = utcnow) -> LocalStorage:
    """The built-in storage under `files_dir` (its routes are mounted whether or not S3 is used)."""
    return LocalStorage(Path(settings.files_dir), secret_key=settings.secret_key, clock=lambda: now().timestamp())


async def _sweep_forever(services: Services, interval: float, now: Callable[[], datetime]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep(services, now=now())
        except Exception:
            log.exception("sweep failed; trying again in %.0f s", interval)
        try:
            await sweep_files(services, now=now())
        except Exception:
            log.exception("file retention failed; trying again in %.0f s", interval)


async def _expire_forever(services: Services, interval: float, now: Callable[[], datetime]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_expired(services, now=now())
        except Exception:
            log.exception("expiry of disappearing messages failed; trying again in %.0f s", interval)


@contextlib.asynccontextmanager
async def _connected_services(settings: Settings, overrides: Overrides) -> AsyncIterator[Services]:
    """Opens every connection, yields the services wired on them, and closes them all."""
    if settings.is_sqlite:
        await migrate(settings.database_url)
    stack = contextlib.AsyncExitStack()
    db = Database(
        create_engine(
            settings.database_url,
            pool_timeout=settings.database_pool_timeout_seconds,
            connect_timeout=settings.database_connect_timeout_seconds,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
    )
    redis: Redis | RedisCluster | None = None
    batch: RedisBatch | None = None
    node_id = uuid.uuid4().hex[:12]
    endpoint = redis_endpoint(settings)
    if endpoint is not None:
        # One server, a cluster or a Sentinel-named master (infra/redis_clients.py). Its pool blocks:
        # a burst waits briefly for a connection instead of failing at once. The client owns its pools.
        redis = redis_client(endpoint)
        batch = RedisBatch(redis)
    bus = (
        ClusterBus(endpoint.url, channel_prefix=settings.redis_prefix)
        if endpoint is not None and endpoint.cluster
        else BroadcastBus(endpoint or "memory://", channel_prefix=settings.redis_prefix if endpoint else "")
    )
    await bus.connect()
    # The hot path runs on asyncpg directly on PostgreSQL (infra/pg_inbox_store.py says why).
    pg_store: PgInboxStore | None = None
    inbox_store: InboxStore = SqlInboxStore(db)
    if settings.database_url.startswith("postgresql"):
        inbox_store = pg_store = await PgInboxStore.connect(
            settings.database_url,
            max_size=settings.delivery_pool_size,
            pool_timeout=settings.database_pool_timeout_seconds,
            connect_timeout=settings.database_connect_timeout_seconds,
        )
    files = await stack.enter_async_context(_file_storage(settings, overrides.now))
    before_send = await stack.enter_async_context(before_send_hook(settings, MessageIds(settings.secret_key)))
    hub = PresenceHub(bus)
    presence = (
        RedisPresence(
            redis,
            # On a cluster the registry's scripts need all its keys in one slot (infra/redis_cluster.py).
            prefix=hash_tagged(settings.redis_prefix, "presence")
            if isinstance(redis, RedisCluster)
            else settings.redis_prefix,
            node_id=node_id,
            hub=hub,
            node_ttl=settings.presence_node_ttl_seconds,
            batch=batch,
        )
        if redis
        else MemoryPresence(hub)
    )
    services = Services(
        db=db,
        bus=bus,
        fanout=Fanout(bus),
        inbox_store=inbox_store,
        presence=presence,
        rate_limiter=RedisRateLimiter(redis, prefix=settings.redis_prefix, batch=batch)
        if redis
        else MemoryRateLimiter(),
        passwords=Argon2Hasher(
            fast=overrides.fast_password_hashing, max_concurrent=settings.max_concurrent_password_hashes
        ),
        limits=settings_record(Limits, settings),
        push_queue=push_queue(settings, redis, batch),
        webhooks=webhooks_for(settings, redis, batch),
        push=push_config(settings),
        files=files,
        file_config=_file_config(settings),
        thumbnailer=PillowThumbnailer(size=settings.thumbnail_size, max_pixels=settings.thumbnail_max_pixels),
        telemetry=telemetry_for(settings),
        clock=overrides.now,
        before_send=before_send,
    )
    if overrides.wrap:
        services = overrides.wrap(services)
        if services.bus is not bus:  # fan out through the replaced bus
            services = replace(services, fanout=Fanout(services.bus))
    log.info(
        "Parley node %s started (%s mode, database %s, broker %s)",
        node_id,
        settings.env or "default",  # PARLEY_ENV unset: the production defaults
        settings.database_url.split("://")[0],
        f"redis ({endpoint.kind})" if endpoint else "in-process",
    )
    try:
        # Registers this node and sweeps dead ones; on the way out removes its users (before the bus closes).
        async with presence.running():
            yield services
    finally:
        await stack.aclose()
        await bus.disconnect()
        if pg_store is not None:
            await pg_store.close()
        if redis is not None:
            await redis.aclose()
        await db.close()
        log.info("Parley node %s stopped", node_id)


connected_services = _connected_services

# GraphiQL's and the web chat's built assets (built from web/ by `npm run build`, committed).
STATIC = Path(__file__).parent / "static"


def _web_pages(settings: Settings) -> list[BaseRoute]:
    """GraphiQL's assets and the example web chat at `/`, each only when enabled."""
    routes: list[BaseRoute] = []
    if settings.graphiql_enabled:
        routes.append(Mount("/static/graphiql", StaticFiles(directory=STATIC / "graphiql")))
    if settings.web_chat_enabled:
        chat = STATIC / "chat"

        async def index(_request: Request) -> FileResponse:
            return FileResponse(chat / "index.html", media_type="text/html")

        routes += [Route("/", index), Mount("/static/chat", StaticFiles(directory=chat))]
    return routes


def _file_origins(settings: Settings) -> list[str]:
    """Origins other than the app's own that pages post uploads to and load files from."""
    urls = [settings.public_url, settings.s3_public_endpoint_url if settings.s3_bucket else None]
    return sorted({f"{u.scheme}://{u.netloc}" for u in map(urlsplit, filter(None, urls)) if u.netloc})


# The operations an app team starts from: the allow-list of `persisted_queries=allowlist`.
OPERATIONS_DIR = Path(__file__).resolve().parent.parent / "frontend_schema" / "operations"


def persisted_queries(settings: Settings) -> PersistedQueries:
    """APQ as configured; the allow-list is read here, once, so a missing kit fails at start."""
    allowlist = Allowlist.from_directory(OPERATIONS_DIR) if settings.persisted_queries == "allowlist" else Allowlist()
    if settings.persisted_queries == "allowlist" and not allowlist.texts:
        raise RuntimeError(f"persisted_queries=allowlist but no operations in {OPERATIONS_DIR}")
    return PersistedQueries(mode=settings.persisted_queries, allowlist=allowlist)


def create_app(settings: Settings, overrides: Overrides | None = None) -> Starlette:
    """A Starlette app serving Parley; connections open in its lifespan, none at import."""
    overrides = overrides or Overrides()
    runtime = _Runtime()
    ids = MessageIds(settings.secret_key)
    persisted = persisted_queries(settings)
    graphql = ParleyGraphQL(
        build_schema(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_tokens=settings.max_tokens,
            max_query_cost=settings.max_query_cost,
            introspection=settings.introspection_enabled,
            traced=settings.otlp_endpoint is not None,
            max_batch_operations=settings.max_batch_operations,
            persisted_queries=persisted,
        ),
        services=runtime.get,
        ids=ids,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        allowed_origins=settings.allowed_origins,
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
        connection_init_wait_timeout=timedelta(seconds=settings.connection_init_timeout_seconds),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with (
            tracing(settings),
            _connected_services(settings, overrides) as services,
            embedded_worker(settings, services),
            # Keeps the webhook endpoints fresh (and delivers, in the embedded mode).
            webhooks_running(settings, services),
            metrics_exposed(settings, services),
            # The operators' API, on its own port: the routes below never include /admin.
            admin_exposed(settings, services),
            persisted_query_store(settings) as persisted.store,
        ):
            runtime.services = services
            sweeper = asyncio.create_task(_sweep_forever(services, settings.sweep_interval_seconds, overrides.now))
            # Closes sockets of revoked devices, keeps connected devices active (graph/sockets.py).
            sockets = asyncio.create_task(graphql.sockets.run(services))
            expiry = asyncio.create_task(
                _expire_forever(services, settings.expiry_sweep_interval_seconds, overrides.now)
            )
            tasks = [sweeper, sockets, expiry]
            stop_thumbnails = asyncio.Event()
            if not settings.redis_url:
                # The embedded mode makes thumbnails in process; with Redis, `parley worker` does.
                tasks.append(
                    asyncio.create_task(
                        run_thumbnail_worker(services, stop_thumbnails, poll_seconds=settings.thumbnail_poll_seconds)
                    )
                )
            try:
                yield
            finally:
                stop_thumbnails.set()
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                runtime.services = None

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    draining = Draining()

    async def readyz(_request: Request) -> JSONResponse:
        if draining.active:
            # Said at once, without asking the backends: the load balancer stops sending new clients here.
            return JSONResponse({"ready": False, "draining": True}, status_code=503)
        services = runtime.get()
        checks: dict[str, str] = {}
        for name, check in (("database", services.db.ping), ("broker", services.bus.ping)):
            try:
                await asyncio.wait_for(check(), timeout=3)
                checks[name] = "ok"
            except Exception as error:  # any failure means "not ready"; say which
                # The adapters raise Unavailable from the driver's error: name the driver's.
                cause = error.__cause__ if isinstance(error, Unavailable) and error.__cause__ else error
                checks[name] = f"unavailable: {type(cause).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            # The built-in storage's upload and download endpoints (they refuse every token when
            # S3 holds the files: its tokens are never minted then).
            *local_storage(settings, overrides.now).routes(),
            *_web_pages(settings),
        ],
        lifespan=lifespan,
    )
    app.state.draining = draining  # the server sets it on SIGTERM (infra/server.py)
    # Uploads are bounded by their own ticket's size (infra/storage/local_upload.py), streamed to disk,
    # and by a deadline of their own.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        exempt_prefixes=("/uploads",),
        timeout_seconds=settings.request_body_timeout_seconds,
        exempt_timeout_seconds=settings.upload_body_timeout_seconds,
    )
    # Added last, runs first: the headers go on every response (413s too), and they see the
    # client and scheme as the trusted proxies report them.
    app.add_middleware(
        SecurityHeaders,
        ide_html=graphql.graphql_ide_html if settings.graphiql_enabled else None,
        web_chat=settings.web_chat_enabled,
        file_origins=_file_origins(settings),
    )
    app.add_middleware(TrustedProxies, trusted=settings.trusted_proxies)
    if settings.otlp_endpoint:
        # Outermost: a request's span covers all the app does for it (infra/tracing.py).
        app.add_middleware(TracingMiddleware)
    return app
