"""Invite links and bans over the real API, in both modes: joining once, every refusal, the caps under concurrency."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from infra.app import Overrides
from tests.support.client import Json
from tests.support.clock import MovableClock
from tests.support.database_dump import dump_settings_tables
from tests.support.helpers import Api, Person
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings
from tests.support.streams import next_of
from tests.support.waiting import until

CREATE = (
    "mutation C($c: ID!, $n: Int, $e: Int) { createInvite(conversationId: $c, maxUses: $n, expiresIn: $e) "
    "{ id code maxUses uses expiresAt revoked createdAt createdBy { id } conversation { id title } } }"
)
JOIN = "mutation J($code: String!) { joinByInvite(code: $code) { id kind title members { role user { id } } } }"
REVOKE = "mutation R($i: ID!) { revokeInvite(inviteId: $i) }"
LIST = "query I($c: ID!) { invites(conversationId: $c) { id code maxUses uses revoked createdBy { id } } }"
BAN = "mutation B($c: ID!, $u: ID!, $e: DateTime) { banMember(conversationId: $c, userId: $u, until: $e) }"
UNBAN = "mutation U($c: ID!, $u: ID!) { unbanMember(conversationId: $c, userId: $u) }"
ADD = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }"
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
LEAVE = "mutation L($c: ID!) { leaveGroup(conversationId: $c) }"
MEMBERS = "query M($c: ID!) { conversation(id: $c) { members { user { id } } } }"


async def invite(
    person: Person, conversation_id: str, *, max_uses: int | None = None, expires_in: int | None = None
) -> Json:
    """A new invite link (with its code) created by `person`."""
    created: Json = (await person.data(CREATE, c=conversation_id, n=max_uses, e=expires_in))["createInvite"]
    return created


async def join(person: Person, code: str) -> Json:
    joined: Json = (await person.data(JOIN, code=code))["joinByInvite"]
    return joined


async def refusal(person: Person, code: str) -> tuple[str, str]:
    """The code and message of a join that must fail."""
    failed = await person.http.error(JOIN, code=code)
    return failed.code, str(failed.errors[0]["message"])


async def outcome(person: Person, code: str) -> str:
    """JOINED, or the error code of the join."""
    body = await person.http.post(JOIN, {"code": code})
    return str(body["errors"][0]["extensions"]["code"]) if body.get("errors") else "JOINED"


def changes(events: list[Json]) -> list[tuple[str, list[str]]]:
    """The conversation changes among `events`, each with the users it names."""
    return [(e["change"], [u["id"] for u in e["users"]]) for e in events if e["__typename"] == "ConversationEvent"]


async def member_ids(person: Person, conversation_id: str) -> set[str]:
    members = (await person.data(MEMBERS, c=conversation_id))["conversation"]["members"]
    return {m["user"]["id"] for m in members}


async def test_an_invite_joins_a_user_once_and_members_hear_of_it(api: Api) -> None:
    """The joiner is in at once; joining again uses nothing up and announces nothing; every member's device hears it."""
    owner, member, joiner = await api.people("owner", "member", "joiner")
    joiner_laptop = await joiner.other_device("laptop")
    group = await owner.create_group("Climbing", members=[member])
    await member.drain()
    created = await invite(owner, group, max_uses=2)
    assert created["uses"] == 0
    assert created["createdBy"] == {"id": owner.user_id}
    assert created["conversation"] == {"id": group, "title": "Climbing"}

    async with member.events() as live:
        joined = await join(joiner, created["code"])
        event = await next_of(live, "ConversationEvent")
    assert joined["id"] == group
    assert {m["user"]["id"]: m["role"] for m in joined["members"]}[joiner.user_id] == "MEMBER"
    assert event["change"] == "JOINED"
    assert event["users"] == [{"id": joiner.user_id}]
    assert event["actor"] == {"id": joiner.user_id}

    again = await join(joiner, created["code"])
    assert again["id"] == group
    assert [i["uses"] for i in (await owner.data(LIST, c=group))["invites"]] == [1]
    assert changes(await member.pending()) == [("JOINED", [joiner.user_id])]
    assert changes(await owner.pending()) == [
        ("CREATED", [owner.user_id, member.user_id]),
        ("JOINED", [joiner.user_id]),
    ]
    for device in (joiner, joiner_laptop):
        assert changes(await device.pending()) == [("JOINED", [joiner.user_id])]
    assert await member_ids(member, group) == {owner.user_id, member.user_id, joiner.user_id}


