"""Replies, edits, deletes for everyone and reactions: durable events about messages the clients hold."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.database_dump import dump_all_tables
from tests.support.helpers import Api, unique_name
from tests.support.lifecycle import DELETE, EDIT, REACT, SEND, STREAM, UNREACT, about, pending, send
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings

REMOVE = "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { id } }"
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)


async def test_reply_edit_reaction_delete_reach_an_offline_member_in_order_once(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    group = await alice.create_group(members=[bob, carol])
    await bob.drain()
    original = await send(alice, group, "lunch at noon?")
    received = await pending(bob)
    assert about(received, original["id"]) == ["MessageEvent"]
    await bob.acknowledge(received[-1]["cursor"])  # bob has it; alice's server copy is gone
    reply = await send(carol, group, "yes", reply_to=original["id"])
    assert reply["replyToId"] == original["id"]
    await alice.data(EDIT, m=original["id"], b="lunch at one?")
    await bob.data(REACT, m=original["id"], e="👍")
    before_delete = await pending(bob)
    assert [e.get("body") for e in before_delete if e["__typename"] == "MessageEditedEvent"] == ["lunch at one?"]
    await alice.data(DELETE, m=original["id"])

    first = await pending(bob)
    assert [e["__typename"] for e in first] == [
        "MessageEvent",
        "MessageEditedEvent",
        "ReactionEvent",
        "MessageDeletedEvent",
    ]
    assert first[0]["message"]["id"] == reply["id"]
    assert first[0]["message"]["replyToId"] == original["id"]
    edit, reaction, deleted = first[1:]
    # Deleted since: the pending edit no longer carries the text either.
    assert (edit["messageId"], edit["conversationId"], edit["body"]) == (original["id"], group, None)
    assert edit["editor"]["id"] == alice.user_id
    assert (reaction["messageId"], reaction["emoji"], reaction["added"]) == (original["id"], "👍", True)
    assert reaction["user"]["id"] == bob.user_id
    assert (deleted["messageId"], deleted["deletedBy"]["id"]) == (original["id"], alice.user_id)

    # Not acknowledged: the same events again, by pull and by the stream after a reconnect.
    assert await pending(bob) == first
    assert await pending(bob, after=received[-1]["cursor"]) == first
    for after in (None, received[-1]["cursor"]):
        async with bob.socket() as socket:
            stream = await socket.subscribe(STREAM, after=after)
            replayed = [(await stream.next())["events"] for _ in first]
        assert replayed == first


async def test_delete_before_delivery_the_recipient_never_gets_the_body(
    api: Api, request: pytest.FixtureRequest
) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    secret = f"oops wrong chat {uuid.uuid4().hex}"
    client_id = uuid.uuid4().hex
    sent = await send(alice, direct, secret, client_id=client_id)
    await alice.data(EDIT, m=sent["id"], b=f"{secret} (edited)")
    await alice.data(DELETE, m=sent["id"])
    # A retry of the send (same clientId) stores nothing and does not bring it back.
    assert (await send(alice, direct, secret, client_id=client_id))["id"] == sent["id"]

    events = await pending(bob)
    assert about(events, sent["id"]) == ["MessageEditedEvent", "MessageDeletedEvent"]
    assert all(e.get("body") is None for e in events if e["__typename"] == "MessageEditedEvent")
    assert secret not in str(events)
    if api.mode == "production":
        assert secret not in await dump_all_tables(api, request)


async def test_edit_refusals(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    direct = await alice.direct_with(bob)
    sent = await send(alice, direct, "hello")
    assert await bob.error(EDIT, m=sent["id"], b="not mine") == "FORBIDDEN"
    assert await alice.error(EDIT, m=sent["id"], b="   ") == "BAD_USER_INPUT"
    assert await alice.error(EDIT, m=sent["id"], b="x" * 5000) == "BAD_USER_INPUT"
    assert await carol.error(EDIT, m=sent["id"], b="stranger") == "NOT_FOUND"
    forged = sent["id"][:-1] + ("1" if sent["id"].endswith("0") else "0")  # never the real id
    assert await alice.error(EDIT, m=forged, b="forged") == "BAD_USER_INPUT"


async def test_reply_to_a_forged_or_foreign_message_is_refused(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    direct = await alice.direct_with(bob)
    other = await alice.direct_with(carol)
    elsewhere = await send(alice, other, "in another conversation")
    here = await send(alice, direct, "here")
    for reply_to in (elsewhere["id"], here["id"][:-2] + "00", "not an id"):
        code = await alice.error(
            SEND, input={"conversationId": direct, "clientId": uuid.uuid4().hex, "body": "re", "replyToId": reply_to}
        )
        assert code == "BAD_USER_INPUT"


async def test_reactions_are_members_only_validated_limited_and_idempotent(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    direct = await alice.direct_with(bob)
    sent = await send(alice, direct, "react to me")
    await bob.drain()
    assert await carol.error(REACT, m=sent["id"], e="👍") == "NOT_FOUND"
    for bad in ("ab", "👍👍", "", "👍 "):
        assert await bob.error(REACT, m=sent["id"], e=bad) == "BAD_USER_INPUT"
    await alice.data(REACT, m=sent["id"], e="👍")
    await alice.data(REACT, m=sent["id"], e="👍")  # again: nothing new
    await alice.data(UNREACT, m=sent["id"], e="🎉")  # absent: nothing new
    for emoji in ("❤️", "😂", "🎉", "👨‍👩‍👧"):
        await alice.data(REACT, m=sent["id"], e=emoji)
    assert await alice.error(REACT, m=sent["id"], e="🔥") == "BAD_USER_INPUT"  # a sixth
    await alice.data(UNREACT, m=sent["id"], e="👍")
    await alice.data(REACT, m=sent["id"], e="🔥")  # room again

    reactions = [(e["emoji"], e["added"]) for e in await pending(bob) if e["__typename"] == "ReactionEvent"]
    assert reactions == [
        ("👍", True),
        ("❤️", True),
        ("😂", True),
        ("🎉", True),
        ("👨‍👩‍👧", True),
        ("👍", False),
        ("🔥", True),
    ]


async def test_group_admin_deletes_any_message_a_member_only_their_own(api: Api) -> None:
    owner, admin, member, other = await api.people("owner", "admin", "member", "other")
    group = await owner.create_group(members=[admin, member, other])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    by_member = await send(member, group, "from a member")
    by_other = await send(other, group, "from another member")
    assert await member.error(DELETE, m=by_other["id"]) == "FORBIDDEN"
    await admin.data(DELETE, m=by_member["id"])
    await member.data(DELETE, m=by_member["id"])  # deleted already: nothing new, no error
    deleted = [e for e in await pending(other) if e["__typename"] == "MessageDeletedEvent"]
    assert [(e["messageId"], e["deletedBy"]["id"]) for e in deleted] == [(by_member["id"], admin.user_id)]


async def test_a_removed_member_gets_no_later_events_about_the_conversation(api: Api) -> None:
    owner, stays, leaves = await api.people("owner", "stays", "leaves")
    group = await owner.create_group(members=[stays, leaves])
    sent = await send(owner, group, "before the removal")
    await owner.data(REMOVE, c=group, u=leaves.user_id)
    await leaves.drain()
    await owner.data(EDIT, m=sent["id"], b="after the removal")
    await stays.data(REACT, m=sent["id"], e="👍")
    assert about(await pending(leaves), sent["id"]) == []
    assert await leaves.error(REACT, m=sent["id"], e="👍") == "NOT_FOUND"
    assert about(await pending(stays), sent["id"]) == ["MessageEvent", "MessageEditedEvent", "ReactionEvent"]


@pytest.fixture(params=["embedded", "production"])
def short_window_server(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ThreadServer]:
    """A server whose edit and delete windows are over at once, in each mode."""
    changes = {"edit_window_seconds": 0, "delete_window_seconds": 0}
    if request.param == "production":
        postgres: str = request.getfixturevalue("migrated_postgres")
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(postgres, replace(redis, prefix=f"{redis.prefix}{unique_name('w')}:"), **changes)
    else:
        settings = embedded_settings(tmp_path, **changes)
    return lambda: ThreadServer(settings)


async def test_after_the_window_edit_and_delete_are_forbidden(short_window_server: Callable[[], ThreadServer]) -> None:
    with short_window_server() as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="windows")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        sent = await send(alice, direct, "too late to change")
        error = await alice.http.error(EDIT, m=sent["id"], b="changed")
        assert error.code == "FORBIDDEN"
        assert "0 seconds" in error.errors[0]["message"]
        assert await alice.error(DELETE, m=sent["id"]) == "FORBIDDEN"
