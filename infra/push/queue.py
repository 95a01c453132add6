"""The push job queue: a Redis Stream with a consumer group, or an in-process queue (embedded mode).

Written on plain redis-py rather than arq/saq (they cannot be installed beside
redis-py 8) or taskiq (it reclaims a dead worker's jobs only when new traffic
arrives): see docs/upstream-notes.md. Delivery is at-least-once: a job is acknowledged
(`XACK`) only after it was handled; a worker that dies leaves its jobs pending,
and `XAUTOCLAIM` hands those idle longer than `claim_idle` to a live worker. A
live worker keeps its in-flight jobs from being taken (`keep`, an `XCLAIM … JUSTID`
to itself that resets their idle time). A job handed out more than `max_attempts`
times (it kills workers) goes to the dead-letter stream, and so does an entry that
is not a job (decoded one by one: it cannot fail the rest of its batch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from infra.outages import outage_boundary
from infra.redis_batch import RedisBatch
from resolvers.records import PushJob, QueuedPushJob

log = logging.getLogger("parley.push")

GROUP = "workers"
# (message, device) keys of notifications sent: longer than any job stays queued or retried.
SENT_TTL_SECONDS = 7 * 86400
DEAD_LETTER_MAX_LENGTH = 100_000
_JOB = TypeAdapter(PushJob)


def encode_job(job: PushJob) -> bytes:
    """A job as one stream field (JSON; fields listed by hand: `asdict` costs more than the rest of an enqueue)."""
    return orjson.dumps(
        {
            "message_id": job.message_id,
            "conversation_id": job.conversation_id,
            "sender_id": job.sender_id,
            "sender_display_name": job.sender_display_name,
            "sent_at": job.sent_at,
        }
    )


def decode_job(text: str | bytes) -> PushJob:
    """The job a stream field holds; `ValueError` unless it is one (JSON with every field, of its type)."""
    return _JOB.validate_json(text, strict=True)


class RedisPushQueue:
    """Jobs in the stream `<prefix>push:jobs`, dead letters in `<prefix>push:dead`.

    On a Redis Cluster (a `RedisCluster` client) the two streams are `{<prefix>push}:jobs`
    and `{<prefix>push}:dead`: one slot, so dead-lettering stays one transaction.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        prefix: str,
        max_length: int,
        claim_idle_seconds: float,
        max_attempts: int,
        batch: RedisBatch | None = None,
    ) -> None:
        self._redis = redis
        # Sends enqueue through the shared pipeline: concurrent sends cost one round trip together.
        self._batch = batch or RedisBatch(redis)
        streams = f"{{{prefix}push}}:" if isinstance(redis, RedisCluster) else f"{prefix}push:"
        self.stream = f"{streams}jobs"
        self.dead_stream = f"{streams}dead"
        self._sent = f"{prefix}push:sent:"
        self._max_length = max_length
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        self._max_attempts = max_attempts
        self._group_ready = False
        self._next_claim = 0.0

    @outage_boundary("Redis")  # the one call a resolver makes (sends); the worker handles its own failures
    async def enqueue(self, job: PushJob) -> None:
        """XADD with an approximate MAXLEN: a queue nobody drains cannot fill Redis."""
        await self._batch.call("XADD", self.stream, "MAXLEN", "~", self._max_length, "*", "job", encode_job(job))

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the start of the stream: jobs queued before the first worker ever ran are served too.
            await self._redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def receive(self, consumer: str, *, count: int, wait_seconds: float) -> list[QueuedPushJob]:
        """Jobs a dead consumer left (checked every claim_idle/2), else new ones (blocking up to `wait_seconds`)."""
        await self._ensure_group()
        jobs: list[QueuedPushJob] = []
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self._claim_idle_ms / 2000
            jobs = await self._claim(consumer, count)
            if jobs:
                return jobs
        reply = await self._redis.xreadgroup(
            GROUP, consumer, {self.stream: ">"}, count=count, block=max(1, int(wait_seconds * 1000))
        )
        streams: list[Any] = list(reply or ())
        for _stream, entries in streams:
            jobs.extend(await self._decode([(entry_id, fields) for entry_id, fields in entries if fields], {}))
        return jobs

    async def _claim(self, consumer: str, count: int) -> list[QueuedPushJob]:
        _next, entries, *_deleted = await self._redis.xautoclaim(
            self.stream, GROUP, consumer, self._claim_idle_ms, start_id="0-0", count=count
        )
        entries = [(entry_id, fields) for entry_id, fields in entries if fields]
        if not entries:
            return []
        # XAUTOCLAIM does not say how often an entry was handed out: XPENDING does.
        pending = await self._redis.xpending_range(
            self.stream,
            GROUP,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries) * 2 + 10,
            consumername=consumer,
        )
        times = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return await self._decode(entries, times, reclaimed=True)

    async def _decode(
        self, entries: list[tuple[Any, dict[Any, Any]]], times: dict[str, int], *, reclaimed: bool = False
    ) -> list[QueuedPushJob]:
        """The jobs of the entries (handed out `times[id]` times); entries that are no job are dead-lettered."""
        jobs: list[QueuedPushJob] = []
        undecodable: list[tuple[str, bytes | None, str]] = []
        for entry_id, fields in entries:
            key = _text(entry_id)
            raw = fields.get(b"job", fields.get("job"))
            job, reason = None, "no job field"
            if raw is not None:
                try:
                    job = decode_job(raw)
                except ValueError as error:  # what pydantic raises
                    reason = str(error).splitlines()[0]
            if job is None:
                undecodable.append((key, raw, f"undecodable: {reason}"))
                continue
            jobs.append(QueuedPushJob(id=key, job=job, handed_out=times.get(key, 2 if reclaimed else 1)))
        if undecodable:
            await self._dead_letter_raw(undecodable)
        return jobs

    async def _dead_letter_raw(self, entries: Sequence[tuple[str, bytes | None, str]]) -> None:
        """Moves (id, field, reason) entries that are no job to the dead-letter stream, as they were."""
        log.error("%d push queue entries are not jobs; dead-lettered: %s", len(entries), [e[0] for e in entries])
        async with self._redis.pipeline(transaction=True) as pipe:
            for entry_id, raw, reason in entries:
                pipe.xadd(
                    self.dead_stream,
                    {"job": raw or b"", "id": entry_id, "reason": reason[:500], "at": f"{time.time():.3f}"},
                    maxlen=DEAD_LETTER_MAX_LENGTH,
                    approximate=True,
                )
            pipe.xack(self.stream, GROUP, *(entry_id for entry_id, _raw, _reason in entries))
            await pipe.execute()

    async def keep(self, consumer: str, job_ids: Sequence[str]) -> None:
        """Resets the idle time of jobs this consumer is still working on."""
        if job_ids:
            await self._redis.xclaim(self.stream, GROUP, consumer, 0, list(job_ids), justid=True)

    async def ack(self, job_ids: Sequence[str]) -> None:
        """XACK: the jobs are done."""
        if job_ids:
            await self._redis.xack(self.stream, GROUP, *job_ids)

    async def dead_letter(self, job: QueuedPushJob, reason: str) -> None:
        """XADD to the dead-letter stream, then XACK, in one transaction."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_stream,
                {"job": encode_job(job.job), "id": job.id, "reason": reason[:500], "at": f"{time.time():.3f}"},
                maxlen=DEAD_LETTER_MAX_LENGTH,
                approximate=True,
            )
            pipe.xack(self.stream, GROUP, job.id)
            await pipe.execute()

    async def already_sent(self, keys: Sequence[str]) -> set[str]:
        """Those keys marked sent (one MGET)."""
        if not keys:
            return set()
        names = [self._sent + key for key in keys]
        if isinstance(self._redis, RedisCluster):
            # The markers spread over the slots: one MGET per slot (redis-py groups and pipelines them).
            values = await self._redis.mget_nonatomic(names)
        else:
            values = await self._redis.mget(names)
        return {key for key, value in zip(keys, values, strict=True) if value is not None}

    async def mark_sent(self, keys: Sequence[str]) -> None:
        """SET … EX for each key, pipelined."""
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(self._sent + key, b"1", ex=SENT_TTL_SECONDS)
            await pipe.execute()

    @property
    def max_attempts(self) -> int:
        """Deliveries after which a reclaimed job is dead-lettered."""
        return self._max_attempts

    async def depth(self) -> int:
        """Jobs not yet done (for metrics): those no worker has taken (the group's lag) plus those taken.

        Not XLEN alone: handled entries stay in the stream after XACK until MAXLEN trims
        them. XLEN only before any worker made the group, or when Redis cannot tell the lag.
        """
        try:
            groups = await self._redis.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet: nothing was ever queued
            return 0
        for group in groups:
            if _text(group.get("name")) == GROUP and group.get("lag") is not None:
                return int(group["lag"]) + int(group.get("pending") or 0)
        return int(await self._redis.xlen(self.stream))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MemoryPushQueue:
    """The embedded mode's queue: jobs in memory, served by a worker task in the same process.

    Not durable: jobs queued when the process stops are lost (the embedded mode is one
    process; its clients sync on their next connection anyway).
    """

    def __init__(self, *, max_length: int = 100_000, remembered: int = 100_000) -> None:
        self._queue: asyncio.Queue[QueuedPushJob] = asyncio.Queue(maxsize=max_length)
        self._next_id = 0
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered
        self.dead: list[tuple[QueuedPushJob, str]] = []

    async def enqueue(self, job: PushJob) -> None:
        """Queues the job; a full queue drops it (raises, and the send logs it)."""
        self._next_id += 1
        self._queue.put_nowait(QueuedPushJob(id=str(self._next_id), job=job))

    async def receive(self, consumer: str, *, count: int, wait_seconds: float) -> list[QueuedPushJob]:
        """Up to `count` jobs, waiting up to `wait_seconds` for the first."""
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=wait_seconds)
        except TimeoutError:
            return []
        jobs = [first]
        while len(jobs) < count and not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return jobs

    async def keep(self, consumer: str, job_ids: Sequence[str]) -> None:
        """Nothing to do: no other consumer could take them."""

    async def ack(self, job_ids: Sequence[str]) -> None:
        """Nothing to do: a received job is gone from the queue."""

    async def dead_letter(self, job: QueuedPushJob, reason: str) -> None:
        """Keeps the last few hundred failed jobs in memory (the log has them too)."""
        self.dead = [*self.dead[-499:], (job, reason)]

    async def already_sent(self, keys: Sequence[str]) -> set[str]:
        """Those keys remembered as sent."""
        return {key for key in keys if key in self._sent}

    async def mark_sent(self, keys: Sequence[str]) -> None:
        """Remembers the keys (the oldest are forgotten past a bound)."""
        for key in keys:
            self._sent[key] = None
        while len(self._sent) > self._remembered:
            self._sent.popitem(last=False)

    @property
    def max_attempts(self) -> int:
        """Never reclaimed: no limit of its own."""
        return 1_000_000

    async def depth(self) -> int:
        """Jobs queued and not yet received (for metrics)."""
        return self._queue.qsize()