async def test_only_owners_and_admins_handle_invites_and_codes_are_shown_once(api: Api) -> None:
    """Members are FORBIDDEN, strangers NOT_FOUND, direct chats BAD_USER_INPUT; `invites` never shows a code."""
    owner, admin, member, stranger = await api.people("owner", "admin", "member", "stranger")
    group = await owner.create_group(members=[admin, member])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    created = await invite(admin, group)
    code = created["code"]
    # 192 random bits: 32 URL-safe characters, never the same twice.
    assert len(code) >= 32
    assert code != (await invite(owner, group))["code"]

    assert await member.error(CREATE, c=group) == "FORBIDDEN"
    assert await member.error(LIST, c=group) == "FORBIDDEN"
    assert await member.error(REVOKE, i=created["id"]) == "FORBIDDEN"
    assert await stranger.error(CREATE, c=group) == "NOT_FOUND"
    assert await stranger.error(LIST, c=group) == "NOT_FOUND"
    assert await stranger.error(REVOKE, i=created["id"]) == "NOT_FOUND"
    assert await stranger.error(REVOKE, i="987654321") == "NOT_FOUND"
    direct = await owner.direct_with(member)
    assert await owner.error(CREATE, c=direct) == "BAD_USER_INPUT"
    assert await owner.error(CREATE, c=group, n=0) == "BAD_USER_INPUT"
    assert await owner.error(CREATE, c=group, e=0) == "BAD_USER_INPUT"
    assert await owner.error(CREATE, c=group, e=10**9) == "BAD_USER_INPUT"

    listed = (await owner.data(LIST, c=group))["invites"]
    assert [i["code"] for i in listed] == [None, None]
    assert {i["createdBy"]["id"] for i in listed} == {owner.user_id, admin.user_id}
    assert (await admin.data(REVOKE, i=created["id"]))["revokeInvite"] is True
    assert (await owner.data(REVOKE, i=created["id"]))["revokeInvite"] is True, "revoking again changes nothing"
    revoked = {i["id"]: i["revoked"] for i in (await owner.data(LIST, c=group))["invites"]}
    assert revoked[created["id"]] is True


@pytest.fixture(scope="module", params=["embedded", "production"])
def clocked(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ThreadServer, MovableClock]]:
    """A server of this module's own whose clock the tests move (expiry without waiting).

    In production mode it shares the run's database but has a Redis namespace of its own, so
    its bus and presence registry do not mix with the shared server's.
    """
    clock = MovableClock()
    if request.param == "embedded":
        settings = embedded_settings(tmp_path_factory.mktemp("invites"))
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}clocked:")
        )
    with ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        yield server, clock


def api_of(server: ThreadServer, mode: str = "clocked") -> Api:
    return Api(url=server.url, ws_url=server.ws_url, mode=mode)


async def test_expired_revoked_used_up_and_wrong_codes_get_one_answer(
    clocked: tuple[ThreadServer, MovableClock],
) -> None:
    """Expired, revoked, used up and made-up codes are all the same NOT_FOUND: none tells an attacker more."""
    server, clock = clocked
    api = api_of(server)
    owner, first, second = await api.people("owner", "first", "second")
    group = await owner.create_group(members=[])
    expiring = await invite(owner, group, expires_in=60)
    revoked = await invite(owner, group)
    single = await invite(owner, group, max_uses=1)
    await owner.data(REVOKE, i=revoked["id"])
    await join(first, single["code"])
    clock.advance(61)

    answers = {
        "expired": await refusal(second, expiring["code"]),
        "revoked": await refusal(second, revoked["code"]),
        "used up": await refusal(second, single["code"]),
        "made up": await refusal(second, "x" * 32),
        "empty": await refusal(second, ""),
    }
    assert set(answers.values()) == {answers["made up"]}, answers
    assert answers["made up"][0] == "NOT_FOUND"
    assert await member_ids(owner, group) == {owner.user_id, first.user_id}
    assert (await join(first, single["code"]))["id"] == group, "a member joining again still gets the group"
    # Without expiresIn, an invite lives as long as the server allows (30 days by default).
    lasting = await invite(owner, group)
    lifetime = datetime.fromisoformat(lasting["expiresAt"]) - datetime.fromisoformat(lasting["createdAt"])
    assert lifetime == timedelta(days=30)
    assert (await join(second, lasting["code"]))["id"] == group


async def test_the_database_holds_only_the_codes_hash(clocked: tuple[ThreadServer, MovableClock]) -> None:
    """A dump of every table has the SHA-256 of a code, never the code itself."""
    server, _ = clocked
    owner = await api_of(server).register("owner")
    group = await owner.create_group(members=[])
    code = (await invite(owner, group))["code"]
    dump = await dump_settings_tables(server.settings)
    assert hashlib.sha256(code.encode()).hexdigest() in dump
    assert code not in dump


