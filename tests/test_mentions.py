"""Mentions: shown on the message, counted in the mentioned member's badge, pushed even where muted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.helpers import Api
from tests.support.push_fakes import PushEndpoint
from tests.support.push_rig import Marker, pushes_before_marker, rig, subscribe
from tests.support.services import RedisTarget
from tests.support.unread import SEND, counts, send, set_state, total

PENDING_MENTIONS = (
    "query P { pendingEvents(first: 500) { __typename ... on MessageEvent { message { id mentions { id } } } } }"
)
PREFERENCES = (
    "mutation N($on: Boolean!) { setNotificationPreferences(pushMentionsWhenMuted: $on) { pushMentionsWhenMuted } }"
)


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> tuple[str, RedisTarget] | None:
    """PostgreSQL and Redis for the production mode's rig; nothing for the embedded one."""
    if request.node.callspec.params["mode"] == "embedded":
        return None
    return request.getfixturevalue("migrated_postgres"), request.getfixturevalue("redis_target")


@pytest.fixture
def endpoint() -> Iterator[PushEndpoint]:
    with PushEndpoint() as server:
        yield server


async def test_mentions_are_shown_and_counted_until_read(api: Api) -> None:
    """A message shows whom it mentions (repeats and the sender left out), on the sender's answer and on the
    recipients' events; each mentioned member's unreadMentions counts it until they read past it."""
    alice, bob, carol = await api.people("alice", "bob", "carol")
    group = await alice.create_group("plans", members=[bob, carol])
    plain = await send(alice, group, "lunch?")
    message = await send(alice, group, "@bob @carol lunch at noon", mentions=[bob, carol, bob, alice])
    assert sorted(u["id"] for u in message["mentions"]) == sorted([bob.user_id, carol.user_id])
    assert plain["mentions"] == []
    shown = [
        e["message"] for e in (await bob.data(PENDING_MENTIONS))["pendingEvents"] if e["__typename"] == "MessageEvent"
    ]
    assert [sorted(u["id"] for u in m["mentions"]) for m in shown] == [[], sorted([bob.user_id, carol.user_id])]
    assert await counts(bob, group) == (2, 1)
    assert await counts(carol, group) == (2, 1)
    assert await counts(alice, group) == (0, 0)
    assert (await total(bob))["mentions"] == 1
    await bob.mark_read(group, plain["id"])
    assert await counts(bob, group) == (1, 1)
    await bob.mark_read(group, message["id"])
    assert await counts(bob, group) == (0, 0)
    assert await counts(carol, group) == (2, 1)


async def test_a_mention_of_a_non_member_is_refused_and_stores_nothing(api: Api) -> None:
    """Mentioning someone who is not in the conversation is BAD_USER_INPUT: no message, no count, and the
    clientId stays free for the corrected send."""
    alice, bob, eve = await api.people("alice", "bob", "eve")
    group = await alice.create_group("no eve", members=[bob])
    await bob.drain()
    client_id = uuid.uuid4().hex
    attempt = {
        "conversationId": group,
        "clientId": client_id,
        "body": "hi @eve",
        "mentions": [bob.user_id, eve.user_id],
    }
    assert await alice.error(SEND, input=attempt) == "BAD_USER_INPUT"
    assert await bob.pending() == []
    assert await counts(bob, group) == (0, 0)
    fixed = (await alice.data(SEND, input={**attempt, "mentions": [bob.user_id]}))["sendMessage"]
    assert [u["id"] for u in fixed["mentions"]] == [bob.user_id]
    assert await counts(bob, group) == (1, 1)


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_a_mention_is_pushed_even_where_muted_unless_turned_off(
    mode: str, tmp_path: Path, backends: tuple[str, RedisTarget] | None, endpoint: PushEndpoint
) -> None:
    """In a conversation muted (for good or until a later time) nothing is pushed but a mention of the
    muted member, and not even that once they turned pushMentionsWhenMuted off."""
    async with rig(tmp_path, backends) as setup:
        alice, bob = await setup.api.people("alice", "bob")
        group = await alice.create_group("loud", members=[bob])
        subscription = await subscribe(bob, endpoint)
        until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await set_state(bob, "muteConversation", group, muted=True, until=until))["muted"] is True
        await send(alice, group, "nothing for bob")
        assert await pushes_before_marker(setup, endpoint, alice) == []

        marker = await Marker.ready(setup, endpoint, alice)
        mention = await send(alice, group, "@bob look", mentions=[bob])
        await marker.send()
        [push] = await marker.pushes_before()
        assert push.path == f"/push/{bob.username}"
        assert subscription.decrypt(push.body)["messageId"] == mention["id"]
        assert await counts(bob, group) == (2, 1)

        await bob.drain()
        await set_state(bob, "muteConversation", group, muted=True)
        off = await bob.data(PREFERENCES, on=False)
        assert off["setNotificationPreferences"] == {"pushMentionsWhenMuted": False}
        assert (await bob.data("{ me { notificationPreferences { pushMentionsWhenMuted } } }"))["me"] == {
            "notificationPreferences": {"pushMentionsWhenMuted": False}
        }
        await send(alice, group, "@bob again", mentions=[bob])
        assert len(await pushes_before_marker(setup, endpoint, alice)) == 1


async def test_a_message_with_attachments_mentions_too(api: Api) -> None:
    """Attachments and mentions go together: both stored, or (a non-member named) neither, the upload left free."""
    alice, bob, eve = await api.people("alice", "bob", "eve")
    group = await alice.create_group("files", members=[bob])
    upload = await alice.upload("plan.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(64))
    attempt = {"conversationId": group, "clientId": uuid.uuid4().hex, "attachmentIds": [upload]}
    refused = await alice.error(SEND, input={**attempt, "mentions": [eve.user_id]})
    assert refused == "BAD_USER_INPUT"
    sent = (await alice.data(SEND, input={**attempt, "mentions": [bob.user_id]}))["sendMessage"]
    assert [u["id"] for u in sent["mentions"]] == [bob.user_id]
    assert await counts(bob, group) == (1, 1)
