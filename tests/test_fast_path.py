"""The hot path's promises: live events without database reads, fan-out by shard, batched acknowledgements.

Each runs against a real server in the production mode (PostgreSQL + Redis), with
the store or the bus wrapped to count what the server does.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from resolvers.ports import Bus, InboxStore, Resync
from resolvers.records import AckOutcome, AttachmentClaim, EarlierSend, SendOutcome, StoredEntry
from resolvers.services import Services
from tests.support.client import Subscription
from tests.support.database_dump import dump_settings_tables
from tests.support.faults import replacing
from tests.support.helpers import Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import production_settings
from tests.support.streams import before_marker, bodies, next_of

TYPING = "mutation T($c: ID!) { setTyping(conversationId: $c, typing: true) }"


class CountingStore:
    """The real store, counting reads of the inbox."""

    def __init__(self, inner: InboxStore) -> None:
        self._inner = inner
        self.reads = 0

    async def device_for_token(
        self, token_hash: str, *, now: datetime, touch_before: datetime
    ) -> tuple[int, int] | None:
        return await self._inner.device_for_token(token_hash, now=now, touch_before=touch_before)

    async def send(
        self,
        *,
        sender_id: int,
        device_id: int,
        conversation_id: int,
        client_id: str,
        body: str | None,
        sent_at: datetime,
        attachments: AttachmentClaim | None = None,
        reply_to: tuple[int, int] | None = None,
        mentions: Sequence[int] = (),
        ciphertext: str | None = None,
    ) -> SendOutcome:
        return await self._inner.send(
            sender_id=sender_id,
            device_id=device_id,
            conversation_id=conversation_id,
            client_id=client_id,
            body=body,
            sent_at=sent_at,
            attachments=attachments,
            reply_to=reply_to,
            mentions=mentions,
            ciphertext=ciphertext,
        )

    async def earlier_send(self, sender_id: int, client_id: str) -> EarlierSend | None:
        return await self._inner.earlier_send(sender_id, client_id)

    async def acknowledge(self, *, user_id: int, device_id: int, seq: int, at: datetime) -> AckOutcome:
        return await self._inner.acknowledge(user_id=user_id, device_id=device_id, seq=seq, at=at)

    async def delete_orphans(self, message_ids: Sequence[int]) -> int:
        return await self._inner.delete_orphans(message_ids)

    async def positions(self, device_id: int) -> tuple[int, int] | None:
        return await self._inner.positions(device_id)

    async def read_after(self, *, user_id: int, device_id: int, after: int, limit: int) -> list[StoredEntry] | None:
        self.reads += 1
        return await self._inner.read_after(user_id=user_id, device_id=device_id, after=after, limit=limit)


class RecordingBus:
    """The real bus, recording every published (channel, message) and able to drop the next N."""

    def __init__(self, inner: Bus) -> None:
        self._inner = inner
        self.published: list[tuple[str, str]] = []
        self.drop_next = 0
        self.hold_next = False
        self._held: Sequence[tuple[str, str]] = ()

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        self.published.extend(items)
        if self.drop_next > 0:
            self.drop_next -= 1
            return
        if self.hold_next:  # published right after the next publish: that one overtakes it
            self.hold_next, self._held = False, items
            return
        await self._inner.publish_many(items)
        held, self._held = self._held, ()
        if held:
            await self._inner.publish_many(held)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str | Resync]]:
        return self._inner.subscribe(channel)

    async def ping(self) -> None:
        await self._inner.ping()


@dataclass
class Observed:
    """A production-mode server whose bus and delivery store are wrapped to be watched."""

    api: Api
    bus: RecordingBus
    store: CountingStore


@contextmanager
def observed_server(postgres: str, redis: RedisTarget) -> Iterator[Observed]:
    """A real server (PostgreSQL + Redis) with a recording bus and a counting store."""
    wrapped: dict[str, Any] = {}

    def wrap(name: str, make: Callable[[Any], Any]) -> Callable[[Services], Any]:
        def factory(services: Services) -> Any:
            wrapped[name] = make(getattr(services, name))
            return wrapped[name]

        return factory

    overrides = replacing(bus=wrap("bus", RecordingBus), inbox_store=wrap("inbox_store", CountingStore))
    with ThreadServer(production_settings(postgres, redis), overrides) as server:
        yield Observed(Api(server.url, server.ws_url, "production"), wrapped["bus"], wrapped["inbox_store"])


@asynccontextmanager
async def bob_listening(api: Api) -> AsyncIterator[tuple[Person, str, Subscription]]:
    """Alice, her direct conversation with Bob, and Bob's live stream past its initial replay."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    async with bob.events() as bob_events:
        # Past its replay and following notices once a message sent now has arrived.
        assert await before_marker(bob_events, alice, direct) == []
        yield alice, direct, bob_events


