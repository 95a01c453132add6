"""To-device messages: opaque payloads from one device to single devices, durable per device.

End-to-end encryption needs a channel from device to device (Olm sessions and
group-session keys travel through it): the server relays what it cannot read. Each
message becomes one inbox entry of the addressed device's user, marked for that
device (`inbox_entries.device_id`): the user's other devices skip its position, in
the replay and live (the entry notice names the device), and it is acknowledged and
pruned like any entry. Reachable are the sender's own other devices and the devices
of users the sender shares a conversation with; any other device is `NotFound`
without saying which, and a recipient who blocked the sender gets nothing (as a
blocked direct message stays undelivered), without the sender being told.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from models import Device, EventKind, Member, User
from resolvers.accounts import Viewer
from resolvers.blocks import blockers_among
from resolvers.errors import BadUserInput, NotFound
from resolvers.ids import parse_row_id
from resolvers.inbox import Appended, append_for_devices
from resolvers.notice_codec import DeviceEvent, device_marker, encode_to_device
from resolvers.publish import publish_entries_best_effort
from resolvers.rate_limits import spend
from resolvers.records import DELETED_DISPLAY_NAME, DELETED_USERNAME, ToDeviceMessage
from resolvers.services import Services

log = logging.getLogger("parley.to_device")

MAX_MESSAGES_PER_CALL = 100
MAX_TYPE_LENGTH = 64
# A notice carries a payload up to this size, so the addressed stream needs no read; a larger
# one is announced by its device alone (the bus carries every notice to every process of its shard).
MAX_CARRIED_PAYLOAD = 8192
MINUTE = 60
UNREACHABLE = "No such device: one of these devices does not exist or is not one you can reach."


@dataclass(frozen=True, slots=True)
class OutgoingToDevice:
    """One message of a `sendToDevice` call, as the client gave it."""

    device_id: str
    type: str
    payload: str


@dataclass(frozen=True, slots=True)
class ToDeviceEventView:
    """A to-device message as its addressed device receives it."""

    cursor: str
    message: ToDeviceMessage


def to_device_of(payload: str, device_id: int) -> ToDeviceMessage:
    """A stored TO_DEVICE entry's message (`payload` as `_stored` wrote it) for `device_id`."""
    data: dict[str, Any] = json.loads(payload)
    return ToDeviceMessage(
        device_id=device_id,
        sender_id=int(data["sender_id"]),
        sender_username=str(data.get("sender_username") or DELETED_USERNAME),
        sender_display_name=str(data.get("sender_display_name") or DELETED_DISPLAY_NAME),
        sender_device_id=int(data["sender_device_id"]),
        type=str(data["type"]),
        payload=str(data["payload"]),
    )


def _stored(message: ToDeviceMessage) -> str:
    """The entry payload of a to-device message (the addressed device is the entry's `device_id`)."""
    return json.dumps(
        {
            "sender_id": message.sender_id,
            "sender_username": message.sender_username,
            "sender_display_name": message.sender_display_name,
            "sender_device_id": message.sender_device_id,
            "type": message.type,
            "payload": message.payload,
        },
        separators=(",", ":"),
    )


async def append_for_device(
    session: AsyncSession, *, user_id: int, device_id: int, kind: EventKind, payload: Mapping[str, Any] | str
) -> Appended:
    """Appends one entry for one device of `user_id`, in the caller's transaction; `NotFound` if the user is gone.

    Publish it after commit with `resolvers.publish.commit_then_publish` (or `publish_appended`),
    so the user's other devices' streams pass its position without a read.
    """
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    appended = await append_for_devices(session, [(user_id, device_id, text)], kind)
    if not appended:
        raise NotFound("No such user.")
    return appended[0]


