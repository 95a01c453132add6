"""A test client that speaks real Olm and Megolm (vodozemac) through Parley: keys, to-device messages, ciphertext.

One `OlmDevice` is one logged-in device (a `Person`) with its own Olm account. It follows the
flow and the conventions of the client kit's guide (frontend_schema/README.md, "End-to-end
encryption"): the server only ever sees public keys, Olm messages and Megolm ciphertext.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from vodozemac import (
    Account,
    AnyOlmMessage,
    Curve25519PublicKey,
    Ed25519PublicKey,
    Ed25519Signature,
    GroupSession,
    InboundGroupSession,
    MegolmDecryptionException,
    MegolmMessage,
    OlmDecryptionException,
    Session,
    SessionKey,
)

from tests.support.client import Json, Subscription
from tests.support.helpers import Person

# The to-device type of an Olm-encrypted payload (a convention between clients).
OLM_TYPE = "olm.v1"
# sendToDevice takes at most this many messages per call.
TO_DEVICE_BATCH = 100

UPLOAD_KEYS = "mutation K($input: DeviceKeysInput!) { uploadDeviceKeys(input: $input) { oneTimeKeys fallbackKey } }"
DEVICE_KEYS = (
    "query D($ids: [ID!]!) { deviceKeys(userIds: $ids) { deviceId user { id } identityKey signingKey signature } }"
)
CLAIM = "mutation C($ids: [ID!]!) { claimOneTimeKeys(deviceIds: $ids) { deviceId keyId key signature fallback } }"
TO_DEVICE = "mutation T($m: [ToDeviceInput!]!) { sendToDevice(messages: $m) }"
SEND = (
    "mutation S($input: SendMessageInput!) "
    "{ sendMessage(input: $input) { id clientId conversationId body ciphertext sender { id } } }"
)
MEMBERS = "query M($id: ID!) { conversation(id: $id) { id encrypted members { user { id } } } }"
CREATE_GROUP = (
    "mutation G($t: String!, $m: [ID!]!) { createGroup(title: $t, memberIds: $m, encrypted: true) { id encrypted } }"
)
ADD_MEMBERS = "mutation A($c: ID!, $u: [ID!]!) { addMembers(conversationId: $c, userIds: $u) { id } }"
REVOKE = "mutation R($id: ID!) { revokeDevice(id: $id) }"
REMOVE_MEMBER = "mutation R($c: ID!, $u: ID!) { removeMember(conversationId: $c, userId: $u) { id } }"

E2E_EVENT_FIELDS = """
  __typename
  ... on MessageEvent { cursor message { id clientId conversationId body ciphertext sender { id } } }
  ... on ToDeviceEvent { cursor sender { id } senderDeviceId type payload }
  ... on DeviceListEvent { cursor deviceChange: change deviceId user { id } }
  ... on OneTimeKeysLowEvent { cursor remaining }
  ... on ConversationEvent { cursor change conversation { id } users { id } }
  ... on ReceiptEvent { cursor }
  ... on MessageEditedEvent { cursor }
  ... on MessageDeletedEvent { cursor }
  ... on ReactionEvent { cursor }
  ... on ReadStateEvent { cursor }
  ... on ReportEvent { cursor }
