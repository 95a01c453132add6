"""Webhook delivery jobs: a Redis Stream per endpoint with a consumer group, or in-process queues (embedded).

The same design as the push queue (infra/push/queue.py): at-least-once, a job is
acknowledged (`XACK`) only once delivered or dead-lettered, `XAUTOCLAIM` hands the jobs
of a dead worker to a live one, and a job handed out more than `max_attempts` times
is dead-lettered. One stream per endpoint, so each endpoint is read at its own pace:
a receiver that is down or slow holds up its own deliveries only. Dead letters of
every endpoint share one stream, which the admin API lists and replays from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from infra.outages import outage_boundary
from infra.redis_batch import RedisBatch
from resolvers.ports import DeadWebhook, WebhookJob

log = logging.getLogger("parley.webhooks")

GROUP = "webhooks"
DEAD_LETTER_MAX_LENGTH = 100_000


@dataclass(frozen=True, slots=True)
class QueuedWebhook:
    """A job as a worker received it: its stream entry id and how often it was handed out."""

    id: str
    job: WebhookJob
    handed_out: int = 1


def _fields(job: WebhookJob) -> dict[str, bytes | str]:
    return {"endpoint": job.endpoint, "event_id": job.event_id, "type": job.event_type, "body": job.body}


def _job(fields: dict[Any, Any]) -> WebhookJob | None:
    values = {_text(key): value for key, value in fields.items()}
    try:
        return WebhookJob(
            endpoint=_text(values["endpoint"]),
            event_id=_text(values["event_id"]),
            event_type=_text(values["type"]),
            body=values["body"] if isinstance(values["body"], bytes) else str(values["body"]).encode(),
        )
    except KeyError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisWebhookQueue:
    """Jobs of endpoint K in `<prefix>webhooks:K:jobs`, dead letters in `<prefix>webhooks:dead`.

    On a Redis Cluster the names carry hash tags (`{<prefix>webhooks:K}:jobs`): an endpoint's
    stream is one key, and dead-lettering (XADD there, XACK here) is two steps, each retried
    by the at-least-once design if the other fails.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        prefix: str,
        max_length: int,
        claim_idle_seconds: float,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = redis
        self._batch = batch or RedisBatch(redis)
        self._cluster = isinstance(redis, RedisCluster)
        self._prefix = prefix
        self.dead_stream = f"{{{prefix}webhooks}}:dead" if self._cluster else f"{prefix}webhooks:dead"
        self._max_length = max_length
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._groups: set[str] = set()
        self._next_claim: dict[str, float] = {}

    def stream(self, endpoint: str) -> str:
        """The job stream of an endpoint."""
        return (
            f"{{{self._prefix}webhooks:{endpoint}}}:jobs"
            if self._cluster
            else f"{self._prefix}webhooks:{endpoint}:jobs"
        )

    @outage_boundary("Redis")  # the one call a resolver makes; the worker handles its own failures
    async def enqueue(self, jobs: Sequence[WebhookJob]) -> None:
        """One XADD per job (approximate MAXLEN), sent in the shared pipeline: one round trip."""
        calls = [
            self._batch.call(
                "XADD", self.stream(job.endpoint), "MAXLEN", "~", self._max_length, "*", *_flat(_fields(job))
            )
            for job in jobs
        ]
        if len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._groups.add(stream)

    async def receive(self, endpoint: str, consumer: str, *, count: int, wait_seconds: float) -> list[QueuedWebhook]:
        """An endpoint's jobs a dead consumer left (checked every claim_idle/2), else new ones (blocking)."""
        stream = self.stream(endpoint)
        await self._ensure_group(stream)
        now = time.monotonic()
        if now >= self._next_claim.get(stream, 0.0):
            self._next_claim[stream] = now + self._claim_idle_ms / 2000
            claimed = await self._claim(stream, consumer, count)
            if claimed:
                return claimed
        reply: Any = await self._redis.xreadgroup(
            GROUP, consumer, {stream: ">"}, count=count, block=max(1, int(wait_seconds * 1000))
        )
        jobs: list[QueuedWebhook] = []
        for _stream, entries in list(reply or ()):
            jobs += await self._decode(stream, [(entry_id, fields) for entry_id, fields in entries if fields], {})
        return jobs

    async def _claim(self, stream: str, consumer: str, count: int) -> list[QueuedWebhook]:
        reply: Any = await self._redis.xautoclaim(
            stream, GROUP, consumer, self._claim_idle_ms, start_id="0-0", count=count
        )
        entries: list[tuple[Any, dict[Any, Any]]] = [(entry_id, fields) for entry_id, fields in reply[1] if fields]
        if not entries:
            return []
        pending = await self._redis.xpending_range(
            stream, GROUP, min=entries[0][0], max=entries[-1][0], count=len(entries) * 2 + 10, consumername=consumer
        )
        times = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return await self._decode(stream, entries, times, reclaimed=True)

    async def _decode(
        self, stream: str, entries: list[tuple[Any, dict[Any, Any]]], times: dict[str, int], *, reclaimed: bool = False
    ) -> list[QueuedWebhook]:
        jobs: list[QueuedWebhook] = []
        for entry_id, fields in entries:
            key = _text(entry_id)
            job = _job(fields)
            if job is None:  # not written by `enqueue`: nothing to deliver
                log.error("webhook queue entry %s of %s is not a job; dropped", key, stream)
                await self._redis.xack(stream, GROUP, key)
                continue
            jobs.append(QueuedWebhook(key, job, times.get(key, 2 if reclaimed else 1)))
        return jobs

    async def keep(self, endpoint: str, consumer: str, job_ids: Sequence[str]) -> None:
        """Resets the idle time of jobs this consumer is still working on."""
        if job_ids:
            await self._redis.xclaim(self.stream(endpoint), GROUP, consumer, 0, list(job_ids), justid=True)

    async def ack(self, queued: QueuedWebhook) -> None:
        """XACK: the job is done."""
        await self._redis.xack(self.stream(queued.job.endpoint), GROUP, queued.id)

    async def dead_letter(self, queued: QueuedWebhook, reason: str) -> None:
        """XADD to the dead-letter stream, then XACK."""
        await self._redis.xadd(
            self.dead_stream,
            {**_fields(queued.job), "reason": reason[:500], "at": f"{time.time():.3f}"},  # type: ignore[dict-item]
            maxlen=DEAD_LETTER_MAX_LENGTH,
            approximate=True,
        )
        await self.ack(queued)

    async def dead_letters(self, limit: int) -> list[DeadWebhook]:
        """XREVRANGE of the dead-letter stream."""
        entries: Any = await self._redis.xrevrange(self.dead_stream, count=limit)
        dead = []
        for entry_id, fields in entries:
            job = _job(fields)
            if job is not None:
                values = {_text(key): _text(value) for key, value in fields.items() if _text(key) in ("reason", "at")}
                dead.append(DeadWebhook(_text(entry_id), job, values.get("reason", ""), float(values.get("at", 0))))
        return dead

    async def replay(self, dead_id: str) -> bool:
        """Moves a dead letter back to its endpoint's stream (a new entry: its hand-outs start over)."""
        try:
            entries: Any = await self._redis.xrange(self.dead_stream, min=dead_id, max=dead_id)
        except ResponseError:  # not a stream entry id
            return False
        job = _job(entries[0][1]) if entries else None
        if job is None:
            return False
        await self.enqueue([job])
        return bool(await self._redis.xdel(self.dead_stream, dead_id))


