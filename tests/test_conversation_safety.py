"""Conversations under abuse and concurrency: blocking, fan-out limits, races and lost commit replies."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from infra.db import Database
from infra.pg_inbox_store import PgInboxStore
from models import Conversation
from models.columns import utcnow
from resolvers.records import SendOutcome
from tests.support.client import GraphQLFailed, Json
from tests.support.faults import replacing
from tests.support.helpers import CONVERSATION_FIELDS, Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import next_of

BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
UNBLOCK = "mutation U($u: ID!) { unblockUser(userId: $u) }"
BLOCKED = "{ blockedUsers { id } }"
DIRECT = "mutation D($u: ID!) { startDirectConversation(userId: $u) { id } }"
GROUP = "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { id } }"
ADD = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }"
REMOVE = "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { id } }"
RENAME = "mutation N($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { title } }"
TYPING = "mutation T($c: ID!, $t: Boolean!) { setTyping(conversationId: $c, typing: $t) }"
CONVERSATIONS = f"{{ conversations {{ {CONVERSATION_FIELDS} }} }}"
SEND = (
    "mutation S($c: ID!, $k: String!, $b: String!) "
    "{ sendMessage(input: {conversationId: $c, clientId: $k, body: $b}) { id conversationId } }"
)


async def _connect(url: str) -> Any:
    """A plain asyncpg connection to the test database (asyncpg has no type hints)."""
    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))  # type: ignore[no-untyped-call]


async def _live(sub: Any, sender: Person, conversation_id: str) -> None:
    """Waits until the stream is live: typing notices are not stored, one sent earlier is lost."""
    sent = await sender.send(conversation_id, "are you there?")
    assert (await next_of(sub, "MessageEvent"))["message"]["id"] == sent["id"]


async def _typing_events(sub: Any, count: int) -> list[bool]:
    return [bool((await next_of(sub, "TypingEvent"))["typing"]) for _ in range(count)]


# Item 6: blocking, and limits on what one user can make others receive.


async def test_item_06_a_blocked_user_cannot_reach_the_blocker(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    direct = await alice.direct_with(bob)
    assert (await alice.data(BLOCK, u=bob.user_id))["blockUser"] is True
    assert (await alice.data(BLOCK, u=bob.user_id))["blockUser"] is True  # idempotent
    assert (await alice.data(BLOCKED))["blockedUsers"] == [{"id": bob.user_id}]
    assert (await bob.data(BLOCKED))["blockedUsers"] == []

    # No new conversation with alice, in any form; the existing direct one stays as it was.
    fresh = await api.register("dave")
    assert await fresh.error(BLOCK, u=fresh.user_id) == "BAD_USER_INPUT"
    await fresh.data(BLOCK, u=bob.user_id)
    assert await bob.error(DIRECT, u=fresh.user_id) == "FORBIDDEN"
    assert await bob.error(GROUP, t="g", m=[carol.user_id, alice.user_id]) == "FORBIDDEN"
    group = await bob.create_group("g", members=[carol])
    assert await bob.error(ADD, c=group, u=[alice.user_id]) == "FORBIDDEN"
    assert await bob.direct_with(alice) == direct
    with_carol = await alice.direct_with(carol)  # the blocker is not limited

    await alice.drain()
    await bob.drain()
    async with alice.events() as alice_events:
        await _live(alice_events, carol, with_carol)
        # Sent (the sender sees nothing unusual), but never delivered, and typing is dropped too.
        await bob.send(direct, "while blocked")
        await bob.data(TYPING, c=direct, t=True)
        assert [e["message"]["body"] for e in await alice.drain() if "message" in e] == ["are you there?"]
        assert await bob.pending() == []  # no DELIVERED receipt
        assert (await alice.data(UNBLOCK, u=bob.user_id))["unblockUser"] is True
        await bob.data(TYPING, c=direct, t=False)
        assert await _typing_events(alice_events, 1) == [False]
        heard = await bob.send(direct, "after unblocking")
        assert (await next_of(alice_events, "MessageEvent"))["message"]["id"] == heard["id"]

    # Groups are unaffected by a block.
    await alice.data(BLOCK, u=bob.user_id)
    shared = await carol.create_group("shared", members=[alice, bob])
    await alice.drain()
    sent = await bob.send(shared, "in the group")
    assert [e["message"]["id"] for e in await alice.pending() if e["__typename"] == "MessageEvent"] == [sent["id"]]


@pytest.fixture(params=["embedded", "production"])
def limited(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> Iterator[Api]:
    """A server with small fan-out limits, in each mode."""
    limits: dict[str, Any] = {
        "conversations_per_hour": 2,
        "member_additions_per_hour": 3,
        "renames_per_hour": 2,
        "typing_interval_seconds": 60,
    }
    settings = (
        embedded_settings(tmp_path, **limits)
        if request.param == "embedded"
        else production_settings(migrated_postgres, redis_target, **limits)
    )
    with ThreadServer(settings) as server:
        yield Api(url=server.url, ws_url=server.ws_url, mode=request.param)


async def test_item_06_conversations_additions_renames_and_typing_are_limited(limited: Api) -> None:
    alice, carol, b1, b2, b3, b4 = await limited.people("alice", "carol", "b1", "b2", "b3", "b4")
    await alice.direct_with(b1)
    await alice.direct_with(b2)
    await alice.direct_with(b1)  # an existing conversation is not a new one
    assert await alice.error(DIRECT, u=b3.user_id) == "RATE_LIMITED"
    assert await alice.error(GROUP, t="g", m=[b3.user_id]) == "RATE_LIMITED"

    group = await carol.create_group("one", members=[b1])
    await carol.data(ADD, c=group, u=[b1.user_id, b2.user_id, b3.user_id])  # b1 is in already: 3 added in all
    assert await carol.error(ADD, c=group, u=[b4.user_id]) == "RATE_LIMITED"
    await carol.data(ADD, c=group, u=[b2.user_id])  # adds nobody, counts nothing

    await carol.data(RENAME, c=group, t="two")
    await carol.data(RENAME, c=group, t="three")
    await carol.data(RENAME, c=group, t="three")  # no change, no count
    assert await carol.error(RENAME, c=group, t="four") == "RATE_LIMITED"

    async with b1.events() as b1_events:
        await _live(b1_events, carol, group)
        # One "typing" and one "stopped" per interval reach the others, however often they alternate.
        for typing in (True, True, False, True, False, True):
            assert (await carol.data(TYPING, c=group, t=typing))["setTyping"] is True
        assert await _typing_events(b1_events, 2) == [True, False]
        after = await carol.send(group, "after typing")
        event = (await b1_events.next())["events"]
        assert event["__typename"] == "MessageEvent", event
        assert event["message"]["id"] == after["id"]


# Item 8: a delivered message is deleted, whoever prunes its last entries at the same time.


async def _message_rows(postgres: str, conversation_id: str) -> int:
    connection = await _connect(postgres)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", int(conversation_id))
        )
    finally:
        await connection.close()


async def test_item_08_concurrent_pruning_deletes_the_delivered_message(
    production_server: ThreadServer, migrated_postgres: str
) -> None:
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    sender, reader_a, reader_b = await api.people("sender", "reader_a", "reader_b")
    group = await sender.create_group("race", members=[reader_a, reader_b])
    for _ in range(12):
        # The last two entries go by two readers acknowledging at once...
        await sender.send(group, "acknowledged")
        await asyncio.gather(reader_a.drain(), reader_b.drain())
        assert await _message_rows(migrated_postgres, group) == 0
        # ... or by two other devices logging out at once, the only ones that had not acknowledged.
        second_a, second_b = await reader_a.other_device(), await reader_b.other_device()
        await sender.send(group, "logged out")
        await asyncio.gather(reader_a.drain(), reader_b.drain())
        await asyncio.gather(second_a.data("mutation { logout }"), second_b.data("mutation { logout }"))
        assert await _message_rows(migrated_postgres, group) == 0


# Item 9: a commit whose reply is lost is not run again.


class _LoseNextCommitReply:
    """Arms a session class whose commit succeeds, then fails as a dropped connection would."""

    def __init__(self) -> None:
        self.armed = False

    def session_class(self) -> type[AsyncSession]:
        fault = self

        class LosingReply(AsyncSession):
            async def commit(self) -> None:
                await super().commit()
                touched = any(isinstance(o, Conversation) for o in self.sync_session.identity_map.values())
                if fault.armed and touched:
                    fault.armed = False
                    raise DBAPIError("COMMIT", None, ConnectionResetError("reply lost"), connection_invalidated=True)

        return LosingReply


@pytest.fixture(params=["embedded", "production"])
def lossy(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> Iterator[tuple[Api, _LoseNextCommitReply]]:
    fault = _LoseNextCommitReply()
    settings = (
        embedded_settings(tmp_path)
        if request.param == "embedded"
        else production_settings(migrated_postgres, redis_target)
    )
    overrides = replacing(db=lambda s: Database(s.db.engine, session_class=fault.session_class()))  # type: ignore[attr-defined]
    with ThreadServer(settings, overrides) as server:
        yield Api(url=server.url, ws_url=server.ws_url, mode=request.param), fault


async def test_item_09_a_lost_commit_reply_does_not_repeat_the_change(
    lossy: tuple[Api, _LoseNextCommitReply],
) -> None:
    api, fault = lossy
    owner, a, b = await api.people("owner", "a", "b")
    title = f"once-{uuid.uuid4().hex[:8]}"
    fault.armed = True
    assert await owner.error(GROUP, t=title, m=[a.user_id]) == "UNAVAILABLE"
    titles = [c["title"] for c in (await owner.data(CONVERSATIONS))["conversations"]]
    assert titles.count(title) == 1

    group = await owner.create_group("g", members=[a, b])
    fault.armed = True
    assert await owner.error(REMOVE, c=group, u=b.user_id) == "UNAVAILABLE"
    conversation = next(c for c in (await owner.data(CONVERSATIONS))["conversations"] if c["id"] == group)
    assert {m["user"]["id"] for m in conversation["members"]} == {owner.user_id, a.user_id}


class _SendTwice:
    """The real store, but each send runs twice, as a retry after a lost reply does."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send(self, **kwargs: Any) -> SendOutcome:
        await self._inner.send(**kwargs)
        outcome: SendOutcome = await self._inner.send(**kwargs)
        return outcome