"""
PENDING = (
    f"query P($after: String, $first: Int) {{ pendingEvents(after: $after, first: $first) {{ {E2E_EVENT_FIELDS} }} }}"
)
EVENTS = f"subscription E($after: String) {{ events(after: $after) {{ {E2E_EVENT_FIELDS} }} }}"
PAGE = 100

# Membership changes after which a sender's group session must not reach the member any more.
MEMBER_GONE = frozenset({"MEMBER_REMOVED", "LEFT"})


def b64json(value: Json) -> str:
    """Standard (padded) base64 of compact JSON: what goes into `ciphertext` and to-device payloads."""
    return base64.b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode()).decode()


def unb64json(text: str) -> Json:
    value: Json = json.loads(base64.b64decode(text, validate=True))
    return value


def device_signed_text(user_id: str, device_id: str, identity_key: str, signing_key: str) -> bytes:
    """What a device signs to vouch for its own keys (binds them to its user and device)."""
    return json.dumps(
        {"deviceId": device_id, "identityKey": identity_key, "signingKey": signing_key, "userId": user_id},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def key_signed_text(key_id: str, key: str) -> bytes:
    """What a device signs to vouch for one of its one-time or fallback keys."""
    return json.dumps({"key": key, "keyId": key_id}, separators=(",", ":"), sort_keys=True).encode()


def verify(signing_key: str, text: bytes, signature: str) -> None:
    """Raises (vodozemac's SignatureException) unless `signature` is `signing_key`'s over `text`."""
    Ed25519PublicKey.from_base64(signing_key).verify_signature(text, Ed25519Signature.from_base64(signature))


@dataclass(frozen=True)
class PeerDevice:
    """Another device's public keys, as the key directory listed them (and their signature checked)."""

    device_id: str
    user_id: str
    identity_key: str
    signing_key: str


@dataclass(frozen=True)
class Received:
    """A message of an encrypted conversation as this device got it: `text` None if it could not decrypt it."""

    message_id: str
    conversation_id: str
    sender_id: str
    ciphertext: str
    text: str | None


@dataclass
class Synced:
    """What one pass over the pending events brought."""

    messages: list[Received] = field(default_factory=list)
    room_keys: list[str] = field(default_factory=list)
    device_changes: list[Json] = field(default_factory=list)
    # To-device messages from devices gone since they sent them (left unread).
    dropped: list[Json] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)

    def texts(self) -> list[str | None]:
        return [m.text for m in self.messages]


@dataclass
class _InboundKey:
    conversation_id: str
    sender_id: str
    session: InboundGroupSession


