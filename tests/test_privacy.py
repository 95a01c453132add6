"""Presence privacy (issue 7, item 7): online and last seen only for conversation partners, last seen hideable."""

from __future__ import annotations

from tests.support.helpers import Api, Person

PRESENCE = "query U($id: ID!) { user(id: $id) { id online lastSeen } }"


async def presence_of(viewer: Person, user: Person) -> tuple[bool, bool]:
    """(online, last seen shown) of `user` as `viewer` sees it through `user(id)`."""
    seen = (await viewer.data(PRESENCE, id=user.user_id))["user"]
    return seen["online"], seen["lastSeen"] is not None


async def set_hide_last_seen(person: Person, hide: bool) -> dict[str, object]:
    data = await person.data(
        "mutation P($h: Boolean!) { setPrivacy(hideLastSeen: $h) { id hideLastSeen online lastSeen } }", h=hide
    )
    result: dict[str, object] = data["setPrivacy"]
    return result


async def test_item_07_strangers_cannot_track_anyone(api: Api) -> None:
    alice, bob, eve = await api.people("alice", "bob", "eve")
    await alice.direct_with(bob)
    async with alice.socket():  # alice is online
        await alice.data("mutation { heartbeat }")
        assert await presence_of(bob, alice) == (True, True)
        # eve shares no conversation with alice: walking ids tells her nothing.
        assert await presence_of(eve, alice) == (False, False)
        found = await eve.data(
            "query S($p: String!) { searchUsers(prefix: $p) { id online lastSeen } }", p=alice.username
        )
        assert found["searchUsers"] == [{"id": alice.user_id, "online": False, "lastSeen": None}]
        # The viewer always sees their own presence.
        me = (await alice.data("{ me { id online lastSeen } }"))["me"]
        assert me["online"] is True
        assert me["lastSeen"] is not None


async def test_item_07_presence_follows_shared_conversations(api: Api) -> None:
    alice, bob, carol = await api.people("alice", "bob", "carol")
    group = await alice.create_group("friends", members=[bob, carol])
    async with alice.socket():
        await alice.data("mutation { heartbeat }")
        # Everywhere a user is shown: members, message senders.
        members = await bob.data(
            "query C($id: ID!) { conversation(id: $id) { members { user { id online lastSeen } } } }", id=group
        )
        shown = {m["user"]["id"]: m["user"] for m in members["conversation"]["members"]}
        assert shown[alice.user_id]["online"] is True
        assert shown[alice.user_id]["lastSeen"] is not None
        await bob.drain()
        await alice.send(group, "hi")
        events = await bob.data(
            "{ pendingEvents { ... on MessageEvent { message { sender { id online lastSeen } } } } }"
        )
        sender = events["pendingEvents"][-1]["message"]["sender"]
        assert sender == {"id": alice.user_id, "online": True, "lastSeen": sender["lastSeen"]}
        assert sender["lastSeen"] is not None
        # Once bob leaves the only conversation they shared, alice is a stranger to him.
        await bob.data("mutation L($c: ID!) { leaveGroup(conversationId: $c) }", c=group)
        assert await presence_of(bob, alice) == (False, False)
        assert await presence_of(carol, alice) == (True, True)