def _flat(fields: dict[str, bytes | str]) -> list[bytes | str]:
    return [item for pair in fields.items() for item in pair]


class MemoryWebhookQueue:
    """The embedded mode's queues: jobs in memory, delivered by a worker task in the same process.

    Not durable: deliveries queued when the process stops are lost (the embedded mode is one process).
    """

    def __init__(self, *, max_length: int = 100_000) -> None:
        self._max_length = max_length
        self._queues: dict[str, asyncio.Queue[QueuedWebhook]] = {}
        self._next_id = 0
        self._dead: deque[DeadWebhook] = deque(maxlen=1000)

    def _queue(self, endpoint: str) -> asyncio.Queue[QueuedWebhook]:
        queue = self._queues.get(endpoint)
        if queue is None:
            queue = self._queues[endpoint] = asyncio.Queue(maxsize=self._max_length)
        return queue

    async def enqueue(self, jobs: Sequence[WebhookJob]) -> None:
        """Queues the jobs; a full endpoint queue drops the rest (raises, and the caller logs it)."""
        for job in jobs:
            self._next_id += 1
            self._queue(job.endpoint).put_nowait(QueuedWebhook(str(self._next_id), job))

    async def receive(self, endpoint: str, consumer: str, *, count: int, wait_seconds: float) -> list[QueuedWebhook]:
        """Up to `count` of the endpoint's jobs, waiting up to `wait_seconds` for the first."""
        queue = self._queue(endpoint)
        try:
            first = await asyncio.wait_for(queue.get(), timeout=wait_seconds)
        except TimeoutError:
            return []
        jobs = [first]
        while len(jobs) < count and not queue.empty():
            jobs.append(queue.get_nowait())
        return jobs

    async def keep(self, endpoint: str, consumer: str, job_ids: Sequence[str]) -> None:
        """Nothing to do: no other consumer could take them."""

    async def ack(self, queued: QueuedWebhook) -> None:
        """Nothing to do: a received job is gone from the queue."""

    async def dead_letter(self, queued: QueuedWebhook, reason: str) -> None:
        """Keeps the last thousand dead letters in memory (the log has them too)."""
        self._next_id += 1
        self._dead.append(DeadWebhook(f"dead-{self._next_id}", queued.job, reason[:500], time.time()))

    async def dead_letters(self, limit: int) -> list[DeadWebhook]:
        """The newest dead letters first."""
        return list(reversed(self._dead))[:limit]

    async def replay(self, dead_id: str) -> bool:
        """Queues a dead letter again."""
        for dead in self._dead:
            if dead.id == dead_id:
                self._dead.remove(dead)
                await self.enqueue([dead.job])
                return True
        return False
