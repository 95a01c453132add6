"""The key directory over the real API, in both modes: uploads, who may fetch and claim, each key once, device lists.

Keys come from real Olm accounts (vodozemac), so their sizes and encodings are those clients send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
import vodozemac
from sqlalchemy import update
from sqlmodel import col

from infra.app import Overrides, connected_services
from infra.settings import Settings
from models import Device
from models.columns import utcnow
from resolvers import admin, maintenance
from resolvers.services import Services
from tests.support.helpers import PASSWORD, Api, Person
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env

CLAIMS_PER_HOUR = 5
CLAIMS_PER_DEVICE = 12
UPLOAD = "mutation U($i: DeviceKeysInput!) { uploadDeviceKeys(input: $i) { oneTimeKeys fallbackKey } }"
DEVICE_KEYS = (
    "query K($u: [ID!]!) { deviceKeys(userIds: $u) { deviceId identityKey signingKey signature user { id } } }"
)
CLAIM = "mutation C($d: [ID!]!) { claimOneTimeKeys(deviceIds: $d) { deviceId keyId key signature fallback } }"
ENCRYPTED_GROUP = (
    "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m, encrypted: true) { id } }"
)
BLOCK = "mutation B($u: ID!) { blockUser(userId: $u) }"
REVOKE = "mutation R($d: ID!) { revokeDevice(id: $d) }"
PENDING = (
    "query P { pendingEvents(first: 500) { __typename "
    "... on DeviceListEvent { cursor change deviceId user { id } } "
    "... on OneTimeKeysLowEvent { cursor remaining } "
    "... on MessageEvent { cursor } ... on ConversationEvent { cursor } } }"
)


@dataclass
class Olm:
    """A device's Olm account: the keys it publishes, signed as clients sign them."""

    device_id: str
    account: vodozemac.Account = field(default_factory=vodozemac.Account)

    def sign(self, text: str) -> str:
        return str(self.account.sign(text.encode()).to_base64())

    def upload(self, one_time_keys: int = 0, *, fallback: bool = True) -> dict[str, object]:
        """The uploadDeviceKeys input: identity keys, a new fallback key, and `one_time_keys` new one-time keys."""
        identity, signing = self.account.curve25519_key.to_base64(), self.account.ed25519_key.to_base64()
        self.account.generate_one_time_keys(one_time_keys)
        keys = [self.signed(key_id, key.to_base64()) for key_id, key in self.account.one_time_keys.items()]
        fallback_key = None
        if fallback:
            # Both are in vodozemac 0.10.0, not in its type stubs.
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            [(key_id, key)] = self.account.fallback_key.items()  # type: ignore[attr-defined]
            fallback_key = self.signed(f"fb{key_id}", key.to_base64())
        self.account.mark_keys_as_published()
        return {
            "identityKey": identity,
            "signingKey": signing,
            "signature": self.sign(f"{self.device_id}|{identity}|{signing}"),
            "fallbackKey": fallback_key,
            "oneTimeKeys": keys,
        }

    def signed(self, key_id: str, key: str) -> dict[str, str]:
        return {"keyId": key_id, "key": key, "signature": self.sign(key)}


async def upload(person: Person, olm: Olm, one_time_keys: int = 0) -> dict[str, object]:
    answer: dict[str, object] = (await person.data(UPLOAD, i=olm.upload(one_time_keys)))["uploadDeviceKeys"]
    return answer


async def claim(person: Person, *devices: str) -> list[dict[str, object]]:
    claimed: list[dict[str, object]] = (await person.data(CLAIM, d=list(devices)))["claimOneTimeKeys"]
    return claimed


async def pending_of(person: Person, typename: str) -> list[dict[str, object]]:
    return [e for e in (await person.data(PENDING))["pendingEvents"] if e["__typename"] == typename]


async def encrypted_group(owner: Person, *members: Person, title: str = "secret") -> str:
    return str((await owner.data(ENCRYPTED_GROUP, t=title, m=[m.user_id for m in members]))["createGroup"]["id"])


