"""The push worker: takes jobs off the queue and sends each to every registration of each recipient.

Any number of workers may run (`parley worker`); the embedded mode runs one as a
task of the server. Per job: wait out the coalescing window from the send, ask
`resolvers.push.notifications_for` whom to notify (muted, online, already
delivered and superseded recipients drop out), then send to each registration,
skipping (message, device) pairs already marked sent, so a redelivered job never
notifies twice. Transient failures are retried in place with exponential backoff
and jitter (or the service's Retry-After); registrations the service reports gone
are deleted; a job that still failed after `max_attempts` goes to the dead-letter
stream. Acknowledged only when handled, so a worker killed meanwhile leaves it to
another (at-least-once; a kill between a push service's 2xx and marking it sent
can notify twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from infra.metrics import push_failed
from infra.push.senders import Notice, Outcome, Result, Sender
from models import PushPlatform, PushRegistration
from resolvers.ids import MessageIds, MessageRef
from resolvers.ports import PushQueue, QueuedPushJob, Services
from resolvers.push import Notification, forget_registrations, notifications_for

log = logging.getLogger("parley.push")


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs (from settings)."""

    include_body: bool = False
    coalesce_seconds: float = 2.0
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    claim_idle_seconds: float = 60.0
    concurrency: int = 500
    # How long a receive blocks; also how stale the liveness beat may get.
    wait_seconds: float = 1.0
    # A job older than this (the notification's TTL) is dropped: push services would discard it too.
    max_age_seconds: float = 86400.0
    # On SIGTERM, in-flight jobs get this long to finish; the rest stay pending for another worker.
    shutdown_grace_seconds: float = 20.0


