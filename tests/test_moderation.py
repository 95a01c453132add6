"""Group moderation over the real API: bans, muted members, announcement groups, slow mode, frozen conversations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from infra.app import Overrides, _connected_services
from models.columns import utcnow
from resolvers.moderation import freeze_conversation
from tests.support.client import Json
from tests.support.clock import MovableClock
from tests.support.helpers import Api, Person
from tests.support.lifecycle import REACT
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.streams import before_marker
from tests.support.waiting import until

BAN = "mutation B($c: ID!, $u: ID!, $t: DateTime) { banMember(conversationId: $c, userId: $u, until: $t) }"
UNBAN = "mutation U($c: ID!, $u: ID!) { unbanMember(conversationId: $c, userId: $u) }"
BANS = "query L($c: ID!) { bans(conversationId: $c) { user { id } bannedBy { id } createdAt until } }"
MUTE = "mutation M($c: ID!, $u: ID!, $t: DateTime) { muteMember(conversationId: $c, userId: $u, until: $t) }"
UNMUTE = "mutation N($c: ID!, $u: ID!) { unmuteMember(conversationId: $c, userId: $u) }"
SETTINGS = (
    "mutation S($c: ID!, $i: ConversationSettingsInput!) { updateConversationSettings(conversationId: $c, input: $i) "
    "{ id frozen settings { onlyAdminsSend onlyAdminsEdit slowModeSeconds } } }"
)
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
ADD = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }"
INVITE = "mutation C($c: ID!) { createInvite(conversationId: $c) { code } }"
JOIN = "mutation J($code: String!) { joinByInvite(code: $code) { id } }"
TYPING = "mutation T($c: ID!, $t: Boolean!) { setTyping(conversationId: $c, typing: $t) }"
RENAME = "mutation R($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { title } }"
SEND = "mutation S($input: SendMessageInput!) { sendMessage(input: $input) { id body } }"


@pytest.fixture(scope="module", params=["embedded", "production"])
def clocked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadServer, MovableClock]]:
    """A server of this module's own whose clock the tests move (a ban's or mute's end without waiting)."""
    clock = MovableClock()
    if request.param == "embedded":
        settings = embedded_settings(tmp_path_factory.mktemp("moderation"))
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}moderation:")
        )
    with ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        yield server, clock


def api_of(server: ThreadServer) -> Api:
    return Api(url=server.url, ws_url=server.ws_url, mode="clocked")


async def attempt(person: Person, conversation_id: str, body: str, client_id: str | None = None) -> Json:
    """A send's whole answer: its data, or its errors."""
    variables = {"input": {"conversationId": conversation_id, "clientId": client_id or uuid.uuid4().hex, "body": body}}
    return await person.http.post(SEND, variables)


def stored(answer: Json) -> bool:
    """Whether a send went through (an answer without errors)."""
    return not answer.get("errors") and answer["data"]["sendMessage"] is not None


def failure(answer: Json) -> tuple[str, str]:
    """The code and message of a refused send."""
    error = answer["errors"][0]
    return str(error["extensions"]["code"]), str(error["message"])


def changes(events: list[Json]) -> list[tuple[str, list[str]]]:
    return [(e["change"], [u["id"] for u in e["users"]]) for e in events if e["__typename"] == "ConversationEvent"]


def bodies(events: list[Json]) -> list[str]:
    return [e["message"]["body"] for e in events if e["__typename"] == "MessageEvent"]


async def group_with_admin(api: Api, *names: str) -> tuple[str, list[Person]]:
    """A group of `names` (the first OWNER, the second ADMIN), every member's backlog drained."""
    people = await api.people(*names)
    group = await people[0].create_group(members=people[1:])
    await people[0].data(ROLE, c=group, u=people[1].user_id, r="ADMIN")
    for person in people:
        await person.drain()
    return group, people


