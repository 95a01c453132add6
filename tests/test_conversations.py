"""Conversations, groups and roles over the real API, in both modes."""

from __future__ import annotations

import asyncio

from tests.support.helpers import CONVERSATION_FIELDS, Api

CONVERSATION = f"query C($id: ID!) {{ conversation(id: $id) {{ {CONVERSATION_FIELDS} }} }}"
ADD = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { members { user { id } } } }"
REMOVE = "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { members { user { id } } } }"
RENAME = "mutation N($c: ID!, $t: String!) { renameGroup(conversationId: $c, title: $t) { title } }"
LEAVE = "mutation L($c: ID!) { leaveGroup(conversationId: $c) }"
MUTE = "mutation M($c: ID!, $m: Boolean!) { muteConversation(conversationId: $c, muted: $m) { muted } }"
ROLE = (
    "mutation P($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
SEND = 'mutation S($c: ID!) { sendMessage(input: {conversationId: $c, clientId: "x", body: "hi"}) { id } }'


def roles(conversation: dict[str, object]) -> dict[str, str]:
    members = conversation["members"]
    assert isinstance(members, list)
    return {m["user"]["id"]: m["role"] for m in members}


async def test_direct_conversation_is_one_per_pair(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    first = await alice.direct_with(bob)
    assert await bob.direct_with(alice) == first
    assert await alice.direct_with(bob) == first
    conversation = (await bob.data(CONVERSATION, id=first))["conversation"]
    assert conversation["kind"] == "DIRECT"
    assert conversation["title"] is None
    assert set(roles(conversation)) == {alice.user_id, bob.user_id}
    assert (
        await alice.error("mutation D($u: ID!) { startDirectConversation(userId: $u) { id } }", u=alice.user_id)
        == "BAD_USER_INPUT"
    )
    assert await alice.error('mutation { startDirectConversation(userId: "99999999") { id } }') == "NOT_FOUND"


async def test_concurrent_direct_starts_agree(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    ids = await asyncio.gather(alice.direct_with(bob), bob.direct_with(alice), alice.direct_with(bob))
    assert len(set(ids)) == 1


async def test_group_creator_is_owner_and_members_are_members(api: Api) -> None:
    owner, a, b = await api.people("owner", "a", "b")
    group = await owner.create_group("Team", members=[a, b, a])
    conversation = (await a.data(CONVERSATION, id=group))["conversation"]
    assert conversation["kind"] == "GROUP"
    assert conversation["title"] == "Team"
    assert roles(conversation) == {owner.user_id: "OWNER", a.user_id: "MEMBER", b.user_id: "MEMBER"}


async def test_group_title_and_member_ids_are_checked(api: Api) -> None:
    owner, a = await api.people("owner", "a")
    create = "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { id } }"
    assert await owner.error(create, t="  ", m=[a.user_id]) == "BAD_USER_INPUT"
    assert await owner.error(create, t="x" * 101, m=[a.user_id]) == "BAD_USER_INPUT"
    assert await owner.error(create, t="ok", m=["99999999"]) == "NOT_FOUND"


async def test_non_members_see_not_found_exactly_as_for_a_missing_id(api: Api) -> None:
    owner, member, stranger = await api.people("owner", "member", "stranger")
    group = await owner.create_group(members=[member])
    missing = "987654321"
    for conversation_id in (group, missing):
        assert await stranger.error(CONVERSATION, id=conversation_id) == "NOT_FOUND"
        assert await stranger.error(SEND, c=conversation_id) == "NOT_FOUND"
        assert await stranger.error(RENAME, c=conversation_id, t="mine") == "NOT_FOUND"
        assert await stranger.error(ADD, c=conversation_id, u=[stranger.user_id]) == "NOT_FOUND"
        assert await stranger.error(LEAVE, c=conversation_id) == "NOT_FOUND"
        assert await stranger.error(MUTE, c=conversation_id, m=True) == "NOT_FOUND"
    group_error = await stranger.http.error(CONVERSATION, id=group)
    missing_error = await stranger.http.error(CONVERSATION, id=missing)
    assert group_error.errors[0]["message"] == missing_error.errors[0]["message"]
    assert await stranger.error(CONVERSATION, id="not-a-number") == "NOT_FOUND"


async def test_members_cannot_make_admin_changes(api: Api) -> None:
    owner, member, other, outsider = await api.people("owner", "member", "other", "outsider")
    group = await owner.create_group(members=[member, other])
    assert await member.error(ADD, c=group, u=[outsider.user_id]) == "FORBIDDEN"
    assert await member.error(REMOVE, c=group, u=other.user_id) == "FORBIDDEN"
    assert await member.error(RENAME, c=group, t="mine now") == "FORBIDDEN"
    assert await member.error(ROLE, c=group, u=other.user_id, r="ADMIN") == "FORBIDDEN"
    conversation = (await owner.data(CONVERSATION, id=group))["conversation"]
    assert conversation["title"] == "group"
    assert len(conversation["members"]) == 3


async def test_admins_manage_members_but_cannot_remove_an_owner(api: Api) -> None:
    owner, admin, member, newcomer = await api.people("owner", "admin", "member", "newcomer")
    group = await owner.create_group(members=[admin, member])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    await admin.data(ADD, c=group, u=[newcomer.user_id])
    await admin.data(REMOVE, c=group, u=member.user_id)
    assert (await admin.data(RENAME, c=group, t="Renamed"))["renameGroup"]["title"] == "Renamed"
    assert await admin.error(REMOVE, c=group, u=owner.user_id) == "FORBIDDEN"
    conversation = (await owner.data(CONVERSATION, id=group))["conversation"]
    assert set(roles(conversation)) == {owner.user_id, admin.user_id, newcomer.user_id}
    assert await member.error(CONVERSATION, id=group) == "NOT_FOUND", "a removed member no longer sees it"


async def test_last_owner_leaving_hands_ownership_to_the_oldest_admin(api: Api) -> None:
    owner, early, admin = await api.people("owner", "early", "admin")
    group = await owner.create_group(members=[early, admin])
    await owner.data(ROLE, c=group, u=admin.user_id, r="ADMIN")
    assert (await owner.data(LEAVE, c=group))["leaveGroup"] is True
    conversation = (await early.data(CONVERSATION, id=group))["conversation"]
    assert roles(conversation) == {early.user_id: "MEMBER", admin.user_id: "OWNER"}


async def test_last_owner_leaving_without_admins_hands_ownership_to_the_oldest_member(api: Api) -> None:
    owner, first, second = await api.people("owner", "first", "second")
    group = await owner.create_group(members=[first])
    await owner.data(ADD, c=group, u=[second.user_id])
    await owner.data(LEAVE, c=group)
    conversation = (await second.data(CONVERSATION, id=group))["conversation"]
    assert roles(conversation) == {first.user_id: "OWNER", second.user_id: "MEMBER"}


async def test_group_member_limit_is_100(api: Api) -> None:
    owner = await api.register("owner")
    others = await asyncio.gather(*(api.register(f"m{i}") for i in range(100)))
    create = "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { members { role } } }"
    too_many = await owner.http.error(create, t="big", m=[p.user_id for p in others])
    assert too_many.code == "BAD_USER_INPUT"
    assert "100" in too_many.errors[0]["message"]
    created = await owner.data(create, t="big", m=[p.user_id for p in others[:99]])
    assert len(created["createGroup"]["members"]) == 100

    small = await owner.create_group(members=others[:98])
    await owner.data(ADD, c=small, u=[others[98].user_id])
    assert await owner.error(ADD, c=small, u=[others[99].user_id]) == "BAD_USER_INPUT"


async def test_mute_is_per_viewer(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    assert (await alice.data(MUTE, c=direct, m=True))["muteConversation"]["muted"] is True
    assert (await alice.data(CONVERSATION, id=direct))["conversation"]["muted"] is True
    assert (await bob.data(CONVERSATION, id=direct))["conversation"]["muted"] is False


async def test_conversations_are_listed_most_recently_active_first(api: Api) -> None:
    me, a, b, c = await api.people("me", "a", "b", "c")
    with_a = await me.direct_with(a)
    with_b = await me.direct_with(b)
    group = await me.create_group(members=[c])
    await a.send(with_a, "bump")
    listed = [c["id"] for c in (await me.data("{ conversations { id } }"))["conversations"]]
    assert listed == [with_a, group, with_b]


async def test_direct_conversations_have_no_member_changes(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    direct = await alice.direct_with(bob)
    assert await alice.error(ADD, c=direct, u=[carol.user_id]) == "BAD_USER_INPUT"
    assert await alice.error(LEAVE, c=direct) == "BAD_USER_INPUT"


async def test_changes_reach_everyone_concerned_as_events(api: Api) -> None:
    owner, member, removed = await api.people("owner", "member", "removed")
    group = await owner.create_group(members=[member, removed])
    await owner.data(RENAME, c=group, t="New name")
    await owner.data(REMOVE, c=group, u=removed.user_id)

    def changes(events: list[dict[str, object]]) -> list[object]:
        return [e["change"] for e in events if e["__typename"] == "ConversationEvent"]

    assert changes(await member.pending()) == ["CREATED", "RENAMED", "MEMBER_REMOVED"]
    removed_events = await removed.pending()
    assert changes(removed_events) == ["CREATED", "RENAMED", "MEMBER_REMOVED"]
    last = removed_events[-1]
    assert last["users"] == [{"id": removed.user_id}]
    assert last["actor"] == {"id": owner.user_id}
    assert last["conversation"]["title"] == "New name"
    assert last["conversation"]["members"] == [], "a removed member no longer sees who is in it"
    assert len((await member.pending())[-1]["conversation"]["members"]) == 2
