"""Wiring of push from settings: the queue, the senders, the worker, and `parley worker`'s process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from socket import socket

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.push.apns import ApnsSender
from infra.push.fcm import FcmSender
from infra.push.queue import MemoryPushQueue, RedisPushQueue
from infra.push.senders import Sender
from infra.push.webpush import WebPushSender, load_vapid, public_key_of
from infra.push.worker import PushWorker, WorkerConfig
from infra.redis_batch import RedisBatch
from infra.redis_clients import redis_client, redis_endpoint
from infra.settings import Settings, settings_record
from infra.webhooks.runtime import run_webhook_worker
from models import PushPlatform
from resolvers.ids import MessageIds
from resolvers.ports import PushQueue
from resolvers.services import PushConfig, Services
from resolvers.thumbnails import run_thumbnail_worker

log = logging.getLogger("parley.push")


def push_config(settings: Settings) -> PushConfig:
    """What the API needs: the VAPID public key and whether private endpoints are allowed."""
    public_key = (
        public_key_of(load_vapid(settings.push_vapid_private_key).private_key)
        if settings.push_vapid_private_key
        else None
    )
    return PushConfig(web_push_public_key=public_key, allow_private_endpoints=settings.push_private_endpoints_allowed)


def push_enabled(settings: Settings) -> bool:
    """Whether any push service is configured (servers and workers share one environment)."""
    return bool(settings.push_vapid_private_key or settings.push_apns_key or settings.push_fcm_service_account)


def push_queue(settings: Settings, redis: Redis | RedisCluster | None, batch: RedisBatch | None) -> PushQueue | None:
    """The Redis Stream queue when Redis is configured, else the in-process one; None without any push service.

    None costs the send path nothing: a deployment without push queues no jobs that no one would send.
    """
    if not push_enabled(settings):
        return None
    if redis is None:
        return MemoryPushQueue()
    return RedisPushQueue(
        redis,
        prefix=settings.redis_prefix,
        max_length=settings.push_stream_max_length,
        claim_idle_seconds=settings.push_claim_idle_seconds,
        max_attempts=settings.push_max_attempts,
        batch=batch,
    )


def worker_config(settings: Settings) -> WorkerConfig:
    """The worker's knobs from settings."""
    return settings_record(
        WorkerConfig,
        settings,
        prefix="push_",
        concurrency=settings.push_worker_concurrency,
        max_age_seconds=max(settings.push_ttl_seconds, 60),
    )


def build_senders(settings: Settings) -> dict[PushPlatform, Sender]:
    """One sender per configured push service (a service without settings is skipped, and logged)."""
    # httpx logs every request's URL at INFO: WebPush endpoint URLs are bearer capabilities.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    senders: dict[PushPlatform, Sender] = {}
    timeout = settings.push_request_timeout_seconds
    if settings.push_vapid_private_key:
        senders[PushPlatform.WEBPUSH] = WebPushSender(
            vapid_private_key=settings.push_vapid_private_key,
            subject=settings.push_vapid_subject,
            ttl_seconds=settings.push_ttl_seconds,
            urgency=settings.push_urgency,
            allow_private_endpoints=settings.push_private_endpoints_allowed,
            timeout=timeout,
        )
    apns = (settings.push_apns_key, settings.push_apns_key_id, settings.push_apns_team_id, settings.push_apns_topic)
    if all(apns):
        key, key_id, team_id, topic = (str(value) for value in apns)
        senders[PushPlatform.APNS] = ApnsSender(
            key=key,
            key_id=key_id,
            team_id=team_id,
            topic=topic,
            endpoint=settings.push_apns_endpoint,
            ttl_seconds=settings.push_ttl_seconds,
            timeout=timeout,
        )
    if settings.push_fcm_service_account:
        senders[PushPlatform.FCM] = FcmSender(
            service_account=settings.push_fcm_service_account,
            endpoint=settings.push_fcm_endpoint,
            token_url=settings.push_fcm_token_url,
            ttl_seconds=settings.push_ttl_seconds,
            timeout=timeout,
        )
    missing = [platform.value for platform in PushPlatform if platform not in senders]
    if missing:
        log.info("push senders not configured: %s (their registrations are not notified)", ", ".join(missing))
    return senders


