"""Entry notices and signals to users' streams: one publish per event and shard, dispatched locally by user.

A process subscribes to a shard channel (`inbox:<n>`) once, while it holds any
stream of a user in that shard, and hands each notice to the local streams of the
users it names. So a group message costs one publish per shard, not one per
member, and one JSON decode per process, not one per stream (the design of
Centrifugo's and Phoenix's fan-out). Notices are hints: the database stays the
truth, and a stream that misses one replays from it.

Envelope on the bus (JSON, short keys because every process decodes every publish of
its shards): `{"d": [[user, seq, i], ...], "e": [event, ...]}` for entry notices,
where `i` indexes `e` (-1: the notice does not carry the entry's event; the events
are encoded by `resolvers/notice_codec.py`), and `{"n": {...}, "u": [user, ...]}`
for signals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson

from infra.bus import Subscription
from infra.shared_subscription import SharedSubscription
from resolvers.ports import Bus, Inbound
from resolvers.records import EntryNotice, SharedEvent, Signal

log = logging.getLogger("parley.fanout")

DEFAULT_SHARDS = 16


class Fanout:
    """`Fanout` over a `Bus`: the same code in the embedded (memory) and Redis modes."""

    def __init__(self, bus: Bus, *, shards: int = DEFAULT_SHARDS, max_queue: int = 1000) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self._bus = bus
        self._shards = shards
        self._max_queue = max_queue
        self._states: dict[int, SharedSubscription] = {}
        self._local: dict[int, set[Subscription[Inbound]]] = defaultdict(set)

    def _channel(self, shard: int) -> str:
        return f"inbox:{shard}"

    async def publish_entries(
        self, entries: Sequence[tuple[int, int, int]], events: Sequence[Mapping[str, Any] | None]
    ) -> None:
        """Publishes entry notices `(user, seq, event index)`, one message per shard touched."""
        by_shard: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        for user_id, seq, index in entries:
            by_shard[user_id % self._shards].append((user_id, seq, index if events[index] is not None else -1))
        wire_events = list(events)
        items = [
            (self._channel(shard), orjson.dumps({"d": rows, "e": wire_events}).decode())
            for shard, rows in by_shard.items()
        ]
        await self._bus.publish_many(items)

    async def publish_signal(self, user_ids: Sequence[int], data: dict[str, Any]) -> None:
        """Publishes a best-effort signal to these users' streams."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for user_id in user_ids:
            by_shard[user_id % self._shards].append(user_id)
        items = [
            (self._channel(shard), orjson.dumps({"n": data, "u": users}).decode()) for shard, users in by_shard.items()
        ]
        await self._bus.publish_many(items)

    @asynccontextmanager
    async def listen(self, user_id: int) -> AsyncIterator[Subscription[Inbound]]:
        """This process's feed of one user's notices, subscribed before it is yielded."""
        shard = user_id % self._shards
        state = self._states.get(shard)
        if state is None:
            state = self._states[shard] = SharedSubscription(
                self._bus, self._channel(shard), lambda source: self._pump(shard, source), name=f"parley.fanout:{shard}"
            )
        state.hold()
        feed: Subscription[Inbound] = Subscription(self._max_queue)
        try:
            # Shielded: a cancelled listener must not leave a shard subscription half opened.
            await asyncio.shield(state.open())
            self._local[user_id].add(feed)
            yield feed
        finally:
            listeners = self._local.get(user_id)
            if listeners is not None:
                listeners.discard(feed)
                if not listeners:
                    del self._local[user_id]
            feed._close()
            await asyncio.shield(self._release(shard, state))

    async def _release(self, shard: int, state: SharedSubscription) -> None:
        # Whoever started listening while it closed keeps this state and reopens it.
        if await state.release() and self._states.get(shard) is state:
            del self._states[shard]

    async def _pump(self, shard: int, source: AsyncIterator[Any]) -> None:
        async for item in source:
            if isinstance(item, str):
                try:
                    self._dispatch(orjson.loads(item))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
                    log.warning("dropped a malformed notice on shard %d", shard, exc_info=True)
                continue
            # The bus lost messages (reconnect, overflow): every local stream of the shard re-reads.
            for user_id, listeners in self._local.items():
                if user_id % self._shards == shard:
                    for feed in listeners:
                        feed._offer(item)

    def _dispatch(self, data: dict[str, Any]) -> None:
        local = self._local
        if "d" in data:
            shared = [SharedEvent(event) if event is not None else None for event in data["e"]]
            for user_id, seq, index in data["d"]:
                listeners = local.get(user_id)
                if listeners:
                    notice = EntryNotice(seq, shared[index] if index >= 0 else None)
                    for feed in listeners:
                        self._offer(feed, notice)
        else:
            signal = Signal(data["n"])
            for user_id in data["u"]:
                for feed in local.get(user_id, ()):
                    self._offer(feed, signal)

    def _offer(self, feed: Subscription[Inbound], item: Inbound) -> None:
        if feed._offer(item):
            log.warning("a stream fell %d notices behind: dropped them, it re-reads the database", self._max_queue)
