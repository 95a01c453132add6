"""Exporting one's data: exportMyData returns what the server holds about the viewer, only the viewer's,
without any secret, and a few times an hour at most."""

from __future__ import annotations

import hashlib
import json
import uuid

from tests.support.client import Json
from tests.support.helpers import AUTH, PASSWORD, Api, Person, unique_name
from tests.support.push_fakes import REGISTER_PUSH, Subscription, b64url

EXPORT = "query { exportMyData }"
MUTE = "mutation M($c: ID!) { muteConversation(conversationId: $c, muted: true) { id } }"
BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
REGISTER = f"mutation R($u: String!, $p: String!, $n: String, $d: String) {{ register(username: $u, password: $p, displayName: $n, deviceName: $d) {{ {AUTH} }} }}"


async def register_named(api: Api, display_name: str, device_name: str) -> Person:
    """A new user with a display name and device name of the test's choosing."""
    username = unique_name("export")
    payload = (await api.anonymous.data(REGISTER, u=username, p=PASSWORD, n=display_name, d=device_name))["register"]
    return Person(api, username, payload["token"], payload["user"]["id"], payload["device"]["id"])


async def export(person: Person) -> tuple[Json, str]:
    """The person's export, parsed, and as the text the server sent."""
    text = str((await person.data(EXPORT))["exportMyData"])
    document: Json = json.loads(text)
    return document, text


async def test_export_holds_the_viewers_data_and_no_secrets(api: Api) -> None:
    """Profile, devices with their pending events, push registrations, conversations with the viewer's state,
    blocks and pending messages are the viewer's own; no token, hash or push secret is in the text."""
    marker = uuid.uuid4().hex
    alice = await register_named(api, f"Alice {marker}", "phone")
    laptop = await alice.other_device("laptop")
    bob = await register_named(api, "Bob", f"bob-device-{marker}")
    carol = await api.register("carol")
    direct = await alice.direct_with(bob)
    group = await alice.create_group("plans", members=[bob])
    await alice.data(MUTE, c=group)
    await alice.data(BLOCK, u=carol.user_id)
    await bob.data(BLOCK, u=carol.user_id)
    subscription = Subscription()
    endpoint = f"http://127.0.0.1:9/push/endpoint-{marker}"
    push = {
        "platform": "WEBPUSH",
        "endpoint": endpoint,
        "p256dh": subscription.p256dh,
        "auth": b64url(subscription.auth),
    }
    await laptop.data(REGISTER_PUSH, input=push)
    await alice.send(direct, "waiting for bob")
    await alice.drain()
    await bob.send(direct, "one for alice")

    document, text = await export(alice)

    assert document["profile"] == {
        "id": alice.user_id,
        "username": alice.username,
        "displayName": f"Alice {marker}",
        "createdAt": document["profile"]["createdAt"],
        "privacy": {"hideLastSeen": False, "readReceipts": True},
        "notifications": {"pushMentionsWhenMuted": True},
    }
    devices = {d["id"]: d for d in document["devices"]}
    assert {(d["name"], d["current"]) for d in devices.values()} == {("phone", True), ("laptop", False)}
    assert devices[alice.device_id]["pendingEvents"] == 1, "bob's message, after the phone acknowledged the rest"
    assert devices[laptop.device_id]["pendingEvents"] > 1, "the laptop acknowledged nothing"
    assert all(d["createdAt"] and d["lastActiveAt"] for d in devices.values())
    assert [(r["deviceId"], r["platform"]) for r in document["pushRegistrations"]] == [(laptop.device_id, "WEBPUSH")]
    conversations = {c["id"]: c for c in document["conversations"]}
    assert {(cid, c["kind"], c["role"], c["muted"]) for cid, c in conversations.items()} == {
        (direct, "DIRECT", "MEMBER", False),
        (group, "GROUP", "OWNER", True),
    }
    assert conversations[group]["title"] == "plans"
    assert all(c["joinedAt"] and "unreadCount" in c and "archived" in c for c in conversations.values())
    assert [(b["userId"], b["username"]) for b in document["blocks"]] == [(carol.user_id, carol.username)]
    assert document["pending"] == {"messagesSent": 1}
    # Nobody else's data, and no secret.
    secrets = [
        bob.username,
        f"bob-device-{marker}",
        alice.token,
        laptop.token,
        hashlib.sha256(alice.token.encode()).hexdigest(),
        hashlib.sha256(laptop.token.encode()).hexdigest(),
        endpoint,
        subscription.p256dh,
        b64url(subscription.auth),
    ]
    assert [secret for secret in secrets if secret in text] == []
    bobs, _ = await export(bob)
    assert bobs["profile"]["id"] == bob.user_id
    assert [d["name"] for d in bobs["devices"]] == [f"bob-device-{marker}"]
    assert bobs["pushRegistrations"] == []
    assert bobs["pending"] == {"messagesSent": 1}


async def test_exports_are_limited_per_hour(api: Api) -> None:
    """A few exports an hour, then RATE_LIMITED (each reads every row about the user); other users are unaffected."""
    alice, bob = await api.people("alice", "bob")
    for _ in range(3):
        await export(alice)
    assert await alice.error(EXPORT) == "RATE_LIMITED"
    assert (await export(bob))[0]["profile"]["id"] == bob.user_id