async def test_item_09_a_retried_send_still_announces_the_message(
    migrated_postgres: str, redis_target: RedisTarget
) -> None:
    settings = production_settings(migrated_postgres, redis_target)
    with ThreadServer(settings, replacing(inbox_store=lambda s: _SendTwice(s.inbox_store))) as server:
        api = Api(url=server.url, ws_url=server.ws_url, mode="production")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await bob.drain()
        async with bob.events() as bob_events:
            sent = await alice.send(direct, "announced")
            # Live, from the notice: without one, the stream would wait for the next event.
            assert (await next_of(bob_events, "MessageEvent", timeout=5))["message"]["id"] == sent["id"]


# Item 10: one lock order, and membership that holds until commit.


async def _inbox(connection: Any, user_id: str) -> list[Any]:
    return list(
        await connection.fetch(
            """SELECT e.seq, e.kind, e.payload, m.conversation_id, m.sender_id FROM inbox_entries e
               LEFT JOIN messages m ON m.id = e.message_id WHERE e.user_id = $1 ORDER BY e.seq""",
            int(user_id),
        )
    )


def _after_removal(entries: list[Any], *, group: int, removed: int, sender: int | None) -> list[int]:
    """Positions of messages of the group (from `sender`, or to the inbox's owner) while `removed` was out."""
    out, wrong = False, []
    for entry in entries:
        if entry["kind"] == "CONVERSATION":
            payload = json.loads(entry["payload"])
            if payload["conversation_id"] == group and removed in payload["user_ids"]:
                out = payload["change"] == "MEMBER_REMOVED"
        elif (
            entry["kind"] == "MESSAGE"
            and out
            and entry["conversation_id"] == group
            and (sender is None or entry["sender_id"] == sender)
        ):
            wrong.append(entry["seq"])
    return wrong


