"""Reading subscriptions: the next event of a kind on the events stream, presence states."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.support.client import Json, Subscription
from tests.support.helpers import Person

PRESENCE = "subscription P($ids: [ID!]!) { presence(userIds: $ids) { online lastSeen user { id } } }"


def bodies(events: list[Json]) -> list[str | None]:
    """The bodies of the message events among `events`, in order."""
    return [e["message"]["body"] for e in events if e["__typename"] == "MessageEvent"]


async def before_marker(sub: Subscription, sender: Person, conversation_id: str, timeout: float = 10) -> list[Json]:
    """The events `sub` yields before a message `sender` sends now to `conversation_id` (the marker).

    The positive form of "nothing (more) arrives": whatever was due before the marker comes
    before it on the stream, so once it is in, the test has seen it all, without waiting a fixed time.
    """
    sent = await sender.send(conversation_id, "marker")
    events: list[Json] = []
    async with asyncio.timeout(timeout):
        while True:
            event: Json = (await sub.next())["events"]
            if event["__typename"] == "MessageEvent" and event["message"]["id"] == sent["id"]:
                return events
            events.append(event)


async def next_of(sub: Subscription, typename: str, timeout: float = 10) -> Json:
    """The next event of one kind, skipping others (e.g. conversation events)."""
    async with asyncio.timeout(timeout):
        while True:
            data = await sub.next()
            if data["events"]["__typename"] == typename:
                event: Json = data["events"]
                return event


@asynccontextmanager
async def watching(viewer: Person, *users: Person) -> AsyncIterator[Subscription]:
    """`viewer`'s presence subscription to `users`, on a socket of its own."""
    async with viewer.socket() as socket:
        yield await socket.subscribe(PRESENCE, ids=[u.user_id for u in users])


async def next_state(sub: Subscription, timeout: float = 10) -> Json:
    state: Json = (await sub.next(timeout))["presence"]
    return state