async def test_bans_and_blocks_refuse_a_join(clocked: tuple[ThreadServer, MovableClock]) -> None:
    """Banned, or blocked by the invite's creator or the group's owner: FORBIDDEN, one message for all; a ban ends."""
    server, clock = clocked
    api = api_of(server)
    owner, admin, bystander, banned, shunned, disliked, joiner = await api.people(
        "owner", "admin", "bystander", "banned", "shunned", "disliked", "joiner"
    )
    group = await owner.create_group(members=[admin, bystander, banned])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    code = (await invite(admin, group))["code"]
    ends = (clock.now() + timedelta(seconds=3600)).isoformat()
    assert (await owner.data(BAN, c=group, u=banned.user_id, e=ends))["banMember"] is True
    await owner.data(BLOCK, u=shunned.user_id)
    await admin.data(BLOCK, u=disliked.user_id)
    await bystander.data(BLOCK, u=joiner.user_id)

    answers = [await refusal(person, code) for person in (banned, shunned, disliked)]
    assert answers[0][0] == "FORBIDDEN"
    assert answers == [answers[0]] * 3, "a ban and a block read the same"
    # As for addMembers, only who puts the joiner in the group counts: other members' blocks do not.
    assert (await join(joiner, code))["id"] == group
    clock.advance(3601)
    assert (await join(banned, code))["id"] == group, "the ban has ended"
    assert await member_ids(owner, group) == {
        owner.user_id,
        admin.user_id,
        bystander.user_id,
        banned.user_id,
        joiner.user_id,
    }


async def test_a_ban_removes_the_member_and_keeps_them_out_until_unbanned(api: Api) -> None:
    """banMember removes (MEMBER_REMOVED) and bars addMembers and invites; idempotent; admins cannot ban an owner."""
    owner, admin, member, troll = await api.people("owner", "admin", "member", "troll")
    group = await owner.create_group(members=[admin, member, troll])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    code = (await invite(owner, group))["code"]
    await troll.drain()
    await member.drain()

    assert (await admin.data(BAN, c=group, u=troll.user_id))["banMember"] is True
    assert (await admin.data(BAN, c=group, u=troll.user_id))["banMember"] is True, "banning again is harmless"
    assert changes(await troll.pending()) == [("MEMBER_REMOVED", [troll.user_id])]
    assert changes(await member.pending()) == [("MEMBER_REMOVED", [troll.user_id])]
    assert await troll.error(MEMBERS, c=group) == "NOT_FOUND"
    assert await admin.error(ADD, c=group, u=[troll.user_id]) == "FORBIDDEN"
    assert (await refusal(troll, code))[0] == "FORBIDDEN"

    assert await admin.error(BAN, c=group, u=owner.user_id) == "FORBIDDEN"
    assert await member.error(BAN, c=group, u=admin.user_id) == "FORBIDDEN"
    assert await member.error(UNBAN, c=group, u=troll.user_id) == "FORBIDDEN"
    assert await owner.error(BAN, c=group, u=owner.user_id) == "BAD_USER_INPUT"
    assert await troll.error(BAN, c=group, u=member.user_id) == "NOT_FOUND"
    assert await owner.error(BAN, c=group, u="987654321") == "NOT_FOUND"
    assert await member_ids(owner, group) == {owner.user_id, admin.user_id, member.user_id}

    assert (await owner.data(UNBAN, c=group, u=troll.user_id))["unbanMember"] is True
    assert (await owner.data(UNBAN, c=group, u=troll.user_id))["unbanMember"] is True
    assert (await join(troll, code))["id"] == group


async def test_a_full_group_refuses_the_101st(api: Api) -> None:
    """A group of 100 refuses a join with CONFLICT and uses nothing up; once someone leaves, the join goes through."""
    owner = await api.register("owner")
    others = await asyncio.gather(*(api.register(f"m{i}") for i in range(100)))
    group = await owner.create_group(members=others[:99])
    created = await invite(owner, group, max_uses=1)
    latecomer = others[99]
    code, message = await refusal(latecomer, created["code"])
    assert code == "CONFLICT"
    assert "100" in message
    assert [i["uses"] for i in (await owner.data(LIST, c=group))["invites"]] == [0]
    await others[0].data(LEAVE, c=group)
    assert len((await join(latecomer, created["code"]))["members"]) == 100


