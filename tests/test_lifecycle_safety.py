"""Edits, deletes and reactions under blocks and races: what a blocked user or a deleted message can still do."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.support.client import GraphQLFailed, HttpClient, Json
from tests.support.database_dump import dump_all_tables
from tests.support.helpers import Api, Person
from tests.support.lifecycle import DELETE, EDIT, REACT, UNREACT, about, pending, send

BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
LIFECYCLE = {"MessageEditedEvent", "MessageDeletedEvent", "ReactionEvent"}
# Twelve distinct single emoji, against the default limit of five per user and message.
EMOJI = ["😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎"]


async def drain(person: Person) -> list[Json]:
    """Acknowledges everything pending, edits, deletes and reactions included; returns it."""
    events = await pending(person)
    if events:
        await person.acknowledge(events[-1]["cursor"])
    return events


def lifecycle_events(events: list[Json]) -> list[Json]:
    """The edits, deletes and reactions among `events`."""
    return [event for event in events if event["__typename"] in LIFECYCLE]


async def test_a_blocked_users_reactions_edits_and_deletes_never_reach_the_blocker(api: Api) -> None:
    """Review 2, item 2: in a direct conversation, nothing Bob does to a message after Alice blocks him reaches her."""
    alice, bob = await api.people("alice", "bob")
    alice_tablet = await alice.other_device("tablet")
    bob_tablet = await bob.other_device("tablet")
    direct = await alice.direct_with(bob)
    hers = await send(alice, direct, "a message of alice's")
    delivered = await send(bob, direct, "an older message of bob's, delivered")
    another = await send(bob, direct, "another older message of bob's")
    for device in (alice, alice_tablet, bob, bob_tablet):
        await device.drain()

    await alice.data(BLOCK, u=bob.user_id)
    # Every call succeeds as before: nothing tells Bob he is blocked.
    assert (await bob.data(REACT, m=hers["id"], e="👍"))["react"] is True
    assert (await bob.data(UNREACT, m=hers["id"], e="👍"))["unreact"] is True
    assert (await bob.data(REACT, m=hers["id"], e="🎉"))["react"] is True
    assert (await bob.data(EDIT, m=delivered["id"], b="edited after the block"))["editMessage"] is True
    assert (await bob.data(EDIT, m=another["id"], b="edited too"))["editMessage"] is True
    assert (await bob.data(DELETE, m=delivered["id"]))["deleteMessage"] is True

    for device in (alice, alice_tablet):
        events = await pending(device)
        assert lifecycle_events(events) == []
        assert "edited" not in str(events)
    # His own other devices still follow what he did.
    assert [e["__typename"] for e in lifecycle_events(await pending(bob_tablet))] == [
        "ReactionEvent",
        "ReactionEvent",
        "ReactionEvent",
        "MessageEditedEvent",
        "MessageEditedEvent",
        "MessageDeletedEvent",
    ]
    # Alice's own reaction to Bob's message still reaches him: the block is one-way.
    await alice.data(REACT, m=another["id"], e="👀")
    assert about(await pending(bob_tablet), another["id"])[-1] == "ReactionEvent"


async def test_a_blocked_users_edit_does_not_rewrite_a_message_the_blocker_has_yet_to_receive(api: Api) -> None:
    """Review 2, item 2: a message Bob sent before the block reaches Alice with the text it had then."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await alice.drain()
    original = f"before the block {uuid.uuid4().hex}"
    sent = await send(bob, direct, original)
    await alice.data(BLOCK, u=bob.user_id)
    await bob.data(EDIT, m=sent["id"], b="rewritten after the block")

    events = await pending(alice)
    assert [e["message"]["body"] for e in events if e["__typename"] == "MessageEvent"] == [original]
    assert about(events, sent["id"]) == ["MessageEvent"]


