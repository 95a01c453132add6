"""Deleting an account: the account and its devices are gone for good, others see a deleted account where
they shared a conversation with it, groups pass to the next owner, and the database keeps nothing of it
but the scrubbed row that keeps its id meaningful."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from infra.migrate import migrate
from tests.support.client import GraphQLFailed, Json
from tests.support.database_dump import dump_all_tables
from tests.support.helpers import AUTH, EVENTS, PASSWORD, Api, Person, unique_name
from tests.support.push_fakes import REGISTER_PUSH, Subscription, b64url
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import production_settings

DELETE = "mutation D($p: String!) { deleteAccount(password: $p) }"
LOGIN = "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }"
ME = "query { me { id username deleted } }"
SEEN_USER = "id username displayName deleted online lastSeen"
CONVERSATION = f"query C($id: ID!) {{ conversation(id: $id) {{ id kind members {{ role user {{ {SEEN_USER} }} }} }} }}"
ADD = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }"
ROLE = (
    "mutation R($c: ID!, $u: ID!, $r: MemberRole!) { setMemberRole(conversationId: $c, userId: $u, role: $r) { id } }"
)
START = "mutation S($u: ID!) { startDirectConversation(userId: $u) { id } }"
GROUP = "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m) { id } }"
BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
REACT = "mutation R($m: ID!, $e: String!) { react(messageId: $m, emoji: $e) }"
REGISTER = f"mutation R($u: String!, $p: String!, $n: String) {{ register(username: $u, password: $p, displayName: $n) {{ {AUTH} }} }}"


async def register_named(api: Api, display_name: str) -> Person:
    """A new user with a display name of the test's choosing."""
    username = unique_name("gone")
    payload = (await api.anonymous.data(REGISTER, u=username, p=PASSWORD, n=display_name))["register"]
    return Person(api, username, payload["token"], payload["user"]["id"], payload["device"]["id"])


def members(conversation: Json) -> dict[str, Json]:
    """A conversation's members by user id: role and user."""
    return {m["user"]["id"]: m for m in conversation["members"]}


async def test_a_deleted_account_can_no_longer_log_in_and_its_sockets_close(api: Api) -> None:
    """After deleteAccount, the password logs in nowhere, every old token fails and open sockets close (4403)."""
    alice = await api.register("alice")
    laptop = await alice.other_device("laptop")
    async with laptop.socket() as socket:
        await socket.subscribe(EVENTS)
        assert (await alice.data(DELETE, p=PASSWORD))["deleteAccount"] is True
        code, _ = await asyncio.wait_for(asyncio.shield(socket.closed), 10)
        assert code == 4403
    assert await alice.error(ME) == "UNAUTHENTICATED"
    assert await laptop.error(ME) == "UNAUTHENTICATED"
    assert (await api.anonymous.error(LOGIN, u=alice.username, p=PASSWORD)).code == "UNAUTHENTICATED"
    # Its username is free again, but its placeholder name is one nobody can register or log in with.
    placeholder = f"deleted-{alice.user_id}"
    assert (await api.anonymous.error(LOGIN, u=placeholder, p=PASSWORD)).code == "UNAUTHENTICATED"
    assert (await api.anonymous.error(REGISTER, u=placeholder, p=PASSWORD, n=None)).code == "BAD_USER_INPUT"
    again = (await api.anonymous.data(REGISTER, u=alice.username, p=PASSWORD, n=None))["register"]
    assert int(again["user"]["id"]) > int(alice.user_id), "a deleted account's id is never handed out again"


@pytest.fixture
def shared_production(empty_postgres_url: str, redis_target: RedisTarget) -> str:
    """A migrated PostgreSQL database of this test's own, for servers that share it."""
    asyncio.run(migrate(empty_postgres_url))
    return empty_postgres_url


async def test_a_deletion_closes_the_accounts_sockets_on_every_process(
    shared_production: str, redis_target: RedisTarget
) -> None:
    """Deleted through one process, the account's sockets on another process close with 4403."""
    settings = production_settings(shared_production, redis_target)
    with ThreadServer(settings) as first, ThreadServer(settings) as second:
        on_first = Api(url=first.url, ws_url=first.ws_url, mode="production")
        on_second = Api(url=second.url, ws_url=second.ws_url, mode="production")
        alice = await on_first.register("alice")
        tablet = await on_second.login(alice.username, device_name="tablet")
        async with tablet.socket() as socket:
            await socket.subscribe(EVENTS)
            assert (await alice.data(DELETE, p=PASSWORD))["deleteAccount"] is True
            code, _ = await asyncio.wait_for(asyncio.shield(socket.closed), 10)
            assert code == 4403
        assert await tablet.error(ME) == "UNAUTHENTICATED"