class OlmDevice:
    """One device of a user with its Olm account, Olm sessions and Megolm sessions, on top of a `Person`."""

    def __init__(self, person: Person) -> None:
        self.person = person
        self.account = Account()
        self.peers: dict[str, PeerDevice] = {}
        self.olm_sessions: dict[str, list[Session]] = {}
        self.inbound: dict[str, _InboundKey] = {}
        self.outbound: dict[str, GroupSession] = {}
        # For each conversation: the devices its current outbound group session was given to.
        self.shared: dict[str, set[str]] = {}
        self.claimed: list[Json] = []
        self.sent_ids: set[str] = set()

    @property
    def user_id(self) -> str:
        return self.person.user_id

    @property
    def device_id(self) -> str:
        return self.person.device_id

    @property
    def identity_key(self) -> str:
        return self.account.curve25519_key.to_base64()

    @property
    def signing_key(self) -> str:
        return self.account.ed25519_key.to_base64()

    @classmethod
    async def create(cls, person: Person, *, one_time_keys: int = 10) -> OlmDevice:
        """A device that has published its identity keys, a fallback key and `one_time_keys` one-time keys."""
        device = cls(person)
        await device.upload_keys(one_time_keys, fallback=True)
        return device

    def _signed(self, key_id: str, key: Curve25519PublicKey) -> Json:
        text = key.to_base64()
        return {"keyId": key_id, "key": text, "signature": self.account.sign(key_signed_text(key_id, text)).to_base64()}

    async def upload_keys(self, count: int, *, fallback: bool = False) -> Json:
        """Publishes `count` new signed one-time keys (and a new fallback key); the server's counts."""
        self.account.generate_one_time_keys(count)
        signed_text = device_signed_text(self.user_id, self.device_id, self.identity_key, self.signing_key)
        keys: Json = {
            "identityKey": self.identity_key,
            "signingKey": self.signing_key,
            "signature": self.account.sign(signed_text).to_base64(),
            "oneTimeKeys": [self._signed(key_id, key) for key_id, key in self.account.one_time_keys.items()],
        }
        if fallback:
            # The bindings' type stubs leave out the fallback key methods the library has.
            self.account.generate_fallback_key()  # type: ignore[attr-defined]
            unpublished: dict[str, Curve25519PublicKey] = self.account.fallback_key  # type: ignore[attr-defined]
            (key_id, key), *_ = unpublished.items()
            keys["fallbackKey"] = self._signed(key_id, key)
        counts: Json = (await self.person.data(UPLOAD_KEYS, input=keys))["uploadDeviceKeys"]
        self.account.mark_keys_as_published()
        return counts

    async def devices_of(self, user_ids: Iterable[str]) -> list[PeerDevice]:
        """The devices of these users (this one left out), each checked against its own signature."""
        listed = (await self.person.data(DEVICE_KEYS, ids=sorted(set(user_ids))))["deviceKeys"]
        devices = []
        for entry in listed:
            device = PeerDevice(entry["deviceId"], entry["user"]["id"], entry["identityKey"], entry["signingKey"])
            if device.device_id == self.device_id:
                continue
            text = device_signed_text(device.user_id, device.device_id, device.identity_key, device.signing_key)
            verify(device.signing_key, text, entry["signature"])
            known = self.peers.get(device.device_id)
            # A device's keys never change: different keys under a known id are not that device.
            assert known is None or known == device, f"the keys of device {device.device_id} changed"
            self.peers[device.device_id] = device
            devices.append(device)
        return devices

    async def open_sessions(self, devices: list[PeerDevice]) -> None:
        """Opens an Olm session to each of `devices` that has none yet, from one claimed key each."""
        missing = {d.device_id: d for d in devices if not self.olm_sessions.get(d.device_id)}
        if not missing:
            return
        claimed = (await self.person.data(CLAIM, ids=sorted(missing)))["claimOneTimeKeys"]
        for key in claimed:
            device = missing[key["deviceId"]]
            verify(device.signing_key, key_signed_text(key["keyId"], key["key"]), key["signature"])
            session = self.account.create_outbound_session(
                Curve25519PublicKey.from_base64(device.identity_key), Curve25519PublicKey.from_base64(key["key"])
            )
            self.olm_sessions.setdefault(device.device_id, []).append(session)
            self.claimed.append(key)

    def _olm_payload(self, device: PeerDevice, plaintext: Json) -> Json:
        session = self.olm_sessions[device.device_id][-1]
        kind, body = session.encrypt(json.dumps(plaintext).encode()).to_parts()
        envelope = {"type": kind, "body": base64.b64encode(body).decode(), "senderKey": self.identity_key}
        return {"deviceId": device.device_id, "type": OLM_TYPE, "payload": b64json(envelope)}

    def _new_group_session(self, conversation_id: str) -> GroupSession:
        group = GroupSession()
        self.outbound[conversation_id] = group
        self.shared[conversation_id] = set()
        # Our own copy, to read our own messages when they come back to this device.
        own = InboundGroupSession(SessionKey(group.session_key.to_base64()))
        self.inbound[group.session_id] = _InboundKey(conversation_id, self.user_id, own)
        return group

    async def share_group_session(self, conversation_id: str) -> GroupSession:
        """The conversation's group session, its key sent (over Olm) to every member device that lacks it."""
        group = self.outbound.get(conversation_id) or self._new_group_session(conversation_id)
        conversation = (await self.person.data(MEMBERS, id=conversation_id))["conversation"]
        assert conversation["encrypted"] is True
        devices = await self.devices_of(m["user"]["id"] for m in conversation["members"])
        targets = [d for d in devices if d.device_id not in self.shared[conversation_id]]
        await self.open_sessions(targets)
        # A device whose keys could not be claimed gets the key at a later send.
        targets = [d for d in targets if self.olm_sessions.get(d.device_id)]
        # The key at the session's current index: a device given it now reads from here on only.
        room_key = {"type": "room_key", "conversationId": conversation_id, "sessionId": group.session_id}
        room_key |= {"sessionKey": group.session_key.to_base64(), "sender": self.user_id}
        messages = [
            self._olm_payload(
                d,
                room_key
                | {"senderDevice": self.device_id, "recipientDevice": d.device_id, "recipientKey": d.identity_key},
            )
            for d in targets
        ]
        for start in range(0, len(messages), TO_DEVICE_BATCH):
            await self.person.data(TO_DEVICE, m=messages[start : start + TO_DEVICE_BATCH])
        self.shared[conversation_id].update(d.device_id for d in targets)
        return group

    async def send(self, conversation_id: str, text: str) -> Json:
        """Sends `text` to an encrypted conversation as Megolm ciphertext; the stored message."""
        group = await self.share_group_session(conversation_id)
        megolm = group.encrypt(json.dumps({"conversationId": conversation_id, "text": text}).encode())
        envelope = {
            "sessionId": group.session_id,
            "senderKey": self.identity_key,
            "deviceId": self.device_id,
            "body": megolm.to_base64(),
        }
        message: Json = (
            await self.person.data(
                SEND,
                input={
                    "conversationId": conversation_id,
                    "clientId": uuid.uuid4().hex,
                    "ciphertext": b64json(envelope),
                },
            )
        )["sendMessage"]
        self.sent_ids.add(message["id"])
        return message

    def rotate(self, conversation_id: str) -> None:
        """Drops the conversation's outbound group session: the next send makes and shares a new one."""
        self.outbound.pop(conversation_id, None)
        self.shared.pop(conversation_id, None)

    def decrypt(self, conversation_id: str, sender_id: str, ciphertext: str) -> str | None:
        """The text of a message's ciphertext, or None if this device holds no key that opens it."""
        envelope = unb64json(ciphertext)
        inbound = self.inbound.get(envelope["sessionId"])
        # A key for another conversation, or from another sender, must not open this message.
        if inbound is None or inbound.conversation_id != conversation_id or inbound.sender_id != sender_id:
            return None
        try:
            decrypted = inbound.session.decrypt(MegolmMessage.from_base64(envelope["body"]))
        except MegolmDecryptionException:
            return None
        plaintext = json.loads(decrypted.plaintext)
        assert plaintext["conversationId"] == conversation_id, "a message replayed from another conversation"
        text: str = plaintext["text"]
        return text

    async def _olm_decrypt(self, sender_device_id: str, sender_user_id: str, payload: str) -> Json | None:
        """The plaintext of an Olm message; None from a device the key directory no longer lists."""
        envelope = unb64json(payload)
        peer = self.peers.get(sender_device_id)
        if peer is None:
            await self.devices_of([sender_user_id])
            peer = self.peers.get(sender_device_id)
        if peer is None:
            # Gone (revoked) since it sent this: nothing vouches for its key any more.
            return None
        assert envelope["senderKey"] == peer.identity_key, "an Olm message under another device's identity key"
        message = AnyOlmMessage.from_parts(envelope["type"], base64.b64decode(envelope["body"]))
        sessions = self.olm_sessions.setdefault(sender_device_id, [])
        pre_key = message.to_pre_key()
        for session in sessions:
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                plaintext: Json = json.loads(session.decrypt(message))
            except OlmDecryptionException:
                continue
            return plaintext
        assert pre_key is not None, f"an Olm message from {sender_device_id} that no session opens"
        session, raw = self.account.create_inbound_session(Curve25519PublicKey.from_base64(peer.identity_key), pre_key)
        sessions.append(session)
        opened: Json = json.loads(raw)
        return opened

    async def _on_to_device(self, event: Json, synced: Synced) -> None:
        assert event["type"] == OLM_TYPE, event
        sender_id = event["sender"]["id"]
        content = await self._olm_decrypt(event["senderDeviceId"], sender_id, event["payload"])
        if content is None:
            synced.dropped.append(event)
            return
        assert content["recipientDevice"] == self.device_id
        assert content["recipientKey"] == self.identity_key
        assert content["sender"] == sender_id
        assert content["senderDevice"] == event["senderDeviceId"]
        if content["type"] == "room_key":
            session = InboundGroupSession(SessionKey(content["sessionKey"]))
            assert session.session_id == content["sessionId"]
            self.inbound[session.session_id] = _InboundKey(content["conversationId"], sender_id, session)
            synced.room_keys.append(session.session_id)

    def _on_device_list(self, event: Json, synced: Synced) -> None:
        synced.device_changes.append(event)
        if event["deviceChange"] != "REMOVED":
            return
        self.forget(event["deviceId"])

    def forget(self, device_id: str) -> None:
        """Drops a device that is gone, and every group session it was given (they rotate at the next send)."""
        self.peers.pop(device_id, None)
        self.olm_sessions.pop(device_id, None)
        for conversation_id, devices in list(self.shared.items()):
            if device_id in devices:
                self.rotate(conversation_id)

    def _on_conversation(self, event: Json) -> None:
        if event["change"] in MEMBER_GONE:
            self.rotate(event["conversation"]["id"])

    async def handle(self, event: Json, synced: Synced) -> None:
        """Applies one event: keys from to-device messages, message decryption, rotation on departures."""
        synced.events.append(event)
        kind = event["__typename"]
        if kind == "ToDeviceEvent":
            await self._on_to_device(event, synced)
        elif kind == "MessageEvent" and (ciphertext := event["message"]["ciphertext"]) is not None:
            message = event["message"]
            text = self.decrypt(message["conversationId"], message["sender"]["id"], ciphertext)
            synced.messages.append(
                Received(message["id"], message["conversationId"], message["sender"]["id"], ciphertext, text)
            )
        elif kind == "DeviceListEvent":
            self._on_device_list(event, synced)
        elif kind == "OneTimeKeysLowEvent":
            await self.upload_keys(10)
        elif kind == "ConversationEvent":
            self._on_conversation(event)

    async def sync(self) -> Synced:
        """Reads every pending event in order, applies each, and acknowledges them (a pull after a push wake-up)."""
        synced = Synced()
        after: str | None = None
        while True:
            page: list[Json] = (await self.person.data(PENDING, after=after, first=PAGE))["pendingEvents"]
            for event in page:
                await self.handle(event, synced)
            if page:
                after = page[-1]["cursor"]
            if len(page) < PAGE:
                break
        if after is not None:
            await self.person.acknowledge(after)
        return synced

    async def next_message(self, sub: Subscription, timeout: float = 10) -> Received:
        """Applies live events from `sub` up to the next message of an encrypted conversation, acknowledged; that message."""
        synced = Synced()
        while not synced.messages:
            event: Json = (await sub.next(timeout))["events"]
            await self.handle(event, synced)
        await self.person.acknowledge(synced.events[-1]["cursor"])
        return synced.messages[0]

    @asynccontextmanager
    async def live(self) -> AsyncIterator[Subscription]:
        """This device's live event stream, with the fields end-to-end encryption needs."""
        async with self.person.socket() as socket:
            yield await socket.subscribe(EVENTS)

    def pickled(self, key: bytes) -> Json:
        """Everything this device must keep between runs, encrypted with `key` (32 bytes) where secret."""
        return {
            "account": self.account.pickle(key),
            "olm": {peer: [s.pickle(key) for s in sessions] for peer, sessions in self.olm_sessions.items()},
            "inbound": {
                sid: [k.conversation_id, k.sender_id, k.session.pickle(key)] for sid, k in self.inbound.items()
            },
            "outbound": {conversation: group.pickle(key) for conversation, group in self.outbound.items()},
            "shared": {conversation: sorted(devices) for conversation, devices in self.shared.items()},
            "peers": [[p.device_id, p.user_id, p.identity_key, p.signing_key] for p in self.peers.values()],
        }

    @classmethod
    def restored(cls, person: Person, state: Json, key: bytes) -> OlmDevice:
        """The device again from `pickled`'s output, as an app starts from what it stored."""
        device = cls(person)
        device.account = Account.from_pickle(state["account"], key)
        device.olm_sessions = {
            peer: [Session.from_pickle(s, key) for s in sessions] for peer, sessions in state["olm"].items()
        }
        device.inbound = {
            sid: _InboundKey(conversation, sender, InboundGroupSession.from_pickle(text, key))
            for sid, (conversation, sender, text) in state["inbound"].items()
        }
        device.outbound = {
            conversation: GroupSession.from_pickle(text, key) for conversation, text in state["outbound"].items()
        }
        device.shared = {conversation: set(devices) for conversation, devices in state["shared"].items()}
        device.peers = {entry[0]: PeerDevice(*entry) for entry in state["peers"]}
        return device

    async def create_group(self, *others: OlmDevice | Person, title: str = "secret") -> str:
        """A new encrypted group with the users of `others`; its id."""
        ids = sorted({other.user_id for other in others} - {self.user_id})
        created = (await self.person.data(CREATE_GROUP, t=title, m=ids))["createGroup"]
        assert created["encrypted"] is True
        return str(created["id"])

    async def add_members(self, conversation_id: str, *others: OlmDevice | Person) -> None:
        await self.person.data(ADD_MEMBERS, c=conversation_id, u=sorted({o.user_id for o in others}))

    async def remove_member(self, conversation_id: str, other: OlmDevice | Person) -> None:
        """Removes a member from a group, and stops giving them this device's group session at once."""
        await self.person.data(REMOVE_MEMBER, c=conversation_id, u=other.user_id)
        self.rotate(conversation_id)

    async def revoke(self, other: OlmDevice) -> None:
        """Revokes another device of this user, and stops giving it group sessions at once."""
        await self.person.data(REVOKE, id=other.device_id)
        self.forget(other.device_id)


async def olm_devices(person: Person, count: int) -> list[OlmDevice]:
    """`person`'s device and `count - 1` more logins of the same user, each with its keys published."""
    people = [person] + [await person.other_device(f"device {n}") for n in range(2, count + 1)]
    return [await OlmDevice.create(p) for p in people]