async def test_item_07_a_user_can_hide_their_last_seen(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    async with alice.socket():
        await alice.data("mutation { heartbeat }")
        assert (await alice.data("{ me { hideLastSeen } }"))["me"]["hideLastSeen"] is False

        mine = await set_hide_last_seen(alice, True)
        assert mine["hideLastSeen"] is True
        assert mine["lastSeen"] is not None, "alice still sees her own last seen"
        assert (await alice.data("{ me { hideLastSeen } }"))["me"]["hideLastSeen"] is True
        # Hidden from everyone, partners included; online stays visible to partners (as in WhatsApp).
        assert await presence_of(bob, alice) == (True, False)
        theirs = await bob.data("query U($id: ID!) { user(id: $id) { hideLastSeen } }", id=alice.user_id)
        assert theirs["user"]["hideLastSeen"] is None, "someone else's setting is not bob's to read"
        await bob.drain()
        await alice.send(direct, "hi")
        events = await bob.data("{ pendingEvents { ... on MessageEvent { message { sender { lastSeen } } } } }")
        assert events["pendingEvents"][-1]["message"]["sender"] == {"lastSeen": None}

        await set_hide_last_seen(alice, False)
        assert await presence_of(bob, alice) == (True, True)


async def test_item_07_a_long_lived_socket_sees_privacy_changes(api: Api) -> None:
    """Answers on one WebSocket are not cached across its operations (the context lives as long as it)."""
    alice, bob = await api.people("alice", "bob")
    await alice.direct_with(bob)
    await alice.data("mutation { heartbeat }")
    async with bob.socket() as socket:
        first = await (await socket.subscribe(PRESENCE, id=alice.user_id)).next()
        assert first["user"]["lastSeen"] is not None
        await set_hide_last_seen(alice, True)
        second = await (await socket.subscribe(PRESENCE, id=alice.user_id)).next()
        assert second["user"]["lastSeen"] is None


async def test_item_07_a_user_who_blocked_you_shows_you_no_presence(api: Api) -> None:
    alice, bob = await api.people("alice", "bob")
    await alice.direct_with(bob)
    async with alice.socket():
        await alice.data("mutation { heartbeat }")
        assert await presence_of(bob, alice) == (True, True)
        await alice.data("mutation B($u: ID!) { blockUser(userId: $u) }", u=bob.user_id)
        assert await presence_of(bob, alice) == (False, False)
        await alice.data("mutation B($u: ID!) { unblockUser(userId: $u) }", u=bob.user_id)
        assert await presence_of(bob, alice) == (True, True)


async def test_a_stranger_who_puts_you_in_a_group_sees_your_presence_only_once_you_write_there(api: Api) -> None:
    """Review 2, item 9: being added to a group is no consent; your first message there (or creating it) is."""
    alice, eve = await api.people("alice", "eve")
    laptop = await alice.other_device("laptop")
    group = await eve.create_group("not your friends", members=[alice])
    async with alice.socket():
        await alice.data("mutation { heartbeat }")
        assert await presence_of(eve, alice) == (False, False)
        members = await eve.data(
            "query C($id: ID!) { conversation(id: $id) { members { user { id online lastSeen } } } }", id=group
        )
        shown = {m["user"]["id"]: m["user"] for m in members["conversation"]["members"]}
        assert shown[alice.user_id] == {"id": alice.user_id, "online": False, "lastSeen": None}
        # eve created the group: her own presence shows to its members.
        assert (await presence_of(alice, eve))[1] is True

        await laptop.drain()
        message = await alice.send(group, "who are you?")
        assert await presence_of(eve, alice) == (True, True)
        # The first send (the one that engages alice) still reaches her other devices.
        assert [e["message"]["id"] for e in await laptop.pending() if e["__typename"] == "MessageEvent"] == [
            message["id"]
        ]
        # Never to someone alice blocked.
        await alice.data("mutation B($u: ID!) { blockUser(userId: $u) }", u=eve.user_id)
        assert await presence_of(eve, alice) == (False, False)


async def test_a_stranger_who_starts_a_direct_conversation_with_you_sees_your_presence_only_once_you_answer(
    api: Api,
) -> None:
    """Review 2, item 9: startDirectConversation needs no consent either; answering in it is."""
    alice, eve = await api.people("alice", "eve")
    direct = await eve.direct_with(alice)
    assert await alice.direct_with(eve) == direct  # opening it is not answering
    async with alice.socket():
        await alice.data("mutation { heartbeat }")
        assert await presence_of(eve, alice) == (False, False)
        assert (await presence_of(alice, eve))[1] is True
        await alice.send(direct, "hello?")
        assert await presence_of(eve, alice) == (True, True)