def _checked(services: Services, viewer: Viewer, messages: Sequence[OutgoingToDevice]) -> list[int]:
    """The addressed device ids, once every message is within the limits; `BadUserInput` otherwise."""
    if not 1 <= len(messages) <= MAX_MESSAGES_PER_CALL:
        raise BadUserInput(f"Send between 1 and {MAX_MESSAGES_PER_CALL} messages at a time.")
    limit = services.limits.max_to_device_payload_bytes
    devices: list[int] = []
    for message in messages:
        kind = message.type
        if not 1 <= len(kind) <= MAX_TYPE_LENGTH or not all("!" <= c <= "~" for c in kind):
            raise BadUserInput(f"A type is 1 to {MAX_TYPE_LENGTH} visible ASCII characters.")
        if len(message.payload.encode()) > limit:
            raise BadUserInput(f"A payload is at most {limit} bytes.")
        try:
            device_id = parse_row_id(message.device_id, what="device")
        except NotFound:
            raise NotFound(UNREACHABLE) from None
        if device_id == viewer.device_id:
            raise BadUserInput("A device cannot send to-device messages to itself.")
        devices.append(device_id)
    return devices


async def _reachable(session: AsyncSession, viewer: Viewer, device_ids: set[int]) -> dict[int, int]:
    """The user of each addressed device; `NotFound` (naming none) unless the viewer may reach every one."""
    rows = await session.execute(select(col(Device.id), col(Device.user_id)).where(col(Device.id).in_(device_ids)))
    owners: dict[int | None, int] = {row.id: row.user_id for row in rows}
    if len(owners) != len(device_ids):
        raise NotFound(UNREACHABLE)
    others = {uid for uid in owners.values() if uid != viewer.user_id}
    if others:
        mine = aliased(Member)
        theirs = aliased(Member)
        shared = set(
            (
                await session.execute(
                    select(col(theirs.user_id))
                    .distinct()
                    .join(mine, col(mine.conversation_id) == col(theirs.conversation_id))
                    .where(col(mine.user_id) == viewer.user_id, col(theirs.user_id).in_(others))
                )
            ).scalars()
        )
        if shared != others:
            raise NotFound(UNREACHABLE)
    return {device_id: user_id for device_id, user_id in owners.items() if device_id is not None}


async def send_to_device(services: Services, viewer: Viewer, messages: Sequence[OutgoingToDevice]) -> None:
    """Stores each message for its device, in order and in one transaction, then publishes them.

    Counts every message against the sender's per-minute budget, delivered or not.
    """
    devices = _checked(services, viewer, messages)
    limit = services.limits.to_device_per_minute
    await spend(
        services,
        f"to_device:{viewer.user_id}",
        limit=limit,
        window_seconds=MINUTE,
        refusal=f"At most {limit} to-device messages a minute; try again shortly.",
        amount=len(messages),
    )

    async def work(session: AsyncSession) -> tuple[list[Appended], list[ToDeviceMessage]]:
        owners = await _reachable(session, viewer, set(devices))
        blockers = set(await blockers_among(session, viewer.user_id, sorted(set(owners.values()))))
        sender = await session.get(User, viewer.user_id)
        outgoing = [
            ToDeviceMessage(
                device_id=device_id,
                sender_id=viewer.user_id,
                sender_username=sender.username if sender else DELETED_USERNAME,
                sender_display_name=sender.display_name if sender else DELETED_DISPLAY_NAME,
                sender_device_id=viewer.device_id,
                type=message.type,
                payload=message.payload,
            )
            for device_id, message in zip(devices, messages, strict=True)
            if owners[device_id] not in blockers  # dropped unseen, as a blocked direct message stays undelivered
        ]
        appended = await append_for_devices(
            session, [(owners[m.device_id], m.device_id, _stored(m)) for m in outgoing], EventKind.TO_DEVICE
        )
        return appended, outgoing

    appended, outgoing = await services.db.transaction(work)
    by_device: dict[int, list[ToDeviceMessage]] = {}
    for message in outgoing:
        by_device.setdefault(message.device_id, []).append(message)
    # Positions were handed out in the order given, so one device's appended entries match its messages in order.
    events: list[DeviceEvent] = []
    rows: list[tuple[int, int, int]] = []
    for entry in appended:
        assert entry.device_id is not None  # appended for devices
        message = by_device[entry.device_id].pop(0)
        carried = len(message.payload) <= MAX_CARRIED_PAYLOAD
        events.append(encode_to_device(message) if carried else device_marker(entry.device_id))
        rows.append((entry.user_id, entry.seq, len(events) - 1))
    await publish_entries_best_effort(services, rows, events)
    log.info(
        "user %s device %s sent %d to-device messages (%d not delivered: blocked)",
        viewer.user_id,
        viewer.device_id,
        len(messages),
        len(messages) - len(outgoing),
    )
