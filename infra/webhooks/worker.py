"""The webhook worker: one lane per endpoint, each with its own bound on deliveries in flight.

A lane takes its endpoint's jobs off the queue, at most `endpoint_concurrency` at a time,
and delivers each until a 2xx answer, retrying with exponential backoff and jitter (a
receiver's `Retry-After`, capped, instead when it gives one) while holding its slot: a
receiver that is down or slow stops its own lane, and only its own. After `max_attempts`,
or at once for an endpoint the SSRF checks refuse, the job goes to the dead-letter
stream. Acknowledged only when handled, so a worker killed meanwhile leaves it to
another (at-least-once: receivers drop repeats by `webhook-id`). The lanes follow the
endpoint directory, read again every `refresh_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Protocol

from infra.push.senders import Outcome, Result
from infra.webhooks.queue import QueuedWebhook
from resolvers.ports import Database, WebhookJob
from resolvers.webhook_endpoints import Endpoint, EndpointDirectory

log = logging.getLogger("parley.webhooks")


@dataclass(frozen=True)
class WebhookWorkerConfig:
    """The worker's knobs: the `PARLEY_WEBHOOK_*` settings of the same names (their defaults live there)."""

    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    retry_after_max_seconds: float
    endpoint_concurrency: int
    claim_idle_seconds: float
    refresh_seconds: float
    # On SIGTERM, in-flight deliveries get this long to finish; the rest stay pending for another worker.
    shutdown_grace_seconds: float = 10.0
    # How long a receive blocks.
    wait_seconds: float = 1.0


class LaneQueue(Protocol):
    """What a lane needs of the queue (infra/webhooks/queue.py)."""

    async def receive(
        self, endpoint: str, consumer: str, *, count: int, wait_seconds: float
    ) -> list[QueuedWebhook]: ...

    async def keep(self, endpoint: str, consumer: str, job_ids: list[str]) -> None: ...

    async def ack(self, queued: QueuedWebhook) -> None: ...

    async def dead_letter(self, queued: QueuedWebhook, reason: str) -> None: ...


class Deliverer(Protocol):
    """What delivers one attempt (infra/webhooks/sender.py)."""

    async def send(self, endpoint: Endpoint, job: WebhookJob) -> Result: ...


def retry_delay(attempt: int, retry_after: float | None, config: WebhookWorkerConfig) -> float:
    """The wait after failed attempt `attempt`: the receiver's Retry-After (capped), else backoff with equal jitter."""
    if retry_after is not None:
        return max(0.0, min(config.retry_after_max_seconds, retry_after))
    delay = min(config.retry_max_seconds, config.retry_base_seconds * 2 ** (attempt - 1))
    return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret


class WebhookWorker:
    """One consumer of every endpoint's queue."""

    def __init__(
        self,
        db: Database,
        directory: EndpointDirectory,
        queue: LaneQueue,
        sender: Deliverer,
        config: WebhookWorkerConfig,
    ) -> None:
        self._db = db
        self._directory = directory
        self._queue = queue
        self._sender = sender
        self._config = config
        self.consumer = f"webhooks-{uuid.uuid4().hex[:12]}"
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._lane_stops: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, dict[asyncio.Task[None], str]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers until `stop` is set, then lets in-flight deliveries finish (within the grace period)."""
        keeper = asyncio.create_task(self._keep_inflight())
        try:
            while not stop.is_set():
                try:
                    await self._directory.refresh(self._db)
                except Exception:
                    log.warning("webhook endpoints could not be read; keeping the last known", exc_info=True)
                self._follow_directory()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._config.refresh_seconds)
        finally:
            for lane_stop in self._lane_stops.values():
                lane_stop.set()
            if self._lanes:
                await asyncio.gather(*self._lanes.values(), return_exceptions=True)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    def _follow_directory(self) -> None:
        keys = {endpoint.key for endpoint in self._directory.endpoints()}
        for key in [key for key in self._lanes if key not in keys]:
            # Disabled: queued deliveries stay in its stream, unread (MAXLEN trims them).
            self._lane_stops.pop(key).set()
            self._lanes.pop(key)
        for key in keys - set(self._lanes):
            self._lane_stops[key] = asyncio.Event()
            self._lanes[key] = asyncio.create_task(self._lane(key, self._lane_stops[key]))

    async def _lane(self, key: str, stop: asyncio.Event) -> None:
        inflight = self._inflight.setdefault(key, {})
        limit = self._config.endpoint_concurrency
        try:
            while not stop.is_set():
                if len(inflight) >= limit:
                    await asyncio.wait(list(inflight), timeout=self._config.wait_seconds, return_when="FIRST_COMPLETED")
                    continue
                try:
                    jobs = await self._queue.receive(
                        key, self.consumer, count=limit - len(inflight), wait_seconds=self._config.wait_seconds
                    )
                except Exception:
                    log.warning("webhook queue of endpoint %s unavailable; retrying", key, exc_info=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    continue
                for queued in jobs:
                    task = asyncio.create_task(self._handle(queued))
                    inflight[task] = queued.id
                    task.add_done_callback(lambda done: inflight.pop(done, None))
        finally:
            await self._drain(key, inflight)

    async def _drain(self, key: str, inflight: dict[asyncio.Task[None], str]) -> None:
        tasks = list(inflight)
        if not tasks:
            return
        _done, unfinished = await asyncio.wait(tasks, timeout=self._config.shutdown_grace_seconds)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.info("stopping: %d deliveries to endpoint %s are left to another worker", len(unfinished), key)
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _keep_inflight(self) -> None:
        while True:
            await asyncio.sleep(self._config.claim_idle_seconds / 3)
            for key, inflight in list(self._inflight.items()):
                ids = list(inflight.values())
                if ids:
                    try:
                        await self._queue.keep(key, self.consumer, ids)
                    except Exception:
                        log.warning("could not keep %d webhook deliveries claimed", len(ids), exc_info=True)

    async def _handle(self, queued: QueuedWebhook) -> None:
        job = queued.job
        try:
            if queued.handed_out > self._config.max_attempts:
                await self._dead(queued, f"handed out {queued.handed_out} times")
                return
            attempt = 0
            while True:
                endpoint = self._directory.get(job.endpoint)
                if endpoint is None:
                    log.info("webhook %s for a disabled endpoint %s dropped", job.event_id, job.endpoint)
                    await self._queue.ack(queued)
                    return
                attempt += 1
                result = await self._sender.send(endpoint, job)
                if result.outcome is Outcome.SENT:
                    await self._queue.ack(queued)
                    return
                if result.outcome is not Outcome.RETRY or attempt >= self._config.max_attempts:
                    await self._dead(queued, f"{result.detail} (attempt {attempt})")
                    return
                delay = retry_delay(attempt, result.retry_after, self._config)
                log.info(
                    "webhook %s to endpoint %s failed (%s); retry in %.1f s",
                    job.event_id,
                    job.endpoint,
                    result.detail,
                    delay,
                )
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: claimed again once idle (the hand-out count bounds a poison job).
            log.exception("webhook %s failed unexpectedly", job.event_id)

    async def _dead(self, queued: QueuedWebhook, reason: str) -> None:
        log.error(
            "webhook %s (%s) to endpoint %s dead-lettered: %s",
            queued.job.event_id,
            queued.job.event_type,
            queued.job.endpoint,
            reason,
        )
        await self._queue.dead_letter(queued, reason)
