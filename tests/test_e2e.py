"""End-to-end encryption (issue 23) proved with real Olm and Megolm clients (vodozemac, tests/support/olm_client.py).

Devices publish keys, claim each other's one-time keys, open Olm sessions, pass Megolm
session keys through `sendToDevice` and exchange messages the server stores only as
ciphertext; a member added later reads from then on only, and a revoked device reads
nothing sent after it is gone.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from tests.support.database_dump import dump_all_tables
from tests.support.helpers import Api
from tests.support.olm_client import OlmDevice, olm_devices
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import suite_process_env


def secret(what: str) -> str:
    """A message text no other test (and no server code) contains."""
    return f"{what} {uuid.uuid4().hex}"


async def couple(api: Api) -> tuple[list[OlmDevice], list[OlmDevice]]:
    """Alice and Bob, each with two devices that have published their keys."""
    alice, bob = await api.people("alice", "bob")
    return await olm_devices(alice, 2), await olm_devices(bob, 2)


def from_others(device: OlmDevice, texts: list[tuple[str, str | None]]) -> list[str | None]:
    """The texts of the messages this device did not send itself."""
    return [text for message_id, text in texts if message_id not in device.sent_ids]


async def test_two_users_with_two_devices_each_read_every_group_message(api: Api) -> None:
    """Every device decrypts every message the others send: Olm from claimed one-time keys, Megolm over to-device."""
    (alice_phone, alice_laptop), (bob_phone, bob_laptop) = await couple(api)
    everyone = [alice_phone, alice_laptop, bob_phone, bob_laptop]
    group = await alice_phone.create_group(bob_phone)
    for device in everyone:
        await device.sync()

    texts = [secret("from alice's phone"), secret("from bob's laptop"), secret("from alice's laptop")]
    sent = [
        await alice_phone.send(group, texts[0]),
        await bob_laptop.send(group, texts[1]),
        await alice_laptop.send(group, texts[2]),
    ]
    for message, text in zip(sent, texts, strict=True):
        # The server stored and returned ciphertext only: not even its envelope holds the text.
        assert message["body"] is None
        assert text not in base64.b64decode(message["ciphertext"]).decode()

    for device in everyone:
        synced = await device.sync()
        received = [(m.message_id, m.text) for m in synced.messages]
        expected = [text for message, text in zip(sent, texts, strict=True) if message["id"] not in device.sent_ids]
        assert from_others(device, received) == expected, device.person.device_id
    # Each Olm session started from a one-time key handed out for it (the pools were far from empty).
    claims = [key for device in everyone for key in device.claimed]
    assert claims
    assert not any(key["fallback"] for key in claims)
    assert len({(key["deviceId"], key["keyId"]) for key in claims}) == len(claims)


async def test_a_member_added_later_reads_new_messages_but_not_older_ones(api: Api) -> None:
    """Carol, added after a message, gets the session from its current index: she reads what follows, not what came before."""
    alice, bob, carol = [await OlmDevice.create(person) for person in await api.people("alice", "bob", "carol")]
    group = await alice.create_group(bob)
    before = secret("before carol")
    await alice.send(group, before)
    earlier = (await bob.sync()).messages
    assert [m.text for m in earlier] == [before]

    await alice.add_members(group, carol)
    after = secret("after carol joined")
    await alice.send(group, after)

    carols = await carol.sync()
    assert carols.texts() == [after]
    # Even holding the older message's ciphertext, her key cannot open it: it starts at index 1.
    assert carol.decrypt(group, alice.user_id, earlier[0].ciphertext) is None
    assert [inbound.session.first_known_index for inbound in carol.inbound.values()] == [1]
    assert (await bob.sync()).texts() == [after]


async def test_a_revoked_device_gets_nothing_new(api: Api) -> None:
    """After Bob revokes his laptop, Alice rotates on the DeviceListEvent: the laptop gets no event and no key for what follows."""
    alice = await OlmDevice.create(await api.register("alice"))
    bob_phone, bob_laptop = await olm_devices(await api.register("bob"), 2)
    group = await alice.create_group(bob_phone)
    first = secret("before the revocation")
    await alice.send(group, first)
    await bob_laptop.send(group, secret("from the laptop"))
    assert (await bob_laptop.sync()).texts()[0] == first
    old_session = alice.outbound[group].session_id

    await bob_phone.revoke(bob_laptop)
    alices = await alice.sync()
    assert [(e["deviceChange"], e["deviceId"], e["user"]["id"]) for e in alices.device_changes] == [
        ("REMOVED", bob_laptop.device_id, bob_phone.user_id)
    ]
    later = secret("after the revocation")
    await alice.send(group, later)
    from_phone = await bob_phone.send(group, secret("from the phone"))
    assert alice.outbound[group].session_id != old_session
    assert bob_laptop.device_id not in alice.shared[group]

    phones = await bob_phone.sync()
    assert later in phones.texts()
    latest = next(m for m in phones.messages if m.text == later)
    # The laptop's token is gone: no event reaches it any more.
    assert await bob_laptop.person.error("query { pendingEvents { __typename } }") == "UNAUTHENTICATED"
    # And with every key it ever had, the ciphertext sent after the rotation stays closed to it.
    assert bob_laptop.decrypt(group, alice.user_id, latest.ciphertext) is None
    assert bob_laptop.decrypt(group, bob_phone.user_id, from_phone["ciphertext"]) is None


async def test_a_removed_member_cannot_read_what_is_sent_after(api: Api) -> None:
    """When Alice removes Carol, Bob rotates on the MEMBER_REMOVED event: Carol's keys open nothing sent after."""
    alice, bob, carol = [await OlmDevice.create(person) for person in await api.people("alice", "bob", "carol")]
    group = await alice.create_group(bob, carol)
    texts = [secret("before the removal"), secret("after, from bob")]
    await bob.send(group, texts[0])
    assert (await carol.sync()).texts() == texts[:1]
    bobs_first = bob.outbound[group].session_id

    await alice.remove_member(group, carol)
    changes = [e["change"] for e in (await bob.sync()).events if e["__typename"] == "ConversationEvent"]
    assert "MEMBER_REMOVED" in changes
    sent = [await bob.send(group, texts[1]), await alice.send(group, secret("after, from alice"))]
    assert bob.outbound[group].session_id != bobs_first
    assert carol.user_id not in {bob.peers[d].user_id for d in bob.shared[group]}

    assert await carol.person.error("query Q($id: ID!) { conversation(id: $id) { id } }", id=group) == "NOT_FOUND"
    for message in sent:
        assert carol.decrypt(group, message["sender"]["id"], message["ciphertext"]) is None
    assert (await alice.sync()).texts() == texts


