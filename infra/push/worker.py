"""The push worker: takes jobs off the queue and sends each to every registration of each recipient.

Any number of workers may run (`parley worker`); the embedded mode runs one as a
task of the server. Per job: wait out the coalescing window from the send, ask
`resolvers.push.notifications_for` whom to notify (muted, online, already
delivered, deleted and superseded messages drop out), then send to each registration,
skipping (message, device) pairs already marked sent, so a redelivered job never
notifies twice. Transient failures are retried with exponential backoff and jitter
(or the Retry-After of a known push service, capped); a job resting until a retry
gives its sending slot back, so endpoints that keep asking for later cannot hold up
everyone else's notifications. Registrations the service reports gone are deleted;
a job that still failed after `max_attempts` goes to the dead-letter stream.
Acknowledged only when handled, so a worker killed meanwhile leaves it to another
(at-least-once; a kill between a push service's 2xx and marking it sent can notify twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from infra.metrics import push_failed
from infra.push.senders import Outcome, PushContent, Result, Sender
from models import PushPlatform, PushRegistration
from resolvers.ids import MessageIds, MessageRef
from resolvers.ports import PushQueue
from resolvers.push import Notification, forget_registrations, notifications_for
from resolvers.records import QueuedPushJob
from resolvers.services import Services

log = logging.getLogger("parley.push")

# Jobs resting until a retry hold no slot; up to this many per slot may rest at once, which
# bounds the memory of a worker whose every endpoint asks for retries.
RESTING_PER_SLOT = 4


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs: the `PARLEY_PUSH_*` settings of the same names (their defaults live there)."""

    include_body: bool
    coalesce_seconds: float
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    # The longest Retry-After of a known push service that is honoured.
    retry_after_max_seconds: float
    claim_idle_seconds: float
    concurrency: int
    # A job older than this (the notification's TTL) is dropped: push services would discard it too.
    max_age_seconds: float
    # On SIGTERM, in-flight jobs get this long to finish; the rest stay pending for another worker.
    shutdown_grace_seconds: float
    # How long a receive blocks; also how stale the liveness beat may get.
    wait_seconds: float = 1.0


def retry_delay(attempt: int, retry_after: float | None, config: WorkerConfig) -> float:
    """The wait after failed attempt `attempt`: the service's Retry-After (capped), else exponential backoff.

    The backoff has "equal jitter" (half fixed, half random).
    """
    if retry_after is not None:
        return min(config.retry_after_max_seconds, retry_after)
    delay = min(config.retry_max_seconds, config.retry_base_seconds * 2 ** (attempt - 1))
    return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret


class _Slots:
    """The worker's sending slots: how many jobs it asks the queue for (asyncio.Semaphore cannot say).

    A job holds one while it works and gives it back while it rests until a retry; waking,
    it takes one back ahead of new jobs.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._taken = 0
        self._waking: deque[asyncio.Future[None]] = deque()
        self._changed = asyncio.Event()

    def free(self) -> int:
        """Slots new jobs may take."""
        return 0 if self._waking else max(0, self._size - self._taken)

    def take(self, count: int) -> None:
        """New jobs take `count` slots."""
        self._taken += count

    def give_back(self) -> None:
        """A job ended or rests: its slot goes to a waking job, else to new ones."""
        self._taken -= 1
        while self._waking and self._taken < self._size:
            waiter = self._waking.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._taken += 1
        self._changed.set()

    async def take_back(self) -> None:
        """A rested job's slot: at once if one is free, else the next one given back."""
        if not self._waking and self._taken < self._size:
            self._taken += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waking.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._waking:
                self._waking.remove(waiter)
            elif not waiter.cancelled():
                self.give_back()  # handed a slot as it was cancelled
            raise

    def watch(self) -> None:
        """Starts watching for slots given back (before looking at `free`, so none is missed)."""
        self._changed.clear()

    async def changed(self, seconds: float) -> None:
        """Returns once a slot was given back since `watch`, or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)


class _Hold:
    """One job's slot."""

    def __init__(self, slots: _Slots) -> None:
        self._slots = slots
        self.held = True

    async def rest(self, seconds: float) -> None:
        """Sleeps without the slot, then takes one back."""
        self.release()
        await asyncio.sleep(seconds)
        await self._slots.take_back()
        self.held = True

    def release(self) -> None:
        """Gives the slot back (once)."""
        if self.held:
            self.held = False
            self._slots.give_back()


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
        max_handouts: int | None = None,
    ) -> None:
        self._services = services
        self._queue = queue
        self._senders = senders
        self._ids = ids
        self._config = config
        self._max_handouts = max_handouts or config.max_attempts
        self.consumer = f"worker-{uuid.uuid4().hex[:12]}"
        self._inflight: dict[asyncio.Task[None], str] = {}
        self._holds: dict[asyncio.Task[None], _Hold] = {}
        self._slots = _Slots(config.concurrency)
        self._max_held = config.concurrency * (1 + RESTING_PER_SLOT)
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
                self._slots.watch()
                free = min(self._slots.free(), self._max_held - len(self._inflight))
                if free <= 0:
                    await self._slots.changed(self._config.wait_seconds)
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
                self._slots.take(len(jobs))
                for job in jobs:
                    hold = _Hold(self._slots)
                    task = asyncio.create_task(self._handle(job, hold))
                    self._inflight[task] = job.id
                    self._holds[task] = hold
                    task.add_done_callback(self._finished)
        finally:
            await self._drain()
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    def _finished(self, task: asyncio.Task[None]) -> None:
        del self._inflight[task]
        self._holds.pop(task).release()

    async def _drain(self) -> None:
        tasks = list(self._inflight)
        if not tasks:
            return
        # A job resting until a retry has nothing in flight: it is left to another worker at once.
        resting = [task for task in tasks if not self._holds[task].held]
        for task in resting:
            task.cancel()
        if resting:
            log.info("stopping: %d push jobs waiting for a retry are left to another worker", len(resting))
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

    async def _handle(self, queued: QueuedPushJob, hold: _Hold) -> None:
        try:
            if queued.handed_out > self._max_handouts:
                log.error("push job %s handed out %d times; dead-lettered", queued.id, queued.handed_out)
                await self._queue.dead_letter(queued, f"handed out {queued.handed_out} times")
                return
            failures = await self._process(queued, hold)
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

    async def _process(self, queued: QueuedPushJob, hold: _Hold) -> list[str]:
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
        results = await self._deliver(
            [
                (
                    self._content(job.conversation_id, message_id, job.sender_display_name, note),
                    reg,
                    keys[reg.device_id],
                )
                for note, reg in todo
            ],
            hold,
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
    def _content(conversation_id: int, message_id: str, sender_name: str, note: Notification) -> PushContent:
        return PushContent(str(conversation_id), message_id, sender_name, note.count, note.body)

    async def _deliver(self, deliveries: list[tuple[PushContent, PushRegistration, str]], hold: _Hold) -> list[Result]:
        """Each (content, registration, sent key) until sent or failed for good; the job rests between retries."""
        results = [Result(Outcome.FAILED, "not attempted")] * len(deliveries)
        attempts = [0] * len(deliveries)
        due = dict.fromkeys(range(len(deliveries)), 0.0)
        while due:
            now = time.monotonic()
            ready = [index for index, at in due.items() if at <= now]
            if not ready:
                await hold.rest(min(due.values()) - now)
                continue
            answers = await asyncio.gather(*(self._attempt(*deliveries[index]) for index in ready))
            for index, result in zip(ready, answers, strict=True):
                attempts[index] += 1
                results[index] = result
                if result.outcome is Outcome.RETRY and attempts[index] < self._config.max_attempts:
                    due[index] = time.monotonic() + retry_delay(attempts[index], result.retry_after, self._config)
                else:
                    del due[index]
        return results

    async def _attempt(self, content: PushContent, registration: PushRegistration, key: str) -> Result:
        sender = self._senders.get(registration.platform)
        if sender is None:
            push_failed(registration.platform.value, "unconfigured")
            return Result(Outcome.FAILED, f"{registration.platform.value} is not configured")
        try:
            result = await sender.send(registration, content)
        except Exception as error:  # a sender bug must not stop the other deliveries
            log.exception("push sender %s raised", registration.platform.value)
            result = Result(Outcome.FAILED, f"{type(error).__name__}")
        if result.outcome is Outcome.SENT:
            await self._queue.mark_sent([key])
            return result
        push_failed(registration.platform.value, result.outcome.value)
        return result