@contextlib.asynccontextmanager
async def embedded_worker(settings: Settings, services: Services) -> AsyncIterator[None]:
    """The embedded mode's worker, as a task of the server process (no-op when jobs go to Redis)."""
    if not isinstance(services.push_queue, MemoryPushQueue):
        yield
        return
    senders = build_senders(settings)
    worker = PushWorker(
        services, services.push_queue, senders, MessageIds(settings.secret_key), worker_config(settings)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        for sender in senders.values():
            await sender.close()


async def _serve_liveness(worker: PushWorker, host: str, port: int | None, sock: socket | None) -> asyncio.Server:
    """`GET /healthz` for orchestrators (200 while the receive loop makes progress, else 503) and `GET /metrics`.

    The worker's Prometheus metrics (push failures, queue depth) are served here: this port is
    the worker's own and internal, like the server's `PARLEY_METRICS_PORT`.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            content_type = b"text/plain"
            if head.split(b" ", 2)[1:2] == [b"/metrics"]:
                status, body = b"200 OK", await asyncio.to_thread(generate_latest)
                content_type = CONTENT_TYPE_LATEST.encode()
            else:
                status = b"200 OK" if worker.alive() else b"503 Service Unavailable"
                body = b"ok" if worker.alive() else b"stalled"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + content_type
                + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    if sock is not None:
        return await asyncio.start_server(answer, sock=sock)
    return await asyncio.start_server(answer, host, port)


async def run_worker(settings: Settings, *, host: str, port: int | None, sock: socket | None = None) -> None:
    """`parley worker`: sends pushes and webhooks from the Redis Streams and makes thumbnails until SIGTERM/SIGINT.

    Serves liveness on `port`, or on the bound socket `sock`.
    """
    from infra.app import Overrides, connected_services  # noqa: PLC0415 - the app module is heavy

    endpoint = redis_endpoint(settings)
    if endpoint is None:
        raise SystemExit("parley worker: needs PARLEY_REDIS_URL (the embedded mode sends pushes from `parley serve`)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Blocking reads get a connection of their own, with a timeout longer than the block.
    redis = redis_client(endpoint, timeout=30, connect_timeout=5, max_connections=None, pool_wait=None)
    queue = RedisPushQueue(
        redis,
        prefix=settings.redis_prefix,
        max_length=settings.push_stream_max_length,
        claim_idle_seconds=settings.push_claim_idle_seconds,
        max_attempts=settings.push_max_attempts,
    )
    senders = build_senders(settings)
    try:
        async with connected_services(settings, Overrides()) as services:
            worker = PushWorker(services, queue, senders, MessageIds(settings.secret_key), worker_config(settings))
            if sock is not None:
                host, port = sock.getsockname()[:2]
            server = await _serve_liveness(worker, host, port, sock) if port else None
            log.info(
                "push worker %s started%s", worker.consumer, f" (liveness on {host}:{port}/healthz)" if port else ""
            )
            try:
                # The same process makes thumbnails of image attachments (resolvers/thumbnails.py).
                await asyncio.gather(
                    worker.run(stop),
                    run_thumbnail_worker(services, stop, poll_seconds=settings.thumbnail_poll_seconds),
                    # And delivers webhooks (infra/webhooks/), one lane per endpoint.
                    run_webhook_worker(settings, services, redis, stop),
                )
            finally:
                if server is not None:
                    server.close()
            log.info("push worker %s stopped", worker.consumer)
    finally:
        for sender in senders.values():
            await sender.close()
        await redis.aclose()