async def test_a_ban_keeps_a_member_out_until_it_ends(clocked: tuple[ThreadServer, MovableClock]) -> None:
    """Banned until a time: removed (sends NOT_FOUND), not re-added, no rejoining; listed; free once the time passes."""
    server, clock = clocked
    group, (owner, admin, member, troll) = await group_with_admin(api_of(server), "owner", "admin", "member", "troll")
    code = (await owner.data(INVITE, c=group))["createInvite"]["code"]
    ends = clock.now() + timedelta(hours=1)
    assert (await admin.data(BAN, c=group, u=troll.user_id, t=ends.isoformat()))["banMember"] is True

    assert failure(await attempt(troll, group, "still here?"))[0] == "NOT_FOUND"
    assert await admin.error(ADD, c=group, u=[troll.user_id]) == "FORBIDDEN"
    assert await troll.error(JOIN, code=code) == "FORBIDDEN"
    listed = (await admin.data(BANS, c=group))["bans"]
    assert [(b["user"]["id"], b["bannedBy"]["id"]) for b in listed] == [(troll.user_id, admin.user_id)]
    assert abs((_parse(listed[0]["until"]) - ends).total_seconds()) < 1
    assert await member.error(BANS, c=group) == "FORBIDDEN"
    assert await owner.error(BAN, c=group, u=member.user_id, t=(clock.now() - timedelta(1)).isoformat()) == (
        "BAD_USER_INPUT"
    ), "an end in the past"
    assert await owner.error(BAN, c=group, u=member.user_id, t=(clock.now() + timedelta(days=400)).isoformat()) == (
        "BAD_USER_INPUT"
    ), "beyond the server's maximum"

    clock.advance(3601)
    assert (await admin.data(BANS, c=group))["bans"] == []
    assert (await troll.data(JOIN, code=code))["joinByInvite"]["id"] == group
    assert stored(await attempt(troll, group, "back"))
    assert bodies(await member.pending()) == ["back"]


async def test_a_muted_member_receives_but_cannot_send_react_or_type(api: Api) -> None:
    """muteMember: FORBIDDEN naming the mute for sends, reactions and typing; they still receive; unmute restores."""
    group, (owner, admin, member, chatty) = await group_with_admin(api, "owner", "admin", "member", "chatty")
    sent = await owner.send(group, "before")
    assert await member.error(MUTE, c=group, u=chatty.user_id) == "FORBIDDEN"
    assert await admin.error(MUTE, c=group, u=owner.user_id) == "FORBIDDEN", "an admin cannot mute an owner"
    assert (await admin.data(MUTE, c=group, u=chatty.user_id))["muteMember"] is True
    assert changes(await member.pending())[-1] == ("MEMBER_MUTED", [chatty.user_id])

    code, message = failure(await attempt(chatty, group, "let me talk"))
    assert (code, message) == ("FORBIDDEN", "You are muted in this conversation until unmuted.")
    assert await chatty.error(REACT, m=sent["id"], e="👍") == "FORBIDDEN"
    async with member.events() as live:
        assert await chatty.error(TYPING, c=group, t=True) == "FORBIDDEN"
        seen = await before_marker(live, owner, group)
    assert not [e for e in seen if e["__typename"] == "TypingEvent"], "a muted member's typing never arrives"
    assert "marker" in bodies(await chatty.pending()), "a muted member still receives"

    assert (await owner.data(UNMUTE, c=group, u=chatty.user_id))["unmuteMember"] is True
    assert changes(await member.pending())[-1] == ("MEMBER_UNMUTED", [chatty.user_id])
    assert stored(await attempt(chatty, group, "thanks"))


async def test_a_mute_with_an_end_ends(api: Api) -> None:
    """A mute until a time names it in the refusal and lets the member send once it has passed (no unmute)."""
    group, (owner, _admin, chatty) = await group_with_admin(api, "owner", "admin", "chatty")
    ends = utcnow() + timedelta(seconds=2)
    await owner.data(MUTE, c=group, u=chatty.user_id, t=ends.isoformat())
    code, message = failure(await attempt(chatty, group, "now?"))
    assert code == "FORBIDDEN"
    assert message == f"You are muted in this conversation until {ends.isoformat(timespec='seconds')}."
    client_id = uuid.uuid4().hex  # one message, however many tries it takes

    async def spoke() -> bool | None:
        return stored(await attempt(chatty, group, "now!", client_id)) or None

    await until(spoke, "the mute to end")
    assert bodies(await owner.pending())[-1] == "now!"


