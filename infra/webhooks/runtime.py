"""Wiring of webhooks from settings: the queue, the endpoint directory, and the delivery worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from infra.redis_batch import RedisBatch
from infra.settings import Settings, settings_record
from infra.webhooks.queue import MemoryWebhookQueue, RedisWebhookQueue
from infra.webhooks.sender import WebhookSender
from infra.webhooks.worker import WebhookWorker, WebhookWorkerConfig
from resolvers.ids import MessageIds
from resolvers.services import Services
from resolvers.webhook_endpoints import EndpointDirectory, Webhooks, configured_endpoints

log = logging.getLogger("parley.webhooks")


def webhooks_for(settings: Settings, redis: Redis | RedisCluster | None, batch: RedisBatch | None) -> Webhooks:
    """The Redis Stream queues when Redis is configured, else in-process ones; the configured endpoints.

    The table's endpoints are read once the database is connected (`webhooks_running`).
    """
    try:
        configured = configured_endpoints(settings.webhooks)
    except ValueError as error:
        raise SystemExit(f"PARLEY_WEBHOOKS: {error}") from None
    queue: RedisWebhookQueue | MemoryWebhookQueue = (
        MemoryWebhookQueue()
        if redis is None
        else RedisWebhookQueue(
            redis,
            prefix=settings.redis_prefix,
            max_length=settings.webhook_stream_max_length,
            claim_idle_seconds=settings.webhook_claim_idle_seconds,
            batch=batch,
        )
    )
    return Webhooks(
        queue=queue,
        directory=EndpointDirectory(configured),
        ids=MessageIds(settings.secret_key),
        include_body=settings.webhook_include_body,
        allow_private=settings.webhook_private_endpoints_allowed,
    )


def worker_config(settings: Settings) -> WebhookWorkerConfig:
    """The worker's knobs from settings."""
    return settings_record(WebhookWorkerConfig, settings, prefix="webhook_")


async def _refresh_forever(services: Services, seconds: float) -> None:
    assert services.webhooks is not None
    while True:
        try:
            await services.webhooks.directory.refresh(services.db)
        except Exception:
            log.warning("webhook endpoints could not be read; keeping the last known", exc_info=True)
        await asyncio.sleep(seconds)


@contextlib.asynccontextmanager
async def webhooks_running(settings: Settings, services: Services) -> AsyncIterator[None]:
    """In `parley serve`: keeps the endpoint directory fresh, and in the embedded mode delivers too."""
    hooks = services.webhooks
    if hooks is None:
        yield
        return
    stop = asyncio.Event()
    if isinstance(hooks.queue, MemoryWebhookQueue):
        sender = WebhookSender(timeout=settings.webhook_request_timeout_seconds, allow_private=hooks.allow_private)
        worker = WebhookWorker(services.db, hooks.directory, hooks.queue, sender, worker_config(settings))
        task = asyncio.create_task(worker.run(stop))
    else:
        sender = None
        task = asyncio.create_task(_refresh_forever(services, settings.webhook_refresh_seconds))
    try:
        yield
    finally:
        stop.set()
        if sender is None:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if sender is not None:
            await sender.close()


async def run_webhook_worker(
    settings: Settings, services: Services, redis: Redis | RedisCluster, stop: asyncio.Event
) -> None:
    """`parley worker`'s webhook deliveries, from the Redis Streams, until `stop` is set."""
    hooks = services.webhooks
    if hooks is None:
        return
    queue = RedisWebhookQueue(
        redis,
        prefix=settings.redis_prefix,
        max_length=settings.webhook_stream_max_length,
        claim_idle_seconds=settings.webhook_claim_idle_seconds,
    )
    sender = WebhookSender(timeout=settings.webhook_request_timeout_seconds, allow_private=hooks.allow_private)
    worker = WebhookWorker(services.db, hooks.directory, queue, sender, worker_config(settings))
    log.info("webhook worker %s started", worker.consumer)
    try:
        await worker.run(stop)
    finally:
        await sender.close()
    log.info("webhook worker %s stopped", worker.consumer)
