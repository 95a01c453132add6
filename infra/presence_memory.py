"""Presence for a single process (the embedded mode): counts and last seen in dicts, transitions through the hub."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from infra.presence_hub import HubWatchers, PresenceHub
from resolvers.records import PresenceChange, PresenceState


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryPresence(HubWatchers):
    """Presence for a single process (the embedded mode): the same transitions, through the in-process bus."""

    def __init__(self, hub: PresenceHub | None = None) -> None:
        self._hub = hub
        self._last_seen: dict[int, datetime] = {}
        self._connections: Counter[int] = Counter()
        self._seq: Counter[int] = Counter()

    async def touch(self, user_id: int) -> datetime:
        """Records activity now and returns the stored time."""
        now = _now()
        self._last_seen[user_id] = now
        return now

    async def last_seen(self, user_ids: Sequence[int]) -> dict[int, datetime]:
        """Last-seen times of those users that were ever seen."""
        return {uid: self._last_seen[uid] for uid in user_ids if uid in self._last_seen}

    async def online(self, user_ids: Sequence[int]) -> set[int]:
        """Those users with at least one live connection."""
        return {uid for uid in user_ids if self._connections[uid] > 0}

    async def states(self, user_ids: Sequence[int]) -> dict[int, PresenceState]:
        """Online, last seen and transition count of each user."""
        return {
            uid: PresenceState(self._connections[uid] > 0, self._last_seen.get(uid), self._seq[uid]) for uid in user_ids
        }

    async def connected(self, user_id: int) -> None:
        """A WebSocket of `user_id` opened on this process."""
        self._connections[user_id] += 1
        self._last_seen[user_id] = now = _now()
        if self._connections[user_id] == 1:
            await self._announce(user_id, True, now)

    async def disconnected(self, user_id: int) -> None:
        """A WebSocket of `user_id` closed on this process."""
        if self._connections[user_id] <= 0:
            return
        self._connections[user_id] -= 1
        self._last_seen[user_id] = now = _now()
        if self._connections[user_id] == 0:
            del self._connections[user_id]
            await self._announce(user_id, False, now)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Nothing to keep alive in one process."""
        yield

    async def _announce(self, user_id: int, online: bool, at: datetime) -> None:
        self._seq[user_id] += 1
        if self._hub is not None:
            # Shielded: a socket cancelled mid-handshake still announces what it counted.
            await asyncio.shield(self._hub.publish([PresenceChange(user_id, online, at, self._seq[user_id])]))
