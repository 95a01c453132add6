"""One's own view of conversations: mute until a time, archive, pin, and what the list and badges make of them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from infra.app import Overrides
from tests.support.clock import MovableClock
from tests.support.helpers import Api
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.unread import listed, set_state, state, total

PINS = 2


@pytest.fixture(params=["embedded", "production"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Api, MovableClock]]:
    """A server of each mode whose clock the test moves, allowing only a few pins."""
    clock = MovableClock()
    if request.param == "embedded":
        settings = embedded_settings(tmp_path, max_pinned_conversations=PINS)
    else:
        postgres: str = request.getfixturevalue("migrated_postgres")
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(postgres, redis, max_pinned_conversations=PINS)
    with ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        yield Api(server.url, server.ws_url, request.param), clock


async def test_a_mute_until_a_time_ends_by_itself(clocked: tuple[Api, MovableClock]) -> None:
    """Muted until a time, a conversation is muted (and counted apart in the badge) until then, and unmuted after
    without anyone unmuting it."""
    api, clock = clocked
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await alice.send(direct, "one")
    until = clock.now() + timedelta(hours=8)
    muted = await set_state(bob, "muteConversation", direct, muted=True, until=until.isoformat())
    assert muted["muted"] is True
    assert muted["mutedUntil"] is not None
    assert (await total(bob))["mutedMessages"] == 1
    assert (await total(bob))["messages"] == 0

    clock.advance(timedelta(hours=8, seconds=1).total_seconds())
    after = await state(bob, direct)
    assert (after["muted"], after["mutedUntil"]) == (False, None)
    assert (await total(bob))["messages"] == 1
    assert (await total(bob))["mutedMessages"] == 0

    # Muted for good stays muted; an end in the past, or one without muting, is refused.
    assert (await set_state(bob, "muteConversation", direct, muted=True))["muted"] is True
    clock.advance(86400 * 400)
    assert (await state(bob, direct))["muted"] is True
    past = (clock.now() - timedelta(minutes=1)).isoformat()
    assert (
        await bob.error(
            "mutation M($c: ID!, $u: DateTime) { muteConversation(conversationId: $c, muted: true, until: $u) { id } }",
            c=direct,
            u=past,
        )
        == "BAD_USER_INPUT"
    )


async def test_pinned_first_archived_apart_and_a_new_message_brings_one_back(
    clocked: tuple[Api, MovableClock],
) -> None:
    """The list shows pinned conversations first, then the most recently active; archived ones only when asked
    for, until a new message brings one back. Pins are bounded."""
    api, _clock = clocked
    bob = await api.register("bob")
    friends = await api.people("a", "b", "c", "d")
    chats = [await friend.direct_with(bob) for friend in friends]
    for friend, chat in zip(friends, chats, strict=True):
        await friend.send(chat, "hi")
    newest_first = list(reversed(chats))
    assert await listed(bob) == newest_first

    assert (await set_state(bob, "pinConversation", chats[0], pinned=True))["pinned"] is True
    await set_state(bob, "pinConversation", chats[1], pinned=True)
    assert await listed(bob) == [chats[1], chats[0], chats[3], chats[2]]
    assert (
        await bob.error("mutation P($c: ID!) { pinConversation(conversationId: $c, pinned: true) { id } }", c=chats[2])
        == "BAD_USER_INPUT"
    )
    # Pinning a pinned one again changes nothing and is no third pin.
    assert (await set_state(bob, "pinConversation", chats[0], pinned=True))["pinned"] is True

    archived = await set_state(bob, "archiveConversation", chats[3], archived=True)
    assert archived["archived"] is True
    assert await listed(bob) == [chats[1], chats[0], chats[2]]
    assert await listed(bob, archived=True) == [chats[3]]
    # Archiving a pinned one unpins it, which frees a pin.
    await set_state(bob, "archiveConversation", chats[1], archived=True)
    assert await listed(bob, archived=True) == [chats[3], chats[1]]
    assert (await set_state(bob, "pinConversation", chats[2], pinned=True))["pinned"] is True

    await friends[3].send(chats[3], "are you there?")
    assert (await state(bob, chats[3]))["archived"] is False
    assert await listed(bob) == [chats[2], chats[0], chats[3]]
    assert await listed(bob, archived=True) == [chats[1]]
    # Only the recipients' view changes: the sender's own archive stays as they left it.
    await set_state(friends[0], "archiveConversation", chats[0], archived=True)
    await friends[0].send(chats[0], "note to self: still archived")
    assert (await state(friends[0], chats[0]))["archived"] is True


async def test_only_members_change_their_view(clocked: tuple[Api, MovableClock]) -> None:
    """Muting, archiving or pinning a conversation one is not in is NOT_FOUND, as for a missing one."""
    api, _clock = clocked
    alice, bob, eve = await api.people("alice", "bob", "eve")
    direct = await alice.direct_with(bob)
    for field, argument in (
        ("muteConversation", "muted"),
        ("archiveConversation", "archived"),
        ("pinConversation", "pinned"),
    ):
        code = await eve.error(
            f"mutation M($c: ID!) {{ {field}(conversationId: $c, {argument}: true) {{ id }} }}", c=direct
        )
        assert code == "NOT_FOUND"
