"""What notices and signals carry on the bus: both directions of each format, side by side.

An entry notice may carry its entry's event (a message, a receipt, or an entry for
one device of the user, whose other devices' streams skip it), so that a
stream expecting that position yields it without reading the database; `encode_*`
makes that form when publishing (`resolvers/publish.py`) and `decode_*` reads it back
(`resolvers/events.py`). Every process decodes every notice of the shards it listens
to, so a carried event keeps short keys, each named in its TypedDict below. Keys are
added, never renamed or removed: during a rolling deploy one version decodes what
the other published, and an unknown kind or a missing key reads as "not carried"
(the stream reads the database instead). The envelope around them (who, which
position) is `infra/fanout.py`'s.

Signals are best effort and never stored: typing, and the revocation of devices.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

from resolvers.records import StoredMessage, ToDeviceMessage

MESSAGE_KIND: Literal["M"] = "M"
RECEIPT_KIND: Literal["R"] = "R"
DEVICE_KIND: Literal["D"] = "D"


class MessageEvent(TypedDict):
    """A message as an entry notice carries it; each key names a `StoredMessage` field."""

    k: Literal["M"]
    id: int  # id
    c: int  # conversation_id
    s: int  # sender_id
    su: str  # sender_username
    sd: str  # sender_display_name
    ci: str  # client_id
    b: str | None  # body
    t: str  # sent_at, ISO 8601
    # Added later: older publishers leave them out.
    a: NotRequired[str | None]  # attachments (their metadata as stored, JSON)
    r: NotRequired[int | None]  # reply_to_id
    rs: NotRequired[int | None]  # reply_to_sender_id
    x: NotRequired[str | None]  # expires_at, ISO 8601
    mn: NotRequired[list[int]]  # mentions (user ids)
    ct: NotRequired[str | None]  # ciphertext (opaque base64, encrypted conversations)


class ReceiptEvent(TypedDict):
    """A receipt as an entry notice carries it: its stored payload, whose keys are spelled out."""

    k: Literal["R"]
    p: dict[str, Any]  # the payload (resolvers/watermarks.py)


class DeviceEvent(TypedDict):
    """An entry for one device of the user: the user's other streams pass its position without a read.

    A to-device message is carried whole when small enough (resolvers/to_device.py); without
    its other keys, the addressed device reads the entry from the database.
    """

    k: Literal["D"]
    dv: int  # the device the entry is for
    s: NotRequired[int]  # sender_id
    su: NotRequired[str]  # sender_username
    sd: NotRequired[str]  # sender_display_name
    sv: NotRequired[int]  # the sender's device
    ty: NotRequired[str]  # type
    p: NotRequired[str]  # payload (opaque)


CarriedEvent = MessageEvent | ReceiptEvent | DeviceEvent


def encode_message(message: StoredMessage) -> MessageEvent:
    """A message as an entry notice carries it."""
    encoded: MessageEvent = {
        "k": MESSAGE_KIND,
        "id": message.id,
        "c": message.conversation_id,
        "s": message.sender_id,
        "su": message.sender_username,
        "sd": message.sender_display_name,
        "ci": message.client_id,
        "b": message.body,
        "t": message.sent_at.isoformat(),
        "a": message.attachments,
        "r": message.reply_to_id,
        "rs": message.reply_to_sender_id,
        "x": message.expires_at.isoformat() if message.expires_at is not None else None,
        "mn": list(message.mentions),
    }
    if message.ciphertext is not None:  # a plaintext message's notice stays as small as it was
        encoded["ct"] = message.ciphertext
    return encoded


def decode_message(encoded: Mapping[str, Any]) -> StoredMessage:
    """The message an entry notice carried (its "k" is MESSAGE_KIND); KeyError or ValueError when malformed."""
    return StoredMessage(
        id=encoded["id"],
        conversation_id=encoded["c"],
        sender_id=encoded["s"],
        sender_username=encoded["su"],
        sender_display_name=encoded["sd"],
        client_id=encoded["ci"],
        body=encoded["b"],
        sent_at=datetime.fromisoformat(encoded["t"]),
        attachments=encoded.get("a"),
        reply_to_id=encoded.get("r"),
        reply_to_sender_id=encoded.get("rs"),
        expires_at=datetime.fromisoformat(expires) if (expires := encoded.get("x")) is not None else None,
        mentions=tuple(int(uid) for uid in encoded.get("mn") or ()),
        ciphertext=encoded.get("ct"),
    )


def encode_receipt(payload: str) -> ReceiptEvent:
    """A receipt as an entry notice carries it, from its stored payload (JSON text)."""
    data: dict[str, Any] = json.loads(payload)
    return {"k": RECEIPT_KIND, "p": data}


def decode_receipt(encoded: Mapping[str, Any]) -> dict[str, Any]:
    """The stored payload of the receipt an entry notice carried (its "k" is RECEIPT_KIND)."""
    payload: dict[str, Any] = encoded["p"]
    return payload


def device_marker(device_id: int) -> DeviceEvent:
    """The notice form of an entry for one device only, carrying nothing else."""
    return {"k": DEVICE_KIND, "dv": device_id}


def encode_to_device(message: ToDeviceMessage) -> DeviceEvent:
    """A to-device message as an entry notice carries it."""
    return {
        "k": DEVICE_KIND,
        "dv": message.device_id,
        "s": message.sender_id,
        "su": message.sender_username,
        "sd": message.sender_display_name,
        "sv": message.sender_device_id,
        "ty": message.type,
        "p": message.payload,
    }


def decode_to_device(encoded: Mapping[str, Any]) -> ToDeviceMessage | None:
    """The to-device message a notice carried whole; None for a bare device marker. KeyError when malformed."""
    if "p" not in encoded:
        return None
    return ToDeviceMessage(
        device_id=int(encoded["dv"]),
        sender_id=int(encoded["s"]),
        sender_username=str(encoded["su"]),
        sender_display_name=str(encoded["sd"]),
        sender_device_id=int(encoded["sv"]),
        type=str(encoded["ty"]),
        payload=str(encoded["p"]),
    )


def device_of(encoded: Mapping[str, Any]) -> int | None:
    """The device a carried event is for (its "k" is DEVICE_KIND); None when it is for every device."""
    if encoded.get("k") != DEVICE_KIND:
        return None
    return int(encoded["dv"])


def typing_signal(*, conversation_id: int, user_id: int, typing: bool, at: datetime) -> dict[str, Any]:
    """The signal that a member is (or stopped) typing in a conversation."""
    return {"typing": {"conversation_id": conversation_id, "user_id": user_id, "typing": typing, "at": at.isoformat()}}


def decode_typing(signal: Mapping[str, Any]) -> tuple[int, int, bool, datetime] | None:
    """(conversation, user, typing, at) of a typing signal; None for any other or a malformed one."""
    data = signal.get("typing")
    if not isinstance(data, dict):
        return None
    try:
        return (
            int(data["conversation_id"]),
            int(data["user_id"]),
            bool(data["typing"]),
            datetime.fromisoformat(data["at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def revocation_signal(device_ids: list[int]) -> dict[str, Any]:
    """The signal that these devices were logged out: their streams end."""
    return {"revoked": device_ids}


def revokes(signal: Mapping[str, Any], device_id: int) -> bool:
    """Whether a signal revokes this device (`logout` is what processes before `revoked` sent)."""
    revoked = signal.get("revoked")
    return signal.get("logout") == device_id or (isinstance(revoked, list) and device_id in revoked)