@dataclass
class Rig:
    """A server of this module's own and its settings, for what only the operator and the sweep do."""

    api: Api
    settings: Settings

    @asynccontextmanager
    async def services(self) -> AsyncIterator[Services]:
        """Services on the server's database, as the admin API and the periodic sweep use them."""
        async with connected_services(self.settings, Overrides(fast_password_hashing=True)) as services:
            yield services


@pytest.fixture(scope="module", params=["embedded", "production"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Small claim limits; in production mode on the run's database, with a Redis namespace of its own."""
    limits: dict[str, object] = {
        "key_claims_per_hour": CLAIMS_PER_HOUR,
        "key_claims_per_device_per_hour": CLAIMS_PER_DEVICE,
    }
    if request.param == "embedded":
        settings = embedded_settings(Path(tmp_path_factory.mktemp("keys")), **limits)
    else:
        redis: RedisTarget = request.getfixturevalue("redis_target")
        settings = production_settings(
            request.getfixturevalue("migrated_postgres"), replace(redis, prefix=f"{redis.prefix}keys:"), **limits
        )
    with ThreadServer(settings) as server:
        yield Rig(Api(url=server.url, ws_url=server.ws_url, mode=request.param), settings)


@pytest.fixture
def api(rig: Rig) -> Api:
    return rig.api


async def test_keys_reach_users_sharing_a_conversation_only_and_not_those_who_blocked(api: Api) -> None:
    """Bob (in a group with Alice) gets her device's keys, intact; a stranger, or Bob once blocked, gets nothing."""
    alice, bob, stranger = await api.people("alice", "bob", "stranger")
    olm = Olm(alice.device_id)
    assert await upload(alice, olm, 3) == {"oneTimeKeys": 3, "fallbackKey": True}
    await alice.create_group("plain", members=[bob])

    [keys] = (await bob.data(DEVICE_KEYS, u=[alice.user_id, stranger.user_id, "nonsense"]))["deviceKeys"]
    assert keys["deviceId"] == alice.device_id
    assert keys["user"]["id"] == alice.user_id
    assert keys["identityKey"] == olm.account.curve25519_key.to_base64()
    signing = vodozemac.Ed25519PublicKey.from_base64(keys["signingKey"])
    signing.verify_signature(
        f"{alice.device_id}|{keys['identityKey']}|{keys['signingKey']}".encode(),
        vodozemac.Ed25519Signature.from_base64(keys["signature"]),
    )
    # Her own devices see her keys too; the stranger sees none of them, nor can claim one.
    assert [k["deviceId"] for k in (await alice.data(DEVICE_KEYS, u=[alice.user_id]))["deviceKeys"]] == [
        alice.device_id
    ]
    assert (await stranger.data(DEVICE_KEYS, u=[alice.user_id]))["deviceKeys"] == []
    assert await claim(stranger, alice.device_id) == []

    await alice.data(BLOCK, u=bob.user_id)
    assert (await bob.data(DEVICE_KEYS, u=[alice.user_id]))["deviceKeys"] == []
    assert await claim(bob, alice.device_id) == []


async def test_identity_keys_are_fixed_once_uploaded_and_keys_are_checked_for_form(api: Api) -> None:
    """The same keys again are fine; other identity keys are CONFLICT; malformed or too many keys BAD_USER_INPUT."""
    [alice] = await api.people("alice")
    olm = Olm(alice.device_id)
    assert await upload(alice, olm, 2) == {"oneTimeKeys": 2, "fallbackKey": True}
    assert await upload(alice, olm, 1) == {"oneTimeKeys": 3, "fallbackKey": True}

    assert await alice.error(UPLOAD, i=Olm(alice.device_id).upload(1)) == "CONFLICT"
    good = olm.upload()
    for bad in (
        {**good, "identityKey": good["identityKey"] + "A"},  # type: ignore[operator]
        {**good, "signature": "not base64!" * 8},
        {**good, "oneTimeKeys": [{"keyId": "x" * 65, "key": good["identityKey"], "signature": good["signature"]}]},
        olm.upload(51),
    ):
        assert await alice.error(UPLOAD, i=bad) == "BAD_USER_INPUT"
    assert await upload(alice, olm, 0) == {"oneTimeKeys": 3, "fallbackKey": True}


async def test_concurrent_claimers_get_each_one_time_key_once_then_the_fallback_key(api: Api) -> None:
    """20 users claim a 10-key pool at once: each key goes out once, the rest get the fallback key; one low event."""
    target = await api.register("target")
    other_device = await target.other_device()
    claimers = await asyncio.gather(*(api.register(f"c{i}") for i in range(20)))
    await target.create_group("club", members=list(claimers))
    olm = Olm(target.device_id)
    sent = olm.upload(10)
    await target.data(UPLOAD, i=sent)

    answers = await asyncio.gather(*(claim(c, target.device_id) for c in claimers))

    assert all(len(a) == 1 for a in answers)
    claimed = [a[0] for a in answers]
    one_time = sorted(str(c["keyId"]) for c in claimed if not c["fallback"])
    assert one_time == sorted(k["keyId"] for k in sent["oneTimeKeys"])  # type: ignore[attr-defined]
    fallbacks = [c for c in claimed if c["fallback"]]
    assert len(fallbacks) == 10
    assert {(c["keyId"], c["key"]) for c in fallbacks} == {
        (sent["fallbackKey"]["keyId"], sent["fallbackKey"]["key"])  # type: ignore[index]
    }
    # The pool ran low many times over, and the device was told once; its other device not at all.
    [low] = await pending_of(target, "OneTimeKeysLowEvent")
    assert 0 <= int(low["remaining"]) < 10  # type: ignore[call-overload]
    assert await pending_of(other_device, "OneTimeKeysLowEvent") == []


async def test_a_device_low_on_keys_is_told_once_until_it_uploads_more(api: Api) -> None:
    """Claims below the threshold send one OneTimeKeysLowEvent; after an upload, running low again sends another."""
    target, claimer = await api.people("target", "claimer")
    await target.create_group("pair", members=[claimer])
    olm = Olm(target.device_id)
    await upload(target, olm, 10)

    await claim(claimer, target.device_id)
    await claim(claimer, target.device_id)
    [low] = await pending_of(target, "OneTimeKeysLowEvent")
    assert low["remaining"] == 9
    await target.acknowledge(str(low["cursor"]))

    assert await upload(target, olm, 1) == {"oneTimeKeys": 9, "fallbackKey": True}
    await claim(claimer, target.device_id)
    assert [e["remaining"] for e in await pending_of(target, "OneTimeKeysLowEvent")] == [8]


async def test_claims_are_rate_limited_per_claimer_and_per_device(api: Api) -> None:
    """A claimer past its hourly claims is RATE_LIMITED; a device claimed past its limit hands out its fallback key only."""
    target = await api.register("target")
    claimers = await api.people("a", "b", "c")
    await target.create_group("club", members=claimers)
    olm = Olm(target.device_id)
    await upload(target, olm, 20)

    kinds = [(await claim(claimers[n // CLAIMS_PER_HOUR], target.device_id))[0]["fallback"] for n in range(15)]
    assert kinds == [False] * CLAIMS_PER_DEVICE + [True] * (15 - CLAIMS_PER_DEVICE)
    assert await claimers[0].error(CLAIM, d=[target.device_id]) == "RATE_LIMITED"


async def test_device_list_changes_reach_members_of_encrypted_conversations_only(api: Api) -> None:
    """A login and a revocation each give Bob (two encrypted conversations with Alice) one event; Carol (plain) none."""
    alice, bob, carol = await api.people("alice", "bob", "carol")
    await encrypted_group(alice, bob, title="one")
    await encrypted_group(alice, bob, title="two")
    await alice.create_group("plain", members=[carol])
    for person in (alice, bob, carol):
        await person.drain()

    laptop = await alice.other_device("laptop")
    [added] = await pending_of(bob, "DeviceListEvent")
    assert (added["change"], added["deviceId"], added["user"]) == ("ADDED", laptop.device_id, {"id": alice.user_id})
    assert [e["deviceId"] for e in await pending_of(alice, "DeviceListEvent")] == [laptop.device_id]
    await bob.acknowledge(str(added["cursor"]))

    await alice.data(REVOKE, d=laptop.device_id)
    [removed] = await pending_of(bob, "DeviceListEvent")
    assert (removed["change"], removed["deviceId"]) == ("REMOVED", laptop.device_id)
    await bob.acknowledge(str(removed["cursor"]))

    phone = await alice.other_device("phone")
    await phone.data("mutation { logout }")
    assert [(e["change"], e["deviceId"]) for e in await pending_of(bob, "DeviceListEvent")] == [
        ("ADDED", phone.device_id),
        ("REMOVED", phone.device_id),
    ]
    assert await pending_of(carol, "DeviceListEvent") == []


async def test_claims_through_two_processes_hand_out_each_key_once(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """20 claimers split over two `parley serve` processes on one database: each one-time key goes out once."""
    env = suite_process_env(migrated_postgres, redis_target)
    async with (
        ProcessServer(env, log_path=tmp_path / "a.log") as first,
        ProcessServer(env, log_path=tmp_path / "b.log") as second,
    ):
        apis = [Api(url=s.url, ws_url=s.ws_url, mode="production") for s in (first, second)]
        target = await apis[0].register("target")
        claimers = await asyncio.gather(*(apis[i % 2].register(f"c{i}") for i in range(20)))
        await target.create_group("club", members=list(claimers))
        sent = Olm(target.device_id).upload(10)
        await target.data(UPLOAD, i=sent)

        answers = await asyncio.gather(*(claim(c, target.device_id) for c in claimers))

    one_time = sorted(str(a[0]["keyId"]) for a in answers if not a[0]["fallback"])
    assert one_time == sorted(k["keyId"] for k in sent["oneTimeKeys"])  # type: ignore[attr-defined]
    assert sum(bool(a[0]["fallback"]) for a in answers) == 10


async def test_a_password_change_and_an_account_deletion_announce_the_devices_they_end(api: Api) -> None:
    """changePassword's logouts and deleteAccount each give Bob a REMOVED event per device ended."""
    alice, bob = await api.people("alice", "bob")
    await encrypted_group(alice, bob)
    tablet, laptop = await alice.other_device("tablet"), await alice.other_device("laptop")
    await bob.drain()

    await alice.data(
        "mutation P($o: String!, $n: String!) { changePassword(oldPassword: $o, newPassword: $n) }",
        o=PASSWORD,
        n=PASSWORD + "!",
    )
    changes = await pending_of(bob, "DeviceListEvent")
    assert sorted((e["change"], e["deviceId"]) for e in changes) == sorted(
        [("REMOVED", tablet.device_id), ("REMOVED", laptop.device_id)]
    )
    await bob.acknowledge(str(changes[-1]["cursor"]))

    await alice.data("mutation D($p: String!) { deleteAccount(password: $p) }", p=PASSWORD + "!")
    assert [(e["change"], e["deviceId"]) for e in await pending_of(bob, "DeviceListEvent")] == [
        ("REMOVED", alice.device_id)
    ]


async def test_expiry_and_suspension_announce_devices_removed_and_lifting_it_announces_them_added(rig: Rig) -> None:
    """The sweep's expiry of an idle device, an operator's suspension and its lifting each reach Bob's pending events."""
    alice, bob = await rig.api.people("alice", "bob")
    await encrypted_group(alice, bob)
    idle = await alice.other_device("idle")
    await bob.drain()

    async with rig.services() as services:
        async with services.db.session() as session:
            await session.execute(
                update(Device)
                .where(col(Device.id) == int(idle.device_id))
                .values(last_active_at=utcnow() - timedelta(days=400))
            )
            await session.commit()
        assert (await maintenance.sweep(services, now=utcnow())).devices >= 1
        [expired] = await pending_of(bob, "DeviceListEvent")
        assert (expired["change"], expired["deviceId"]) == ("REMOVED", idle.device_id)
        await bob.acknowledge(str(expired["cursor"]))

        await admin.suspend_user(services, int(alice.user_id))
        suspended = await pending_of(bob, "DeviceListEvent")
        assert [(e["change"], e["deviceId"]) for e in suspended] == [("REMOVED", alice.device_id)]
        await bob.acknowledge(str(suspended[-1]["cursor"]))

        await admin.unsuspend_user(services, int(alice.user_id))
        assert [(e["change"], e["deviceId"]) for e in await pending_of(bob, "DeviceListEvent")] == [
            ("ADDED", alice.device_id)
        ]