async def test_in_a_group_a_blocked_users_reactions_still_reach_everyone(api: Api) -> None:
    """Review 2, item 2: groups are not filtered, for reactions as for messages (leave, or have Bob removed)."""
    alice, bob, carol = await api.people("alice", "bob", "carol")
    group = await alice.create_group(members=[bob, carol])
    hers = await send(alice, group, "in the group")
    await alice.data(BLOCK, u=bob.user_id)
    await bob.data(REACT, m=hers["id"], e="👍")
    assert about(await pending(alice), hers["id"]) == ["ReactionEvent"]


async def test_a_message_deleted_for_everyone_cannot_be_brought_back_by_editing_it(
    api: Api, request: pytest.FixtureRequest
) -> None:
    """Review 2, item 3: after delivery (its row pruned) and a delete, an edit is NOT_FOUND and reaches nobody."""
    alice, bob = await api.people("alice", "bob")
    alice_tablet = await alice.other_device("tablet")
    direct = await alice.direct_with(bob)
    for person in (alice, alice_tablet, bob):
        await person.drain()
    secret = f"delivered, then deleted {uuid.uuid4().hex}"
    sent = await send(alice, direct, secret)
    for person in (alice, alice_tablet, bob):
        await person.drain()
    assert secret not in await dump_all_tables(api, request)  # every device has it: the server copy is gone

    await alice.data(DELETE, m=sent["id"])
    assert about(await drain(bob), sent["id"]) == ["MessageDeletedEvent"]
    assert about(await drain(alice_tablet), sent["id"]) == ["MessageDeletedEvent"]
    revived = f"back again {uuid.uuid4().hex}"
    assert await alice.error(EDIT, m=sent["id"], b=revived) == "NOT_FOUND"
    assert await bob.error(REACT, m=sent["id"], e="👍") == "NOT_FOUND"  # nothing left to react to
    # Deleting again is not an error and tells nobody anything new.
    assert (await alice.data(DELETE, m=sent["id"]))["deleteMessage"] is True

    assert about(await pending(bob), sent["id"]) == []
    assert about(await pending(alice_tablet), sent["id"]) == []
    assert revived not in await dump_all_tables(api, request)


async def test_a_message_deleted_while_pending_cannot_be_edited_either(api: Api) -> None:
    """Review 2, item 3: a group admin's delete is final for its sender too, before delivery as after."""
    owner, member = await api.people("owner", "member")
    group = await owner.create_group(members=[member])
    sent = await send(member, group, "deleted by the owner")
    await owner.data(DELETE, m=sent["id"])
    assert await member.error(EDIT, m=sent["id"], b="not so fast") == "NOT_FOUND"
    assert about(await pending(owner), sent["id"]) == ["MessageDeletedEvent"]


async def test_concurrent_distinct_reactions_never_exceed_the_per_message_limit(api: Api) -> None:
    """Review 2, item 14: twelve reactions at once from one user's devices store at most the limit (five)."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    sent = await send(alice, direct, "react to me, all at once")
    await alice.drain()
    clients = [HttpClient(api.url, bob.token) for _ in EMOJI]

    async def react(client: HttpClient, emoji: str) -> str | None:
        try:
            await client.data(REACT, m=sent["id"], e=emoji)
        except GraphQLFailed as failed:
            return failed.code
        return None

    outcomes = await asyncio.gather(*(react(client, emoji) for client, emoji in zip(clients, EMOJI, strict=True)))
    stored = [e["emoji"] for e in await pending(alice) if e["__typename"] == "ReactionEvent" and e["added"]]
    assert len(stored) == 5
    assert sorted(code for code in outcomes if code is not None) == ["BAD_USER_INPUT"] * (len(EMOJI) - 5)
    # The limit counts what is stored: one removed makes room for exactly one more.
    await bob.data(UNREACT, m=sent["id"], e=stored[0])
    left = [emoji for emoji in EMOJI if emoji not in stored]
    await bob.data(REACT, m=sent["id"], e=left[0])
    assert await bob.error(REACT, m=sent["id"], e=left[1]) == "BAD_USER_INPUT"