async def test_a_wrong_password_deletes_nothing_and_is_limited_like_a_login(api: Api) -> None:
    """deleteAccount with a wrong password is UNAUTHENTICATED and changes nothing; repeated guesses are limited."""
    alice, bob = await api.people("alice", "bob")
    direct = await bob.direct_with(alice)
    assert await alice.error(DELETE, p="not the password") == "UNAUTHENTICATED"
    assert (await alice.data(ME))["me"] == {"id": alice.user_id, "username": alice.username, "deleted": False}
    seen = members((await bob.data(CONVERSATION, id=direct))["conversation"])[alice.user_id]["user"]
    assert (seen["username"], seen["deleted"]) == (alice.username, False)
    for _ in range(9):  # the login failure limit of the suite's servers is 10
        assert await alice.error(DELETE, p="still not it") == "UNAUTHENTICATED"
    assert await alice.error(DELETE, p=PASSWORD) == "RATE_LIMITED", "guessing a stolen device's password is limited"
    assert (await alice.data(ME))["me"]["deleted"] is False


async def test_others_see_a_deleted_account_and_groups_pass_to_the_next_owner(api: Api) -> None:
    """The other side of a direct chat sees "Deleted account"; a group passes to the longest-standing admin,
    else member, with LEFT and ROLE_CHANGED events; a group left empty is gone; nobody can add the account again."""
    alice, bob, carol, erin = await api.people("alice", "bob", "carol", "erin")
    direct = await bob.direct_with(alice)
    # bob joined first; carol and then erin were added later and made admins: carol inherits.
    with_admins = await alice.create_group("with admins", members=[bob])
    await alice.data(ADD, c=with_admins, u=[carol.user_id])
    await alice.data(ADD, c=with_admins, u=[erin.user_id])
    await alice.data(ROLE, c=with_admins, u=erin.user_id, r="ADMIN")
    await alice.data(ROLE, c=with_admins, u=carol.user_id, r="ADMIN")
    # No admin: bob, the longest-standing member, inherits.
    members_only = await alice.create_group("members only", members=[bob])
    await alice.data(ADD, c=members_only, u=[carol.user_id])
    await alice.create_group("alone", members=[])
    for person in (bob, carol, erin):
        await person.drain()

    assert (await alice.data(DELETE, p=PASSWORD))["deleteAccount"] is True

    seen = members((await bob.data(CONVERSATION, id=direct))["conversation"])[alice.user_id]["user"]
    assert seen == {
        "id": alice.user_id,
        "username": f"deleted-{alice.user_id}",
        "displayName": "Deleted account",
        "deleted": True,
        "online": False,
        "lastSeen": None,
    }
    group = members((await carol.data(CONVERSATION, id=with_admins))["conversation"])
    assert alice.user_id not in group
    assert {uid: m["role"] for uid, m in group.items()} == {
        bob.user_id: "MEMBER",
        carol.user_id: "OWNER",
        erin.user_id: "ADMIN",
    }
    group = members((await bob.data(CONVERSATION, id=members_only))["conversation"])
    assert {uid: m["role"] for uid, m in group.items()} == {bob.user_id: "OWNER", carol.user_id: "MEMBER"}

    changes = [
        (e["conversation"]["id"], e["change"], [u["id"] for u in e["users"]], e["actor"]["id"])
        for e in await carol.drain()
        if e["__typename"] == "ConversationEvent"
    ]
    assert changes == [
        (with_admins, "LEFT", [alice.user_id], alice.user_id),
        (with_admins, "ROLE_CHANGED", [carol.user_id], alice.user_id),
        (members_only, "LEFT", [alice.user_id], alice.user_id),
        (members_only, "ROLE_CHANGED", [bob.user_id], alice.user_id),
    ]
    user = (await bob.data(f"query U($id: ID!) {{ user(id: $id) {{ {SEEN_USER} }} }}", id=alice.user_id))["user"]
    assert (user["displayName"], user["deleted"]) == ("Deleted account", True)
    # The account cannot be put in a conversation again, nor found.
    assert await bob.error(ADD, c=members_only, u=[alice.user_id]) == "NOT_FOUND"
    assert await carol.error(START, u=alice.user_id) == "NOT_FOUND"
    assert await carol.error(GROUP, t="again", m=[alice.user_id]) == "NOT_FOUND"
    found = await bob.data("query S($p: String!) { searchUsers(prefix: $p) { id } }", p="deleted")
    assert alice.user_id not in [u["id"] for u in found["searchUsers"]]
    # The direct conversation stays usable on bob's side: his message is stored, it just reaches nobody.
    await bob.send(direct, "anyone there?")