async def test_item_10_removal_racing_sends_never_lets_a_message_past_it(
    production_server: ThreadServer, migrated_postgres: str
) -> None:
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    owner, removed, other = await api.people("owner", "removed", "other")
    group = await owner.create_group("race", members=[removed, other])

    async def send(person: Person, body: str) -> str | None:
        try:
            await person.send(group, body)
        except GraphQLFailed as failed:
            return failed.code
        return None

    async def remove() -> str | None:
        await owner.data(REMOVE, c=group, u=removed.user_id)
        return None

    for round_ in range(15):
        results = await asyncio.gather(
            send(removed, f"r{round_}a"),
            send(other, f"o{round_}a"),
            remove(),
            send(removed, f"r{round_}b"),
            send(other, f"o{round_}b"),
            send(removed, f"r{round_}c"),
            return_exceptions=True,
        )
        failures = [r for r in results if r not in (None, "NOT_FOUND")]
        assert not failures, failures  # no deadlock surfaces, nor anything else
        await owner.data(ADD, c=group, u=[removed.user_id])

    connection = await _connect(migrated_postgres)
    try:
        gid, rid = int(group), int(removed.user_id)
        assert _after_removal(await _inbox(connection, removed.user_id), group=gid, removed=rid, sender=None) == []
        for person in (owner, other):
            entries = await _inbox(connection, person.user_id)
            assert _after_removal(entries, group=gid, removed=rid, sender=rid) == []
    finally:
        await connection.close()


