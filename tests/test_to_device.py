"""To-device messages over the real API, in both modes: only the addressed device, in order, gone once acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from infra.app import Overrides, connected_services
from infra.settings import Settings
from models import EventKind, InboxEntry
from resolvers.ports import InboxStore
from resolvers.records import StoredEntry
from tests.support.client import Json, Subscription
from tests.support.faults import replacing
from tests.support.helpers import Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import before_marker

PER_MINUTE = 40
MAX_PAYLOAD = 12_000
# Larger than a notice carries (resolvers/to_device.py): the addressed stream reads it from the database.
LARGE = MAX_PAYLOAD - 10
SEND = "mutation T($m: [ToDeviceInput!]!) { sendToDevice(messages: $m) }"
BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
FIELDS = (
    "__typename ... on MessageEvent { cursor message { id body } } "
    "... on ToDeviceEvent { cursor type payload senderDeviceId sender { id username } }"
)
EVENTS = f"subscription E($after: String) {{ events(after: $after) {{ {FIELDS} }} }}"
PENDING = f"query P {{ pendingEvents(first: 500) {{ {FIELDS} }} }}"


@dataclass
class Rig:
    """A server of this module's own (small to-device limits) and its settings, to look into its database."""

    api: Api
    settings: Settings

    async def stored(self, person: Person) -> int:
        """How many to-device entries `person`'s inbox holds."""
        async with (
            connected_services(self.settings, Overrides(fast_password_hashing=True)) as services,
            services.db.session() as session,
        ):
            count = await session.scalar(
                select(func.count()).where(
                    col(InboxEntry.user_id) == int(person.user_id), col(InboxEntry.kind) == EventKind.TO_DEVICE
                )
            )
        return int(count or 0)


@pytest.fixture(scope="module", params=["embedded", "production"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """In production mode it shares the run's database, with a Redis namespace of its own."""
    limits: dict[str, object] = {"to_device_per_minute": PER_MINUTE, "max_to_device_payload_bytes": MAX_PAYLOAD}
    if request.param == "embedded":
        settings = embedded_settings(Path(tmp_path_factory.mktemp("to_device")), **limits)
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}to_device:"), **limits
        )
    with ThreadServer(settings) as server:
        yield Rig(Api(url=server.url, ws_url=server.ws_url, mode=request.param), settings)


def message(device: Person, payload: str, kind: str = "m.test") -> Json:
    return {"deviceId": device.device_id, "type": kind, "payload": payload}


async def send(sender: Person, *messages: Json) -> bool:
    answer: bool = (await sender.data(SEND, m=list(messages)))["sendToDevice"]
    return answer


@asynccontextmanager
async def stream(person: Person) -> AsyncIterator[Subscription]:
    """`person`'s live events, with to-device fields."""
    async with person.socket() as socket:
        yield await socket.subscribe(EVENTS)


def payloads(events: list[Json]) -> list[str]:
    return [e["payload"] for e in events if e["__typename"] == "ToDeviceEvent"]


async def pending(person: Person) -> list[Json]:
    events: list[Json] = (await person.data(PENDING))["pendingEvents"]
    return events


async def test_a_message_reaches_only_its_device_in_order_live_and_on_replay(rig: Rig) -> None:
    """Bob's first phone gets Alice's messages live and replayed, in order; his second never sees them."""
    alice, bob = await rig.api.people("alice", "bob")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)

    async with stream(bob) as phone_live, stream(bob_tablet) as tablet_live:
        assert await send(alice, message(bob, "first"), message(bob, "second", "m.room_key"), message(bob, "third"))
        phone_events = await before_marker(phone_live, alice, direct)
        tablet_events = await before_marker(tablet_live, alice, direct)

    assert payloads(phone_events) == ["first", "second", "third"]
    received = [e for e in phone_events if e["__typename"] == "ToDeviceEvent"]
    assert received[0]["sender"] == {"id": alice.user_id, "username": alice.username}
    assert received[0]["senderDeviceId"] == alice.device_id
    assert [e["type"] for e in received] == ["m.test", "m.room_key", "m.test"]
    assert payloads(tablet_events) == []

    assert payloads(await pending(bob)) == ["first", "second", "third"]
    assert payloads(await pending(bob_tablet)) == []


async def test_a_payload_too_large_to_carry_still_reaches_only_its_device_live(rig: Rig) -> None:
    """A payload the notice does not carry is read from the database by its device; the other device skips it."""
    alice, bob = await rig.api.people("alice", "bob")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)
    large = "x" * LARGE

    async with stream(bob) as phone_live, stream(bob_tablet) as tablet_live:
        assert await send(alice, message(bob_tablet, large), message(bob, "small"))
        assert payloads(await before_marker(tablet_live, alice, direct)) == [large]
        assert payloads(await before_marker(phone_live, alice, direct)) == ["small"]


async def test_ones_own_other_devices_are_reachable_but_not_the_sending_one(rig: Rig) -> None:
    """A user sends to their own tablet (a stranger need share nothing); to the very device sending it is refused."""
    (alice,) = await rig.api.people("alice")
    tablet = await alice.other_device("tablet")
    assert await send(alice, message(tablet, "hello me"))
    assert payloads(await pending(tablet)) == ["hello me"]
    assert payloads(await pending(alice)) == []
    assert await alice.error(SEND, m=[message(alice, "loop")]) == "BAD_USER_INPUT"


async def test_an_acknowledged_message_is_gone_from_the_database(rig: Rig) -> None:
    """Stored until its device acknowledges it, then deleted."""
    alice, bob = await rig.api.people("alice", "bob")
    await alice.direct_with(bob)
    await bob.drain()
    assert await send(alice, message(bob, "key one"), message(bob, "key two"))
    assert await rig.stored(bob) == 2

    events = await pending(bob)
    assert payloads(events) == ["key one", "key two"]
    await bob.acknowledge(events[-1]["cursor"])

    assert await rig.stored(bob) == 0
    assert payloads(await pending(bob)) == []


async def test_with_two_devices_it_is_deleted_once_the_other_device_is_past_it_too(rig: Rig) -> None:
    """The tablet never sees the phone's message, yet passes it by acknowledging a later event: then it is gone."""
    alice, bob = await rig.api.people("alice", "bob")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)
    await bob.drain()
    await bob_tablet.drain()
    assert await send(alice, message(bob, "for the phone"))
    phone_events = await pending(bob)
    await bob.acknowledge(phone_events[-1]["cursor"])
    assert await rig.stored(bob) == 1  # the tablet's position is still before it

    later = await alice.send(direct, "hello both")
    tablet_events = await pending(bob_tablet)
    assert [e["message"]["id"] for e in tablet_events if e["__typename"] == "MessageEvent"] == [later["id"]]
    await bob_tablet.acknowledge(tablet_events[-1]["cursor"])
    assert await rig.stored(bob) == 0


async def test_a_device_of_anyone_else_is_not_found_and_nothing_is_sent(rig: Rig) -> None:
    """A stranger's device, an unknown id and a malformed one answer alike, and the reachable message is not sent."""
    alice, bob, stranger = await rig.api.people("alice", "bob", "stranger")
    await alice.direct_with(bob)
    answers: set[str] = set()
    for unreachable in (stranger.device_id, "999999999", "not-an-id"):
        failed = await alice.http.error(SEND, m=[message(bob, "leak?"), {**message(bob, "x"), "deviceId": unreachable}])
        answers.add(f"{failed.code}: {failed.errors[0]['message']}")
    assert len(answers) == 1  # one answer, naming no device
    assert next(iter(answers)).startswith("NOT_FOUND")
    assert payloads(await pending(bob)) == []
    assert payloads(await pending(stranger)) == []


async def test_a_recipient_who_blocked_the_sender_gets_nothing_and_the_sender_is_not_told(rig: Rig) -> None:
    """Bob blocked Alice: her call succeeds, Carol (in the same call) gets hers, Bob gets nothing and stores nothing."""
    alice, bob, carol = await rig.api.people("alice", "bob", "carol")
    group = await alice.create_group("trio", members=[bob, carol])
    await bob.data(BLOCK, u=alice.user_id)

    async with stream(bob) as bob_live:
        assert await send(alice, message(bob, "for bob"), message(carol, "for carol"))
        assert payloads(await before_marker(bob_live, carol, group)) == []

    assert payloads(await pending(carol)) == ["for carol"]
    assert payloads(await pending(bob)) == []
    assert await rig.stored(bob) == 0


async def test_type_payload_and_count_are_limited(rig: Rig) -> None:
    """Types of 1 to 64 visible ASCII characters, payloads within the setting, 1 to 100 messages: else BAD_USER_INPUT."""
    alice, bob = await rig.api.people("alice", "bob")
    await alice.direct_with(bob)
    for kind in ("", "x" * 65, "has space", "é"):
        assert await alice.error(SEND, m=[message(bob, "p", kind)]) == "BAD_USER_INPUT", kind
    assert await alice.error(SEND, m=[message(bob, "p" * (MAX_PAYLOAD + 1))]) == "BAD_USER_INPUT"
    assert await alice.error(SEND, m=[message(bob, "é" * (MAX_PAYLOAD // 2 + 1))]) == "BAD_USER_INPUT"  # bytes
    assert await alice.error(SEND, m=[]) == "BAD_USER_INPUT"
    assert await alice.error(SEND, m=[message(bob, "p")] * 101) == "BAD_USER_INPUT"
    assert payloads(await pending(bob)) == []

    assert await send(alice, message(bob, "p" * MAX_PAYLOAD, "x" * 64))
    assert payloads(await pending(bob)) == ["p" * MAX_PAYLOAD]


async def test_the_rate_limit_counts_messages_not_calls(rig: Rig) -> None:
    """One call of 30 and one of 10 fit a budget of 40 a minute; one more message is RATE_LIMITED and not sent."""
    alice, bob = await rig.api.people("alice", "bob")
    await alice.direct_with(bob)
    assert await send(alice, *[message(bob, f"a{i}") for i in range(30)])
    assert await send(alice, *[message(bob, f"b{i}") for i in range(PER_MINUTE - 30)])
    assert await alice.error(SEND, m=[message(bob, "over")]) == "RATE_LIMITED"
    delivered = payloads(await pending(bob))
    assert len(delivered) == PER_MINUTE
    assert "over" not in delivered


class CountingReads:
    """The real inbox store, counting reads of the inbox."""

    def __init__(self, inner: InboxStore) -> None:
        self._inner = inner
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def read_after(self, *, user_id: int, device_id: int, after: int, limit: int) -> list[StoredEntry] | None:
        self.reads += 1
        return await self._inner.read_after(user_id=user_id, device_id=device_id, after=after, limit=limit)


async def test_live_to_device_messages_need_no_database_read_on_either_device(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    """The addressed stream yields the carried message and the user's other stream passes its position, unread."""
    counting: list[CountingReads] = []

    def count(services: Any) -> CountingReads:
        counting.append(CountingReads(services.inbox_store))
        return counting[-1]

    settings = production_settings(migrated_postgres, replace(redis_target, prefix=f"{redis_target.prefix}td_reads:"))
    with ThreadServer(settings, replacing(inbox_store=count)) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="production")
        alice, bob = await api.people("alice", "bob")
        bob_tablet = await bob.other_device("tablet")
        direct = await alice.direct_with(bob)
        async with stream(bob) as phone_live, stream(bob_tablet) as tablet_live:
            # Both streams past their initial replay: a message sent now arrives on each.
            await before_marker(phone_live, alice, direct)
            await before_marker(tablet_live, alice, direct)
            reads = counting[0].reads
            for n in range(5):
                assert await send(alice, message(bob, f"key {n}"))
            assert payloads(await before_marker(phone_live, alice, direct)) == [f"key {n}" for n in range(5)]
            assert payloads(await before_marker(tablet_live, alice, direct)) == []
            assert counting[0].reads == reads, "to-device notices were followed without reading the inbox"