async def test_live_events_are_delivered_from_notices_without_reading_the_database(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    with observed_server(migrated_postgres, redis_target) as observed:
        api = observed.api
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await bob.drain()
        async with alice.events() as alice_events, bob.events() as bob_events:
            # Both streams past their initial replay: a message sent now arrives on each.
            await before_marker(alice_events, bob, direct)  # after the conversation's creation, replayed
            assert await before_marker(bob_events, alice, direct) == []
            store = observed.store
            reads_before = store.reads
            for n in range(20):
                await alice.send(direct, f"live {n}")
                received = await next_of(bob_events, "MessageEvent")
                assert received["message"]["body"] == f"live {n}"
                assert received["message"]["sender"]["username"] == alice.username
                await bob.acknowledge(str(received["cursor"]))
                receipt = await next_of(alice_events, "ReceiptEvent")
                assert receipt["receipt"]["status"] == "DELIVERED"
                assert receipt["receipt"]["messageId"] == received["message"]["id"]
            assert store.reads == reads_before, "live messages and receipts came from their notices"


async def test_a_lost_notice_is_recovered_by_the_next_one_in_order(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    with observed_server(migrated_postgres, redis_target) as observed:
        async with bob_listening(observed.api) as (alice, direct, bob_events):
            observed.bus.drop_next = 1
            await alice.send(direct, "its notice is lost")
            # Nothing reads it before a notice shows the gap: a typing signal (no entry) comes first.
            await alice.data(TYPING, c=direct)
            assert (await bob_events.next())["events"]["__typename"] == "TypingEvent"
            await alice.send(direct, "this one's notice reveals the gap")
            first = await next_of(bob_events, "MessageEvent")
            second = await next_of(bob_events, "MessageEvent")
            assert [first["message"]["body"], second["message"]["body"]] == [
                "its notice is lost",
                "this one's notice reveals the gap",
            ]
            assert await before_marker(bob_events, alice, direct) == []


async def test_notices_that_overtake_each_other_are_put_back_in_order_without_a_read(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    with observed_server(migrated_postgres, redis_target) as observed:
        async with bob_listening(observed.api) as (alice, direct, bob_events):
            reads_before = observed.store.reads
            observed.bus.hold_next = True  # the first message's notice goes out after the second's
            await alice.send(direct, "first")
            await alice.send(direct, "second")
            received = [await next_of(bob_events, "MessageEvent") for _ in range(2)]
            assert [e["message"]["body"] for e in received] == ["first", "second"]
            assert int(received[1]["cursor"]) == int(received[0]["cursor"]) + 1
            assert observed.store.reads == reads_before, "held until the late notice came, not read again"


async def test_a_group_message_is_one_publish_per_shard_not_per_member(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    with observed_server(migrated_postgres, redis_target) as observed:
        api = observed.api
        people = await asyncio.gather(*(api.register(f"m{n}") for n in range(40)))
        owner, *members = people
        group = await owner.create_group("forty", members=members)
        listener = members[-1]
        await listener.drain()
        async with listener.events() as events:
            assert await before_marker(events, owner, group) == []  # past its replay
            observed.bus.published.clear()
            await owner.send(group, "to all forty")
            assert (await next_of(events, "MessageEvent"))["message"]["body"] == "to all forty"
        publishes = [channel for channel, _ in observed.bus.published if "inbox:" in channel]
        assert 1 <= len(publishes) <= 16 < len(members), publishes


async def test_concurrent_acknowledgements_of_a_group_message_leave_no_copy_and_every_receipt(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    settings = production_settings(migrated_postgres, redis_target)
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        people = await asyncio.gather(*(api.register(f"a{n}") for n in range(30)))
        owner, *members = people
        group = await owner.create_group("thirty", members=members)
        await asyncio.gather(owner.drain(), *(m.drain() for m in members))
        secret = f"gone-after-ack-{uuid.uuid4().hex}"
        sent = await owner.send(group, secret)
        pending = await asyncio.gather(*(m.pending() for m in members))
        assert all(bodies(events) == [secret] for events in pending)
        # Everyone acknowledges at once: the acknowledgements share statements, and the last
        # prune of the message must see every other member's.
        await asyncio.gather(*(m.acknowledge(events[-1]["cursor"]) for m, events in zip(members, pending, strict=True)))
        assert secret not in await dump_settings_tables(settings)
        receipts = [e for e in await owner.pending() if e["__typename"] == "ReceiptEvent"]
        readers = {r["receipt"]["user"]["id"] for r in receipts if r["receipt"]["messageId"] == sent["id"]}
        assert readers == {m.user_id for m in members}