async def test_a_device_restarted_from_its_stored_state_keeps_reading(api: Api) -> None:
    """Bob's app restarts from its pickled account and sessions: it reads Alice's next message and answers without new keys."""
    alice, bob = [await OlmDevice.create(person) for person in await api.people("alice", "bob")]
    group = await alice.create_group(bob)
    await alice.send(group, secret("before the restart"))
    await bob.sync()

    pickle_key = bytes(range(32))
    bob = OlmDevice.restored(bob.person, bob.pickled(pickle_key), pickle_key)
    later = secret("after the restart")
    await alice.send(group, later)
    synced = await bob.sync()
    assert synced.texts() == [later]
    assert synced.room_keys == []  # the group session it stored still opens Alice's messages
    reply = secret("the reply")
    await bob.send(group, reply)
    assert bob.claimed == []  # the Olm session it stored still reaches Alice's device
    assert (await alice.sync()).texts() == [reply]


async def test_a_database_dump_holds_no_plaintext_of_an_encrypted_conversation(
    production_server: ThreadServer, request: pytest.FixtureRequest
) -> None:
    """While the message and its key wait for delivery, PostgreSQL holds neither its text nor the group session's key."""
    api = Api(production_server.url, production_server.ws_url, "production")
    alice = await OlmDevice.create(await api.register("alice"))
    bob = await OlmDevice.create(await api.register("bob"))
    group = await alice.create_group(bob)
    # The key as it went to Bob (a later export starts at a later index, so compare this one).
    room_key = (await alice.share_group_session(group)).session_key.to_base64()
    marker = secret("plaintext marker")
    sent = await alice.send(group, marker)

    dump = await dump_all_tables(api, request)
    # The pending message is there, as ciphertext (the dump shows the start of long values only).
    assert sent["ciphertext"][:100] in dump
    assert marker not in dump
    assert room_key not in dump
    assert (await bob.sync()).texts() == [marker]


async def test_devices_on_two_server_processes_exchange_encrypted_messages(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """Alice's devices on one `parley serve`, Bob's on another: keys, to-device messages and ciphertext cross between them."""
    env = suite_process_env(migrated_postgres, redis_target)
    async with (
        ProcessServer(env, log_path=tmp_path / "one.log") as one,
        ProcessServer(env, log_path=tmp_path / "two.log") as two,
    ):
        alice_phone, alice_laptop = await olm_devices(await Api(one.url, one.ws_url, "production").register("alice"), 2)
        bob_phone, bob_laptop = await olm_devices(await Api(two.url, two.ws_url, "production").register("bob"), 2)
        group = await alice_phone.create_group(bob_phone)
        await bob_laptop.sync()
        async with bob_laptop.live() as stream:
            text = secret("across processes")
            await alice_phone.send(group, text)
            assert (await bob_laptop.next_message(stream)).text == text
        reply = secret("the reply")
        await bob_phone.send(group, reply)
        for device in (alice_phone, alice_laptop):
            assert (await device.sync()).texts()[-1] == reply