@pytest.fixture
def production_api(production_server: ThreadServer) -> Api:
    """The shared production server (PostgreSQL, Redis): where concurrent joins really run in parallel."""
    return api_of(production_server, "production")


async def test_concurrent_joins_never_exceed_max_uses(production_api: Api) -> None:
    """12 users join at once with a link for 5: exactly 5 get in, the rest get NOT_FOUND."""
    owner = await production_api.register("owner")
    joiners = await asyncio.gather(*(production_api.register(f"j{i}") for i in range(12)))
    group = await owner.create_group(members=[])
    code = (await invite(owner, group, max_uses=5))["code"]

    outcomes = await asyncio.gather(*(outcome(person, code) for person in joiners))
    assert sorted(outcomes) == ["JOINED"] * 5 + ["NOT_FOUND"] * 7
    assert len(await member_ids(owner, group)) == 6
    assert [i["uses"] for i in (await owner.data(LIST, c=group))["invites"]] == [5]


async def test_concurrent_joins_never_exceed_the_member_cap(production_api: Api) -> None:
    """6 users join a group of 97 at once: exactly 3 get in, the rest get CONFLICT."""
    owner = await production_api.register("owner")
    people = await asyncio.gather(*(production_api.register(f"c{i}") for i in range(102)))
    group = await owner.create_group(members=people[:96])
    code = (await invite(owner, group))["code"]

    outcomes = await asyncio.gather(*(outcome(person, code) for person in people[96:]))
    assert sorted(outcomes) == ["CONFLICT"] * 3 + ["JOINED"] * 3
    assert len(await member_ids(owner, group)) == 100


@pytest.fixture(params=["embedded", "production"])
def strict_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """A server of its own allowing 4 invalid codes per user and 6 per address (in a Redis namespace of its own)."""
    limits: dict[str, object] = {"invite_failures_per_user": 4, "invite_failures_per_address": 6}
    if request.param == "embedded":
        settings = embedded_settings(tmp_path, **limits)
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}strict:"), **limits
        )
    with ThreadServer(settings) as server:
        yield api_of(server, request.param)


async def test_invalid_codes_are_rate_limited_per_user_and_per_address(strict_api: Api) -> None:
    """Valid joins cost nothing; invalid codes trip RATE_LIMITED per user, then per address, even for a good code."""
    owner, regular, guesser, other = await strict_api.people("owner", "regular", "guesser", "other")
    groups = [await owner.create_group(f"g{i}", members=[]) for i in range(7)]
    codes = [(await invite(owner, group))["code"] for group in groups]
    for code in codes[:-1]:
        await join(regular, code)  # more than either limit: successful joins are not counted

    for n in range(4):
        assert (await refusal(guesser, f"guess-{n}"))[0] == "NOT_FOUND"
    assert (await refusal(guesser, "guess-5"))[0] == "RATE_LIMITED"
    assert (await refusal(guesser, codes[-1]))[0] == "RATE_LIMITED", "a locked user cannot join even with a good code"

    # The address has seen 4 or 5 failures: a fresh user there trips its limit before their own.
    answers = [(await refusal(other, f"other-{n}"))[0] for n in range(3)]
    assert answers[-1] == "RATE_LIMITED"
    assert (await refusal(other, codes[-1]))[0] == "RATE_LIMITED"


async def test_ended_links_leave_the_database_once_no_longer_listed(tmp_path: Path) -> None:
    """A revoked or expired link stays listed for a week, then the periodic sweep deletes its row."""
    clock = MovableClock()
    settings = embedded_settings(tmp_path, sweep_interval_seconds=0.2)
    with ThreadServer(settings, Overrides(fast_password_hashing=True, now=clock.now)) as server:
        owner = await api_of(server).register("owner")
        group = await owner.create_group(members=[])
        expiring = await invite(owner, group, expires_in=60)
        revoked = await invite(owner, group)
        await owner.data(REVOKE, i=revoked["id"])
        hashes = [hashlib.sha256(link["code"].encode()).hexdigest() for link in (expiring, revoked)]
        clock.advance(6 * 86400)
        assert len((await owner.data(LIST, c=group))["invites"]) == 2, "ended links stay listed for a week"
        dump = await dump_settings_tables(server.settings)
        assert all(digest in dump for digest in hashes)

        clock.advance(2 * 86400)

        async def swept() -> bool:
            dump = await dump_settings_tables(server.settings)
            return not any(digest in dump for digest in hashes)

        await until(swept, "the sweep deleting ended invite links")
        assert (await owner.data(LIST, c=group))["invites"] == []
