"""Presence transitions over the bus, handed to this process's watchers by user (`PresenceHub`).

Transitions are published on the bus (`presence` channel) with the user's
transition number, and each process hands them to its local watchers: a watcher
drops what its first read of the state already showed and anything that arrives
out of order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Self

import orjson

from infra.bus import Resync
from infra.shared_subscription import SharedSubscription
from resolvers.ports import Bus
from resolvers.records import PresenceChange

log = logging.getLogger("parley.presence")

CHANNEL = "presence"


def from_epoch(epoch: float | str | bytes | None) -> datetime | None:
    """The time of epoch seconds (as the bus and Redis carry last seen); None stays None."""
    return datetime.fromtimestamp(float(epoch), UTC) if epoch is not None else None


# What a watcher is told when someone it watches became visible (or hidden) without a transition.
_REVEALED = Resync("visibility changed")


class PresenceFeed:
    """One watcher's queue: batches of changes, or a Resync when changes were lost (overflow, bus outage)."""

    def __init__(self, user_ids: Sequence[int], max_queue: int) -> None:
        self.user_ids = frozenset(user_ids)
        self._max = max_queue
        self._items: list[PresenceChange] = []
        self._resync: Resync | None = None
        self._closed = False
        self._wake = asyncio.Event()

    def offer(self, change: PresenceChange) -> None:
        if len(self._items) >= self._max:
            # Ephemeral state: a watcher that fell behind re-reads it instead of growing without bound.
            self.resync(Resync("overflow"))
            return
        self._items.append(change)
        self._wake.set()

    def resync(self, notice: Resync) -> None:
        self._items.clear()  # the re-read covers them
        self._resync = notice
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Sequence[PresenceChange] | Resync:
        while True:
            if self._resync is not None:
                notice, self._resync = self._resync, None
                return notice
            if self._items:
                batch, self._items = self._items, []
                return batch
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class PresenceHub:
    """Transitions over the bus, dispatched to this process's watchers by user.

    One subscription to the `presence` channel per process while it has any watcher
    (as infra/fanout.py does for inboxes): one decode per transition and process.
    """

    def __init__(self, bus: Bus, *, max_queue: int = 1000) -> None:
        self._bus = bus
        self._max_queue = max_queue
        self._watchers: dict[int, set[PresenceFeed]] = {}
        self._subscription = SharedSubscription(bus, CHANNEL, self._run, name="parley.presence.hub")

    async def publish(self, changes: Sequence[PresenceChange]) -> None:
        """Announces transitions to every process's watchers; best effort (logs instead of raising)."""
        if not changes:
            return
        wire = [[c.user_id, int(c.online), c.last_seen.timestamp() if c.last_seen else None, c.seq] for c in changes]
        try:
            await self._bus.publish_many([(CHANNEL, orjson.dumps(wire).decode())])
        except Exception:
            log.warning("could not announce %d presence transitions", len(changes), exc_info=True)

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Makes every process's watchers of these users read their state again; best effort."""
        if not user_ids:
            return
        try:
            await self._bus.publish_many([(CHANNEL, orjson.dumps({"reveal": list(user_ids)}).decode())])
        except Exception:
            log.warning("could not announce a presence visibility change", exc_info=True)

    @asynccontextmanager
    async def watch(self, user_ids: Sequence[int]) -> AsyncIterator[PresenceFeed]:
        """A feed of these users' transitions, subscribed before it is yielded."""
        feed = PresenceFeed(user_ids, self._max_queue)
        self._subscription.hold()
        try:
            # Shielded: a cancelled watcher must not leave the subscription half opened.
            await asyncio.shield(self._subscription.open())
            for user_id in feed.user_ids:
                self._watchers.setdefault(user_id, set()).add(feed)
            yield feed
        finally:
            for user_id in feed.user_ids:
                watchers = self._watchers.get(user_id)
                if watchers is not None:
                    watchers.discard(feed)
                    if not watchers:
                        del self._watchers[user_id]
            feed.close()
            await asyncio.shield(self._subscription.release())

    async def _run(self, source: AsyncIterator[str | Any]) -> None:
        async for item in source:
            if not isinstance(item, str):  # the bus may have lost transitions: every watcher re-reads
                for feed in {f for feeds in self._watchers.values() for f in feeds}:
                    feed.resync(item)
                continue
            try:
                self._dispatch(orjson.loads(item))
            except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
                log.warning("dropped a malformed presence notice", exc_info=True)
        # The bus has shut down: watchers end.
        for feed in {f for feeds in self._watchers.values() for f in feeds}:
            feed.close()

    def _dispatch(self, wire: list[list[Any]] | dict[str, list[int]]) -> None:
        if isinstance(wire, dict):  # who may see these users changed: their watchers read again
            revealed = {f for user_id in wire.get("reveal", ()) for f in self._watchers.get(int(user_id), ())}
            for feed in revealed:
                feed.resync(_REVEALED)
            return
        for user_id, online, seen, seq in wire:
            feeds = self._watchers.get(int(user_id))
            if feeds:
                change = PresenceChange(int(user_id), bool(online), from_epoch(seen), int(seq))
                for feed in feeds:
                    feed.offer(change)


class HubWatchers:
    """What both presence backends do alike: watching and revealing go through the hub."""

    _hub: PresenceHub | None

    def watch(self, user_ids: Sequence[int]) -> AbstractAsyncContextManager[PresenceFeed]:
        """This process's feed of those users' transitions."""
        if self._hub is None:
            raise RuntimeError("presence was built without a hub")
        return self._hub.watch(user_ids)

    async def reveal(self, user_ids: Sequence[int]) -> None:
        """Makes the watchers of these users read again what they may see (best effort)."""
        if self._hub is not None:
            await self._hub.reveal(user_ids)