# Item 11: a clientId names one message of one conversation.


async def test_item_11_a_client_id_reused_in_another_conversation_is_a_conflict(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    with_bob, with_carol = await alice.direct_with(bob), await alice.direct_with(carol)
    first = await alice.send(with_bob, "hello", client_id="same-key")
    assert (await alice.send(with_bob, "hello", client_id="same-key"))["id"] == first["id"]
    assert await alice.error(SEND, c=with_carol, k="same-key", b="hello") == "CONFLICT"
    pending: list[Json] = await carol.pending()
    assert not [e for e in pending if e["__typename"] == "MessageEvent"]


# Item 1 (the store's part): a device revoked between authentication and send stores nothing.


async def test_a_send_from_a_revoked_device_stores_nothing(
    production_server: ThreadServer, migrated_postgres: str
) -> None:
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    phone = await alice.other_device("phone")
    await phone.data("mutation { logout }")
    store = await PgInboxStore.connect(migrated_postgres, max_size=1)
    try:
        sent: dict[str, Any] = {
            "sender_id": int(alice.user_id),
            "conversation_id": int(direct),
            "body": "from a revoked device",
            "sent_at": utcnow(),
        }
        refused = await store.send(device_id=int(phone.device_id), client_id=uuid.uuid4().hex, **sent)
        assert (refused.device_known, refused.message) == (False, None)
        accepted = await store.send(device_id=int(alice.device_id), client_id=uuid.uuid4().hex, **sent)
        assert accepted.device_known
        assert accepted.message is not None
    finally:
        await store.close()
    assert [e["message"]["body"] for e in await bob.pending() if e["__typename"] == "MessageEvent"] == [
        "from a revoked device"
    ]
