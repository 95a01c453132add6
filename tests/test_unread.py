"""Unread badges kept exact by the send and markRead, and read state shared by one's own devices."""

from __future__ import annotations

import asyncio

from tests.support.client import Json
from tests.support.helpers import Api, Person
from tests.support.servers import ThreadServer
from tests.support.streams import before_marker, next_of
from tests.support.unread import counts, next_read_state, number, read_states, send, total


def _left(sent: list[tuple[Json, bool]], upto: int) -> tuple[int, int]:
    """What stays unread of `sent` (message, mentions the reader) after reading the first `upto`."""
    rest = sent[upto:]
    return len(rest), sum(1 for _, mentioned in rest if mentioned)


async def test_fifty_messages_in_three_conversations_are_counted_exactly_on_both_devices(api: Api) -> None:
    """Every send and every markRead moves the badges exactly, as both devices see them; the laptop hears of
    the phone's reads as ReadStateEvents, and again after reconnecting without acknowledging."""
    alice, carol = await api.people("alice", "carol")
    phone = await api.register("bob")
    laptop = await phone.other_device("laptop")
    direct_alice = await alice.direct_with(phone)
    direct_carol = await carol.direct_with(phone)
    group = await alice.create_group("trio", members=[phone, carol])
    plan = [(alice, direct_alice), (carol, direct_carol), (carol, group)] * 16 + [(alice, group)] * 2
    sent: dict[str, list[tuple[Json, bool]]] = {direct_alice: [], direct_carol: [], group: []}
    async with read_states(laptop) as laptop_events:
        for n, (sender, conversation) in enumerate(plan):
            mentioned = conversation == group and n % 4 == 2
            message = await send(sender, conversation, f"message {n}", mentions=[phone] if mentioned else [])
            sent[conversation].append((message, mentioned))
            for device in (phone, laptop):
                assert await counts(device, conversation) == _left(sent[conversation], 0)
        mentions = sum(1 for _, mentioned in sent[group] if mentioned)
        assert mentions > 0
        for device in (phone, laptop):
            assert await total(device) == {
                "conversations": 3,
                "messages": 50,
                "mentions": mentions,
                "mutedConversations": 0,
                "mutedMessages": 0,
            }

        seen: list[Json] = []
        for conversation, messages in sent.items():
            for upto in (5, 6, len(messages)):
                message = messages[upto - 1][0]
                await phone.mark_read(conversation, message["id"])
                unread, unread_mentions = _left(messages, upto)
                state = await next_read_state(laptop_events)
                assert (state["conversationId"], state["readUpTo"]) == (conversation, message["id"])
                assert (state["unreadCount"], state["unreadMentions"]) == (unread, unread_mentions)
                seen.append(state)
                for device in (phone, laptop):
                    assert await counts(device, conversation) == (unread, unread_mentions)
            # Reading an older message again moves nothing back.
            await phone.mark_read(conversation, messages[0][0]["id"])
            assert await counts(laptop, conversation) == (0, 0)
        assert await total(laptop) == {
            "conversations": 0,
            "messages": 0,
            "mentions": 0,
            "mutedConversations": 0,
            "mutedMessages": 0,
        }
        # No event for the reads that changed nothing: the next one the laptop gets is the marker's.
        assert [e for e in await before_marker(laptop_events, alice, direct_alice) if "readUpTo" in e] == []

    # Not acknowledged: a new stream replays every read state, in order.
    async with read_states(laptop) as again:
        replayed = [e for e in await before_marker(again, alice, direct_alice) if e["__typename"] == "ReadStateEvent"]
    assert replayed == seen


async def test_concurrent_sends_and_reads_from_two_devices_end_exact(production_server: ThreadServer) -> None:
    """On PostgreSQL, sends racing markReads from both of the reader's devices leave the counters exactly at
    what is unread after the newest message read."""
    api = Api(production_server.url, production_server.ws_url, "production")
    alice, carol = await api.people("alice", "carol")
    phone = await api.register("bob")
    laptop = await phone.other_device("laptop")
    group = await alice.create_group("race", members=[phone, carol])
    direct = await alice.direct_with(phone)
    early = [await send(alice, group, f"early {n}") for n in range(10)]

    async def sending(n: int) -> Json:
        mentioned = n % 5 == 0
        message = await send(carol if n % 2 else alice, group, f"racing {n}", mentions=[phone] if mentioned else [])
        return {**message, "mentioned": mentioned}

    sends = [asyncio.create_task(sending(n)) for n in range(40)]
    # The direct conversation's counter moves in the same rows' neighbourhood, untouched by the reads.
    side = [asyncio.create_task(send(alice, direct, f"side {n}")) for n in range(10)]

    async def reading(device: Person, n: int) -> str:
        message = await sends[n] if n >= 0 else early[-n - 1]
        await device.mark_read(group, message["id"])
        return str(message["id"])

    reads = [reading(phone if n % 2 else laptop, n) for n in range(0, 40, 3)]
    reads += [reading(laptop if n % 2 else phone, -n) for n in range(1, 11)]
    read = await asyncio.gather(*reads)
    racing = await asyncio.gather(*sends)
    await asyncio.gather(*side)

    upto = max(number(message_id) for message_id in read)
    everything = [{**m, "mentioned": False} for m in early] + racing
    unread = [m for m in everything if number(m["id"]) > upto]
    expected = (len(unread), sum(1 for m in unread if m["mentioned"]))
    for device in (phone, laptop):
        assert await counts(device, group) == expected
        assert await counts(device, direct) == (10, 0)
    # And the next read recounts to the same values the counters kept.
    if unread:
        newest = max(unread, key=lambda m: number(m["id"]))
        await laptop.mark_read(group, newest["id"])
        assert await counts(phone, group) == (0, 0)


async def test_a_message_from_one_device_reaches_the_senders_other_devices(api: Api) -> None:
    """What a user sends from their phone arrives on their laptop as a MessageEvent, and is not unread there."""
    alice_phone, bob = await api.people("alice", "bob")
    alice_laptop = await alice_phone.other_device("laptop")
    direct = await alice_phone.direct_with(bob)
    async with alice_laptop.events() as laptop:
        sent = await alice_phone.send(direct, "from my phone")
        received = await next_of(laptop, "MessageEvent")
    assert received["message"]["id"] == sent["id"]
    assert received["message"]["sender"]["id"] == alice_phone.user_id
    assert await counts(alice_laptop, direct) == (0, 0)
    assert await counts(bob, direct) == (1, 0)
