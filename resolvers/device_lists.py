"""Device-list changes: members of a user's encrypted conversations hear when that user gains or loses a device.

Clients of an end-to-end encrypted conversation share their group session with every
device of every member, so they must learn of a new device (to share with it) and of a
gone one (to rotate the session it held). Each affected user gets one durable
`DeviceListEvent` per changed device, however many encrypted conversations they share,
appended in the transaction that adds or removes the device and published after its commit.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from models import Conversation, EventKind, InboxHead, Member
from models.columns import utcnow
from resolvers.inbox import Appended, append_events
from resolvers.publish import publish_entries_best_effort
from resolvers.services import Services

log = logging.getLogger("parley.device_lists")

DEVICE_LIST = EventKind.DEVICE_LIST.value
ADDED, REMOVED = "ADDED", "REMOVED"


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """`user_id` gained (`added`) or lost the device `device_id`."""

    user_id: int
    device_id: int
    added: bool


@dataclass(frozen=True, slots=True)
class DeviceListEventView:
    """A stored device-list change, as a device reads it back."""

    cursor: str
    user_id: int
    change: str
    device_id: int
    at: datetime


def device_list_event_of(cursor: str, data: dict[str, Any]) -> DeviceListEventView:
    """The view of a stored DEVICE_LIST entry's payload."""
    return DeviceListEventView(
        cursor=cursor,
        user_id=int(data["user_id"]),
        change=str(data["change"]),
        device_id=int(data["device_id"]),
        at=datetime.fromisoformat(data["at"]),
    )


async def device_audiences(session: AsyncSession, user_ids: Sequence[int]) -> dict[int, set[int]]:
    """For each of these users, the members of the encrypted conversations they are in (themselves included)."""
    mine, theirs = aliased(Member), aliased(Member)
    rows = await session.execute(
        select(col(mine.user_id), col(theirs.user_id))
        .join(Conversation, col(Conversation.id) == col(mine.conversation_id))
        .join(theirs, col(theirs.conversation_id) == col(mine.conversation_id))
        .where(col(mine.user_id).in_(sorted(set(user_ids))), col(Conversation.encrypted).is_(True))
        .distinct()
    )
    audiences: dict[int, set[int]] = defaultdict(set)
    for subject, member in rows.all():
        audiences[subject].add(member)
    return audiences


async def append_device_changes(
    session: AsyncSession,
    changes: Sequence[DeviceChange],
    *,
    exclude: Sequence[int] = (),
    audiences: dict[int, set[int]] | None = None,
) -> list[Appended]:
    """Appends a DeviceListEvent per change for every member of the user's encrypted conversations.

    `audiences`: `device_audiences` read earlier, while the user was still a member (an account
    deletion ends its memberships first). `exclude`: users who get nothing (that account). The
    user's own other devices are members too, and hear of it like everyone else.
    """
    if not changes:
        return []
    if audiences is None:
        audiences = await device_audiences(session, [change.user_id for change in changes])
    skipped = set(exclude)
    everyone = sorted({uid for audience in audiences.values() for uid in audience} - skipped)
    if not everyone:
        return []
    # Every head up front, in id order: the appends below each lock a subset, and a
    # transaction taking heads out of order could deadlock with a send.
    await session.execute(
        select(col(InboxHead.user_id))
        .where(col(InboxHead.user_id).in_(everyone))
        .order_by(col(InboxHead.user_id))
        .with_for_update()
    )
    now = utcnow()
    appended: list[Appended] = []
    for change in changes:
        audience = audiences.get(change.user_id, set()) - skipped
        if not audience:
            continue
        payload = {
            "user_id": change.user_id,
            "change": ADDED if change.added else REMOVED,
            "device_id": change.device_id,
            "at": now.isoformat(),
        }
        appended += await append_events(session, audience, EventKind.DEVICE_LIST, payload_text=json.dumps(payload))
    if appended:
        log.info("%d device-list changes appended for %d users", len(changes), len(everyone))
    return appended


async def publish_device_changes(services: Services, appended: Sequence[Appended]) -> None:
    """Entry notices for device-list entries a committed transaction appended (best effort)."""
    await publish_entries_best_effort(services, [(entry.user_id, entry.seq, 0) for entry in appended], [None])