async def test_the_database_keeps_nothing_of_a_deleted_account_but_its_scrubbed_row(
    api: Api, request: pytest.FixtureRequest
) -> None:
    """After deletion a dump of every table holds neither the username, the display name, a pending message,
    an uploaded file's name, a push endpoint nor the group it alone was in; the file is no longer served."""
    marker = uuid.uuid4().hex
    alice = await register_named(api, f"Alice {marker}")
    bob, carol = await api.people("bob", "carol")
    direct = await bob.direct_with(alice)
    group = await bob.create_group("bob's group", members=[alice, carol])
    await alice.create_group(f"alone-{marker}", members=[])  # left empty: deleted with the account
    endpoint = f"http://127.0.0.1:9/push/endpoint-{marker}"
    subscription = Subscription()
    push = {
        "platform": "WEBPUSH",
        "endpoint": endpoint,
        "p256dh": subscription.p256dh,
        "auth": b64url(subscription.auth),
    }
    await alice.data(REGISTER_PUSH, input=push)
    upload = await alice.upload(f"file-{marker}.pdf", "application/pdf", b"%PDF-1.4\n" + bytes(100))
    sent = await alice.send_files(direct, [upload], body=f"pending-{marker}")
    await alice.send(group, f"group-pending-{marker}")
    await alice.data(BLOCK, u=carol.user_id)
    await carol.data(BLOCK, u=alice.user_id)
    # Receipts and a reaction of alice's wait in bob's inbox, naming her (bob reads nothing meanwhile).
    message = await bob.send(direct, "hello alice")
    await alice.drain()
    await alice.mark_read(direct, message["id"])
    await alice.data(REACT, m=message["id"], e="👍")
    # A to-device message from her device waits for bob's (it names her, and her device is going).
    to_device = [{"deviceId": bob.device_id, "type": "m.test", "payload": f"to-device-{marker}"}]
    await alice.data("mutation T($m: [ToDeviceInput!]!) { sendToDevice(messages: $m) }", m=to_device)
    everything = [
        alice.username,
        f"Alice {marker}",
        f"pending-{marker}",
        f"group-pending-{marker}",
        f"file-{marker}.pdf",
        f"endpoint-{marker}",
        f"alone-{marker}",
        f"to-device-{marker}",
    ]
    dump = await dump_all_tables(api, request)
    assert [text for text in everything if text not in dump] == []

    assert await alice.error(DELETE, p="wrong password") == "UNAUTHENTICATED"
    dump = await dump_all_tables(api, request)
    assert [text for text in everything if text not in dump] == [], "a refusal deletes nothing"
    assert (await alice.data(DELETE, p=PASSWORD))["deleteAccount"] is True

    dump = await dump_all_tables(api, request)
    assert [text for text in everything if text in dump] == []
    assert marker not in dump
    # What is kept: the scrubbed row (its id names the account in others' conversations and events).
    assert f"deleted-{alice.user_id}" in dump
    assert "Deleted account" in dump
    async with httpx.AsyncClient() as client:
        assert (await client.get(sent["attachments"][0]["url"])).status_code in (403, 404), "the file is deleted"
    # bob still gets the receipts and the reaction, from a deleted account; alice's message is gone.
    events = await bob.drain()
    assert not [
        e for e in events if e["__typename"] == "MessageEvent" and e["message"]["sender"]["id"] == alice.user_id
    ]
    receipts = [e["receipt"] for e in events if e["__typename"] == "ReceiptEvent"]
    assert {r["status"] for r in receipts} == {"DELIVERED", "READ"}
    assert {r["user"]["id"] for r in receipts} == {alice.user_id}


async def test_messages_sent_while_the_account_is_deleted_do_not_survive_it(
    api: Api, request: pytest.FixtureRequest
) -> None:
    """Sends from another device racing the deletion either fail or are deleted with the account: none stays."""
    marker = uuid.uuid4().hex
    alice, bob = await api.people("alice", "bob")
    laptop = await alice.other_device("laptop")
    direct = await bob.direct_with(alice)
    group = await bob.create_group("racing", members=[alice])

    async def keep_sending(n: int) -> list[str]:
        """Sends until the deletion refuses it, so that sends straddle the deletion's commit."""
        outcomes: list[str] = []
        for i in range(100):
            try:
                await laptop.send(direct if n % 2 else group, f"race-{marker}-{n}-{i}")
            except GraphQLFailed as refused:
                return [*outcomes, refused.code]
            outcomes.append("sent")
        return outcomes

    async def delete_soon() -> bool:
        await laptop.send(direct, f"race-{marker}-first")
        return bool((await alice.data(DELETE, p=PASSWORD))["deleteAccount"])

    deletion = asyncio.ensure_future(delete_soon())
    senders = await asyncio.gather(*(keep_sending(n) for n in range(4)))
    assert await deletion is True
    assert all(outcomes[-1] in {"UNAUTHENTICATED", "NOT_FOUND"} for outcomes in senders), senders
    assert marker not in await dump_all_tables(api, request)
    assert not [e for e in await bob.drain() if e["__typename"] == "MessageEvent"]