async def test_slow_mode_lets_one_of_concurrent_sends_through(api: Api) -> None:
    """Ten sends of one member at once in slow mode: one stored, nine RATE_LIMITED with the wait; admins exempt."""
    group, (_owner, admin, member, eager) = await group_with_admin(api, "owner", "admin", "member", "eager")
    changed = (await admin.data(SETTINGS, c=group, i={"slowModeSeconds": 60}))["updateConversationSettings"]
    assert changed["settings"] == {"onlyAdminsSend": False, "onlyAdminsEdit": True, "slowModeSeconds": 60}

    answers = await asyncio.gather(*(attempt(eager, group, f"m{i}") for i in range(10)))
    refused = [a for a in answers if not stored(a)]
    assert len(refused) == 9
    for answer in refused:
        error = answer["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error["extensions"]["retryAfter"] <= 60
        assert f"{error['extensions']['retryAfter']} seconds" in error["message"]
    assert len(bodies(await member.pending())) == 1
    for i in range(2):
        assert stored(await attempt(admin, group, f"admin {i}")), "owners and admins are not slowed"

    assert failure(await attempt(eager, group, "once more"))[0] == "RATE_LIMITED"
    await admin.data(SETTINGS, c=group, i={"slowModeSeconds": None})
    assert stored(await attempt(eager, group, "slow mode off"))


async def test_slow_mode_holds_for_sends_queued_behind_the_conversation_lock(
    production_server: ThreadServer, migrated_postgres: str
) -> None:
    """Sends that all waited for the conversation's lock (so their snapshots predate each other's commits): one passes.

    The case a read of the member's row without its own lock would miss: each queued send would
    see the last send time as of before the others committed.
    """
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    group, (_owner, admin, member, eager) = await group_with_admin(api, "owner", "admin", "member", "eager")
    await admin.data(SETTINGS, c=group, i={"slowModeSeconds": 3600})
    dsn = migrated_postgres.replace("postgresql+asyncpg://", "postgresql://", 1)
    holder = await asyncpg.connect(dsn)  # type: ignore[no-untyped-call]
    watcher = await asyncpg.connect(dsn)  # type: ignore[no-untyped-call]
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE", int(group))
        sends = [asyncio.create_task(attempt(eager, group, f"m{i}")) for i in range(10)]

        async def queued() -> int | None:
            # the first waits for this lock, the others for the first (as many as the server's pool runs at once)
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND cardinality(pg_blocking_pids(pid)) > 0 AND query LIKE '%WITH conv AS%'"
            )
            return int(waiting) if waiting >= 3 else None

        await until(queued, "sends to queue behind the lock")
        await held.rollback()
        answers = await asyncio.gather(*sends)
    finally:
        await holder.close()
        await watcher.close()
    assert sorted("OK" if stored(a) else failure(a)[0] for a in answers) == ["OK", *["RATE_LIMITED"] * 9]
    assert len(bodies(await member.pending())) == 1


async def test_slow_mode_holds_across_server_processes(
    tmp_path: Path, migrated_postgres: str, redis_target: RedisTarget
) -> None:
    """One member's sends racing through two `parley serve` processes in slow mode: exactly one is stored."""
    env = suite_process_env(migrated_postgres, redis_target)
    async with (
        ProcessServer(env, log_path=tmp_path / "a.log") as first,
        ProcessServer(env, log_path=tmp_path / "b.log") as second,
    ):
        group, (_owner, admin, member, eager) = await group_with_admin(
            Api(url=first.url, ws_url=first.ws_url, mode="production"), "owner", "admin", "member", "eager"
        )
        await admin.data(SETTINGS, c=group, i={"slowModeSeconds": 3600})
        other = replace(eager, api=Api(url=second.url, ws_url=second.ws_url, mode="production"))
        answers = await asyncio.gather(*(attempt(p, group, f"m{i}") for i, p in enumerate([eager, other] * 5)))
        assert sorted("OK" if stored(a) else failure(a)[0] for a in answers) == [
            "OK",
            *["RATE_LIMITED"] * 9,
        ]
        assert len(bodies(await member.pending())) == 1