class PushWorker:
    """One consumer of the push queue."""

    def __init__(
        self,
        services: Services,
        queue: PushQueue,
        senders: Mapping[PushPlatform, Sender],
        ids: MessageIds,
        config: WorkerConfig,
        *,
        max_deliveries: int | None = None,
    ) -> None:
        self._services = services
        self._queue = queue
        self._senders = senders
        self._ids = ids
        self._config = config
        self._max_deliveries = max_deliveries or config.max_attempts
        self.consumer = f"worker-{uuid.uuid4().hex[:12]}"
        self._inflight: dict[asyncio.Task[None], str] = {}
        # Liveness: when the loop last heard from the queue (monotonic seconds).
        self.beat = time.monotonic()

    def alive(self) -> bool:
        """Whether the receive loop made progress recently (for `/healthz`)."""
        return time.monotonic() - self.beat < max(10.0, 5 * self._config.wait_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Receives and handles jobs until `stop` is set, then finishes or hands back what is in flight."""
        keeper = asyncio.create_task(self._keep_inflight())
        try:
            while not stop.is_set():
                free = self._config.concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(
                        list(self._inflight), timeout=self._config.wait_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                    self.beat = time.monotonic()
                    continue
                try:
                    jobs = await self._queue.receive(self.consumer, count=free, wait_seconds=self._config.wait_seconds)
                except Exception:
                    log.warning("push queue unavailable; retrying", exc_info=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    continue
                self.beat = time.monotonic()
                for job in jobs:
                    task = asyncio.create_task(self._handle(job))
                    self._inflight[task] = job.id
                    task.add_done_callback(self._inflight.pop)
        finally:
            await self._drain()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _drain(self) -> None:
        tasks = list(self._inflight)
        if not tasks:
            return
        _done, unfinished = await asyncio.wait(tasks, timeout=self._config.shutdown_grace_seconds)
        for task in unfinished:
            task.cancel()
        if unfinished:
            # Not acknowledged: they stay pending and another worker claims them.
            log.warning("stopping with %d push jobs unfinished; another worker will take them", len(unfinished))
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _keep_inflight(self) -> None:
        interval = self._config.claim_idle_seconds / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self._inflight.values())
            if ids:
                try:
                    await self._queue.keep(self.consumer, ids)
                except Exception:
                    log.warning("could not keep %d push jobs claimed", len(ids), exc_info=True)

    async def _handle(self, queued: QueuedPushJob) -> None:
        try:
            if queued.deliveries > self._max_deliveries:
                log.error("push job %s handed out %d times; dead-lettered", queued.id, queued.deliveries)
                await self._queue.dead_letter(queued, f"handed out {queued.deliveries} times")
                return
            failures = await self._process(queued)
            if failures:
                log.error("push job %s failed: %s; dead-lettered", queued.id, "; ".join(failures))
                await self._queue.dead_letter(queued, "; ".join(failures))
            else:
                await self._queue.ack([queued.id])
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: claimed again once idle (the attempts count keeps a poison job bounded).
            log.exception("push job %s failed unexpectedly", queued.id)

    async def _process(self, queued: QueuedPushJob) -> list[str]:
        job = queued.job
        if time.time() - job.sent_at > self._config.max_age_seconds:
            log.warning("push job %s for message %s is too old to send; dropped", queued.id, job.message_id)
            return []
        delay = job.sent_at + self._config.coalesce_seconds - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        notifications = await notifications_for(self._services, job, include_body=self._config.include_body)
        pairs = [(note, reg) for note in notifications for reg in note.registrations]
        if not pairs:
            return []
        keys = {reg.device_id: f"{job.message_id}:{reg.device_id}" for _note, reg in pairs}
        done = await self._queue.already_sent(list(keys.values()))
        todo = [(note, reg) for note, reg in pairs if keys[reg.device_id] not in done]
        message_id = self._ids.encode(MessageRef(job.message_id, job.conversation_id, job.sender_id))
        results = await asyncio.gather(
            *(
                self._deliver(
                    self._notice(job.conversation_id, message_id, job.sender_display_name, note),
                    reg,
                    keys[reg.device_id],
                )
                for note, reg in todo
            )
        )
        gone = [
            reg.device_id for (_note, reg), result in zip(todo, results, strict=True) if result.outcome is Outcome.GONE
        ]
        if gone:
            await forget_registrations(self._services, gone)
            log.info("forgot %d push registrations their service reported gone", len(gone))
        return [
            f"device {reg.device_id} ({reg.platform.value}): {result.detail}"
            for (_note, reg), result in zip(todo, results, strict=True)
            if result.outcome in (Outcome.RETRY, Outcome.FAILED)
        ]

    @staticmethod
    def _notice(conversation_id: int, message_id: str, sender_name: str, note: Notification) -> Notice:
        return Notice(str(conversation_id), message_id, sender_name, note.count, note.body)

    async def _deliver(self, notice: Notice, registration: PushRegistration, key: str) -> Result:
        sender = self._senders.get(registration.platform)
        if sender is None:
            push_failed(registration.platform.value, "unconfigured")
            return Result(Outcome.FAILED, f"{registration.platform.value} is not configured")
        result = Result(Outcome.FAILED, "not attempted")
        for attempt in range(1, self._config.max_attempts + 1):
            try:
                result = await sender.send(registration, notice)
            except Exception as error:  # a sender bug must not stop the other deliveries
                log.exception("push sender %s raised", registration.platform.value)
                result = Result(Outcome.FAILED, f"{type(error).__name__}")
            if result.outcome is Outcome.SENT:
                await self._queue.mark_sent([key])
                return result
            push_failed(registration.platform.value, result.outcome.value)
            if result.outcome is not Outcome.RETRY or attempt == self._config.max_attempts:
                return result
            await asyncio.sleep(self._backoff(attempt, result.retry_after))
        return result

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with "equal jitter" (half fixed, half random), or the service's Retry-After."""
        cap = self._config.retry_max_seconds
        if retry_after is not None:
            return min(cap, retry_after)
        delay = min(cap, self._config.retry_base_seconds * 2 ** (attempt - 1))
        return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret
