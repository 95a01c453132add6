"""Store-and-forward delivery, receipts and the events stream, in both modes."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.support.client import GraphQLFailed, Json, ws_connect
from tests.support.database_dump import dump_all_tables
from tests.support.helpers import EVENTS, Api, Person
from tests.support.streams import before_marker, bodies, next_of


async def test_live_message_then_delivered_then_read(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    async with alice.events() as alice_events, bob.events() as bob_events:
        sent = await alice.send(direct, "hello bob")
        received = await next_of(bob_events, "MessageEvent")
        assert received["message"]["body"] == "hello bob"
        assert received["message"]["id"] == sent["id"]
        assert received["message"]["sender"]["id"] == alice.user_id

        await bob.acknowledge(str(received["cursor"]))
        delivered = await next_of(alice_events, "ReceiptEvent")
        assert delivered["receipt"] == {
            "conversationId": direct,
            "messageId": sent["id"],
            "status": "DELIVERED",
            "at": delivered["receipt"]["at"],
            "user": {"id": bob.user_id},
        }
        await bob.mark_read(direct, sent["id"])
        read = await next_of(alice_events, "ReceiptEvent")
        assert read["receipt"]["status"] == "READ"
        assert read["receipt"]["messageId"] == sent["id"]


async def test_offline_recipient_gets_every_message_in_order_once(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    for n in range(50):
        await alice.send(direct, f"message {n}")
    expected = [f"message {n}" for n in range(50)]

    async def replay() -> list[Json]:
        """What a new stream replays before a marker sent once it has replayed 50 events."""
        got: list[Json] = []
        async with bob.events() as events:
            while len(got) < 50:
                got.append((await events.next())["events"])
            got += await before_marker(events, alice, direct)
        return got

    first = await replay()
    assert bodies(first) == expected
    cursors = [int(str(e["cursor"])) for e in first]
    assert cursors == sorted(set(cursors)), "cursors increase, no duplicate"
    # Not acknowledged: delivered again, the first replay's marker after them.
    assert bodies(await replay()) == [*expected, "marker"]
    await bob.acknowledge(str(first[24]["cursor"]))
    assert bodies(await bob.pending()) == [*expected[25:], "marker", "marker"]


async def test_same_client_id_yields_one_message(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    client_id = uuid.uuid4().hex
    first = await alice.send(direct, "once", client_id=client_id)
    again = await alice.send(direct, "once", client_id=client_id)
    assert again["id"] == first["id"]
    assert again["sentAt"] == first["sentAt"]
    racing = await asyncio.gather(*(alice.send(direct, "race", client_id="race-1") for _ in range(5)))
    assert len({m["id"] for m in racing}) == 1
    assert bodies(await bob.pending()) == ["once", "race"]

    await bob.drain()  # delivered and deleted; a late retry still answers the same message
    late = await alice.send(direct, "once", client_id=client_id)
    assert late["id"] == first["id"]
    assert await bob.pending() == []


async def test_message_reaches_all_99_others_in_a_group_of_100(api: Api) -> None:
    owner = await api.register("owner")
    others = await asyncio.gather(*(api.register(f"g{i}") for i in range(99)))
    group = await owner.create_group("hundred", members=list(others))
    async with others[0].events() as live:
        sent = await owner.send(group, "to everyone")
        assert (await next_of(live, "MessageEvent"))["message"]["id"] == sent["id"]
    pending = await asyncio.gather(*(person.pending() for person in others))
    assert all(bodies(events) == ["to everyone"] for events in pending)


async def test_offline_sender_gets_delivered_and_read_receipts_later(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await alice.drain()
    sent = await alice.send(direct, "are you there?")
    # Alice is offline from here on; Bob receives, acknowledges and reads.
    events = await bob.pending()
    await bob.acknowledge(str(events[-1]["cursor"]))
    await bob.mark_read(direct, sent["id"])
    receipts = [e["receipt"] for e in await alice.pending() if e["__typename"] == "ReceiptEvent"]
    assert [(r["status"], r["messageId"], r["user"]["id"]) for r in receipts] == [
        ("DELIVERED", sent["id"], bob.user_id),
        ("READ", sent["id"], bob.user_id),
    ]


async def test_receipts_are_watermarks(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await alice.drain()
    await bob.drain()
    sent = [await alice.send(direct, f"m{n}") for n in range(5)]
    events = await bob.pending()
    await bob.acknowledge(str(events[-1]["cursor"]))
    await bob.acknowledge(str(events[-1]["cursor"]))  # repeated: nothing new
    await bob.mark_read(direct, sent[4]["id"])
    await bob.mark_read(direct, sent[2]["id"])  # older than the mark: nothing new
    receipts = [e["receipt"] for e in await alice.pending() if e["__typename"] == "ReceiptEvent"]
    assert [(r["status"], r["messageId"]) for r in receipts] == [
        ("DELIVERED", sent[4]["id"]),
        ("READ", sent[4]["id"]),
    ]


async def test_all_devices_of_every_member_receive_and_the_sender_can_drop_its_own(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    alice_laptop = await alice.other_device("laptop")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)
    sent = await alice.send(direct, "everywhere", client_id="everywhere-1")
    for device in (bob, bob_tablet, alice_laptop):
        assert bodies(await device.pending()) == ["everywhere"]
    own = [e for e in await alice.pending() if e["__typename"] == "MessageEvent"]
    assert [e["message"]["clientId"] for e in own] == [sent["clientId"]]


async def test_acknowledged_message_is_gone_from_every_table(api: Api, request: pytest.FixtureRequest) -> None:
    alice, bob = await api.people("alice", "bob")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)
    secret = f"secret-body-{uuid.uuid4().hex}"
    await alice.send(direct, secret)
    assert secret in await dump_all_tables(api, request)

    await bob.drain()
    assert secret in await dump_all_tables(api, request), "the tablet has not received it yet"
    await bob_tablet.drain()
    assert secret not in await dump_all_tables(api, request)


async def test_logout_drops_that_device_s_pending_events(api: Api, request: pytest.FixtureRequest) -> None:
    alice, bob = await api.people("alice", "bob")
    bob_laptop = await bob.other_device("laptop")
    direct = await alice.direct_with(bob)
    secret = f"logout-body-{uuid.uuid4().hex}"
    await alice.send(direct, secret)
    await bob_laptop.drain()
    assert secret in await dump_all_tables(api, request), "the phone has not received it yet"
    await bob.data("mutation { logout }")
    assert secret not in await dump_all_tables(api, request)


async def test_concurrent_senders_arrive_without_gap_or_duplicate(api: Api) -> None:
    receiver = await api.register("receiver")
    senders = await asyncio.gather(*(api.register(f"s{i}") for i in range(4)))
    group = await senders[0].create_group(members=[receiver, *senders[1:]])
    await receiver.drain()
    async with receiver.events() as events:

        async def burst(sender: Person) -> None:
            for n in range(15):
                await sender.send(group, f"{sender.username}:{n}")

        await asyncio.gather(*(burst(s) for s in senders))
        got = [(await next_of(events, "MessageEvent"))["message"]["body"] for _ in range(60)]
        assert await before_marker(events, senders[0], group) == []
    assert len(set(got)) == 60
    for sender in senders:
        assert [b for b in got if str(b).startswith(sender.username + ":")] == [
            f"{sender.username}:{n}" for n in range(15)
        ]


async def test_removed_member_stops_receiving_and_new_member_gets_no_history(api: Api) -> None:
    owner, member, later = await api.people("owner", "member", "later")
    group = await owner.create_group(members=[member])
    direct = await owner.direct_with(member)  # for the marker
    await owner.send(group, "before")
    async with member.events() as member_events:
        assert (await next_of(member_events, "MessageEvent"))["message"]["body"] == "before"
        await owner.data(
            "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { id } }",
            c=group,
            u=member.user_id,
        )
        removed = await next_of(member_events, "ConversationEvent")
        assert removed["change"] == "MEMBER_REMOVED"
        await owner.send(group, "after removal")
        assert await before_marker(member_events, owner, direct) == []
    assert "after removal" not in bodies(await member.pending())

    await owner.data(
        "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }",
        c=group,
        u=[later.user_id],
    )
    await owner.send(group, "welcome")
    assert bodies(await later.pending()) == ["welcome"]


async def test_bad_messages_and_cursors_are_refused(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    send = "mutation S($i: SendMessageInput!) { sendMessage(input: $i) { id } }"

    async def code(**fields: object) -> str:
        return await alice.error(send, i={"conversationId": direct, "clientId": uuid.uuid4().hex, **fields})

    assert await code(body="") == "BAD_USER_INPUT"
    assert await code(body="   ") == "BAD_USER_INPUT"
    assert await code() == "BAD_USER_INPUT"
    assert await code(body="x" * 4001) == "BAD_USER_INPUT"
    assert await code(body="hi", attachmentIds=["nope"]) == "BAD_USER_INPUT"
    assert await code(body="hi", attachmentIds=[str(n) for n in range(11)]) == "BAD_USER_INPUT"
    assert await code(body="hi", clientId="") == "BAD_USER_INPUT"
    assert await code(body="hi", clientId="c" * 65) == "BAD_USER_INPUT"
    await alice.send(direct, "x" * 4000)

    ack = "mutation A($c: String!) { acknowledge(cursor: $c) }"
    assert await bob.error(ack, c="not-a-cursor") == "BAD_USER_INPUT"
    assert await bob.error(ack, c="99999999") == "BAD_USER_INPUT"
    assert await bob.error("{ pendingEvents(first: 0) { __typename } }") == "BAD_USER_INPUT"
    assert await bob.error('{ pendingEvents(after: "99999999") { __typename } }') == "BAD_USER_INPUT"
    assert await bob.error('{ pendingEvents(after: "-1") { __typename } }') == "BAD_USER_INPUT"
    assert await bob.error("{ pendingEvents(first: 501) { __typename } }") == "BAD_USER_INPUT"
    mark = "mutation M($c: ID!, $m: [ID!]!) { markRead(conversationId: $c, messageIds: $m) }"
    assert await bob.error(mark, c=direct, m=["forged.1.1.0000"]) == "BAD_USER_INPUT"
    assert await bob.error(mark, c=direct, m=[]) == "BAD_USER_INPUT"


async def test_legacy_graphql_ws_protocol_streams_events(api: Api) -> None:
    from websockets.asyncio.client import connect  # noqa: PLC0415
    from websockets.typing import Subprotocol  # noqa: PLC0415

    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    async with connect(api.ws_url, subprotocols=[Subprotocol("graphql-ws")]) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {bob.token}"}}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(json.dumps({"id": "1", "type": "start", "payload": {"query": EVENTS}}))
        await alice.send(direct, "old protocol")
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await socket.recv())
                if message["type"] == "data" and message["payload"]["data"]["events"]["__typename"] == "MessageEvent":
                    break
    assert message["payload"]["data"]["events"]["message"]["body"] == "old protocol"


async def test_typing_reaches_the_other_members_only(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    async with alice.events() as alice_events, bob.events() as bob_events:
        # Typing is best effort: only streams already listening get it. A message (durable) proves they are.
        await alice.send(direct, "listening?")
        await next_of(bob_events, "MessageEvent")
        await alice.data("mutation T($c: ID!) { setTyping(conversationId: $c, typing: true) }", c=direct)
        typing = await next_of(bob_events, "TypingEvent")
        assert typing == {
            "__typename": "TypingEvent",
            "conversationId": direct,
            "typing": True,
            "user": {"id": alice.user_id},
        }
        # Only the conversation's creation comes before the marker: no typing of her own.
        assert [e["__typename"] for e in await before_marker(alice_events, bob, direct)] == ["ConversationEvent"]


async def test_stream_ends_when_the_device_logs_out(api: Api) -> None:
    bob = await api.register("bob")
    async with ws_connect(api.ws_url, bob.token) as socket:
        sub = await socket.subscribe(EVENTS)
        await bob.data("mutation { logout }")
        # It ends with UNAUTHENTICATED, unless the revoked device's socket closes (4403) first.
        next_event = asyncio.ensure_future(sub.next())
        either: list[asyncio.Future[Any]] = [next_event, socket.closed]
        await asyncio.wait(either, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if next_event.done():
            with pytest.raises(GraphQLFailed) as ended:
                next_event.result()
            assert ended.value.code == "UNAUTHENTICATED"
        else:
            next_event.cancel()
            assert socket.closed.done()
            assert socket.closed.result()[0] == 4403


async def test_every_message_gets_its_own_receipt_after_earlier_ones_are_deleted(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    seen_ids: set[str] = set()
    for n in range(3):
        sent = await alice.send(direct, f"round {n}")
        assert sent["id"] not in seen_ids, "a deleted message's id was handed out again"
        seen_ids.add(sent["id"])
        await bob.drain()  # delivered to every device: deleted
        receipts = [e["receipt"] for e in await alice.drain() if e["__typename"] == "ReceiptEvent"]
        assert [(r["status"], r["messageId"]) for r in receipts] == [("DELIVERED", sent["id"])]