async def test_announcement_mode_holds_under_concurrent_sends(api: Api) -> None:
    """With onlyAdminsSend, of sends racing from everyone only the owner's and admins' are stored."""
    group, (owner, admin, m1, m2) = await group_with_admin(api, "owner", "admin", "m1", "m2")
    await owner.data(SETTINGS, c=group, i={"onlyAdminsSend": True})
    people = [owner, admin, m1, m2] * 3
    answers = await asyncio.gather(*(attempt(p, group, f"{p.username}:{i}") for i, p in enumerate(people)))
    for person, answer in zip(people, answers, strict=True):
        if person in (m1, m2):
            assert failure(answer) == ("FORBIDDEN", "Only the group's owners and admins can send messages here.")
        else:
            assert stored(answer)
    received = bodies(await m1.pending())
    assert len(received) == 6
    assert {body.split(":")[0] for body in received} == {owner.username, admin.username}


async def test_settings_are_for_admins_and_every_change_is_announced(api: Api) -> None:
    """Members are FORBIDDEN; each change is a SETTINGS_CHANGED for members; onlyAdminsEdit off lets members rename."""
    group, (owner, admin, member) = await group_with_admin(api, "owner", "admin", "member")
    assert await member.error(SETTINGS, c=group, i={"onlyAdminsSend": True}) == "FORBIDDEN"
    assert await member.error(RENAME, c=group, t="mine") == "FORBIDDEN"
    assert await admin.error(SETTINGS, c=group, i={"slowModeSeconds": 0}) == "BAD_USER_INPUT"

    result = (await admin.data(SETTINGS, c=group, i={"onlyAdminsEdit": False}))["updateConversationSettings"]
    assert result["settings"]["onlyAdminsEdit"] is False
    await admin.data(SETTINGS, c=group, i={"onlyAdminsEdit": False})  # no change, no event
    assert (await member.data(RENAME, c=group, t="ours"))["renameGroup"]["title"] == "ours"
    assert [c for c, _ in changes(await member.pending())] == ["SETTINGS_CHANGED", "RENAMED"]
    direct = await owner.direct_with(member)
    assert await owner.error(SETTINGS, c=direct, i={"onlyAdminsSend": True}) == "BAD_USER_INPUT"


async def test_a_frozen_conversation_refuses_sends_reactions_and_typing(
    api: Api, request: pytest.FixtureRequest
) -> None:
    """The operator's freeze: FORBIDDEN "This conversation is frozen" for everyone, owners too; FROZEN/UNFROZEN events."""
    group, (owner, _admin, member) = await group_with_admin(api, "owner", "admin", "member")
    sent = await owner.send(group, "before")
    server: ThreadServer = request.getfixturevalue(f"{api.mode}_server")
    async with _connected_services(server.settings, Overrides(fast_password_hashing=True)) as services:
        await freeze_conversation(services, int(group), frozen=True)
        for person in (owner, member):
            assert failure(await attempt(person, group, "hello?")) == ("FORBIDDEN", "This conversation is frozen.")
        assert await member.error(REACT, m=sent["id"], e="👍") == "FORBIDDEN"
        assert await member.error(TYPING, c=group, t=True) == "FORBIDDEN"
        await freeze_conversation(services, int(group), frozen=False)
    assert stored(await attempt(member, group, "thawed"))
    assert [c for c, _ in changes(await member.pending())] == ["FROZEN", "UNFROZEN"]


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
