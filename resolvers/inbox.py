"""The per-user inbox: appending durable events, reading them back, pruning what every device has.

Every durable event (message, receipt, conversation change) becomes one
`InboxEntry` per user concerned. Positions are handed out under a row lock on
the user's `InboxHead`, so one user's entries become visible in position order;
that is what lets a subscriber treat "I have seen N" as "I have seen all up to N".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, exists, func, insert, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, EventKind, InboxEntry, InboxHead, Message, User
from models.columns import utcnow
from resolvers.after_commit import after_commit


@dataclass(frozen=True)
class Appended:
    """One new entry: whose inbox, and at which position (for the live notice)."""

    user_id: int
    seq: int
    # Set for an entry meant for one device of the user only; the notice names it (resolvers/publish.py).
    device_id: int | None = None


async def append_events(
    session: AsyncSession,
    user_ids: Iterable[int],
    kind: EventKind,
    *,
    message_id: int | None = None,
    payload: dict[str, Any] | None = None,
    payload_text: str | None = None,
    at: datetime | None = None,
) -> list[Appended]:
    """Appends one entry per user, in the caller's transaction; returns the positions taken."""
    users = sorted(set(user_ids))
    if not users:
        return []
    await _lock_heads(session, users)
    rows = (
        await session.execute(
            update(InboxHead)
            .where(col(InboxHead.user_id).in_(users))
            .values(last_seq=col(InboxHead.last_seq) + 1)
            .returning(col(InboxHead.user_id), col(InboxHead.last_seq))
        )
    ).all()
    now = at or utcnow()
    text = json.dumps(payload, separators=(",", ":")) if payload is not None else payload_text
    entries = [
        {
            "user_id": uid,
            "seq": seq,
            "kind": kind,
            "message_id": message_id,
            "payload": text,
            "created_at": now,
        }
        for uid, seq in rows
    ]
    if entries:
        await session.execute(insert(InboxEntry), entries)
    return [Appended(uid, seq) for uid, seq in rows]


async def _lock_heads(session: AsyncSession, users: Sequence[int]) -> None:
    """Locks these users' inbox heads in id order, so concurrent fan-outs to overlapping groups cannot deadlock."""
    await session.execute(
        select(col(InboxHead.user_id))
        .where(col(InboxHead.user_id).in_(users))
        .order_by(col(InboxHead.user_id))
        .with_for_update()
    )


async def append_for_devices(
    session: AsyncSession, entries: Sequence[tuple[int, int, str]], kind: EventKind, *, at: datetime | None = None
) -> list[Appended]:
    """Appends `(user, device, payload JSON)` entries, each for one device of its user, in the order given.

    One user's entries take consecutive positions in that order; heads are locked in user id order.
    """
    if not entries:
        return []
    counts: dict[int, int] = {}
    for user_id, _, _ in entries:
        counts[user_id] = counts.get(user_id, 0) + 1
    users = sorted(counts)
    await _lock_heads(session, users)
    rows = (
        await session.execute(
            update(InboxHead)
            .where(col(InboxHead.user_id).in_(users))
            .values(last_seq=col(InboxHead.last_seq) + case(counts, value=col(InboxHead.user_id), else_=0))
            .returning(col(InboxHead.user_id), col(InboxHead.last_seq))
        )
    ).all()
    # Each user's block of positions ends at the new head: hand them out from its start.
    following = {uid: head - counts[uid] + 1 for uid, head in rows}
    now = at or utcnow()
    appended: list[Appended] = []
    values: list[dict[str, Any]] = []
    for user_id, device_id, text in entries:
        if user_id not in following:  # no inbox head: the account is gone
            continue
        seq = following[user_id]
        following[user_id] = seq + 1
        values.append(
            {
                "user_id": user_id,
                "seq": seq,
                "kind": kind,
                "message_id": None,
                "payload": text,
                "device_id": device_id,
                "created_at": now,
            }
        )
        appended.append(Appended(user_id, seq, device_id))
    if values:
        await session.execute(insert(InboxEntry), values)
    return appended


async def read_entries(
    session: AsyncSession, user_id: int, *, after: int, limit: int, device_id: int | None = None
) -> list[tuple[InboxEntry, Message | None, User | None]]:
    """The user's entries after position `after`, oldest first, with their messages and senders.

    With `device_id`, the entries meant for the user's other devices only are left out.
    """
    mine = (
        or_(col(InboxEntry.device_id).is_(None), col(InboxEntry.device_id) == device_id)
        if device_id is not None
        else true()
    )
    rows = (
        await session.execute(
            select(InboxEntry, Message, User)
            .outerjoin(Message, col(Message.id) == col(InboxEntry.message_id))
            .outerjoin(User, col(User.id) == col(Message.sender_id))
            .where(col(InboxEntry.user_id) == user_id, col(InboxEntry.seq) > after, mine)
            .order_by(col(InboxEntry.seq))
            .limit(limit)
        )
    ).all()
    return [(entry, message, user) for entry, message, user in rows]


async def prune_inbox(session: AsyncSession, user_ids: Sequence[int]) -> set[int]:
    """Deletes entries every device of these users has acknowledged; returns their messages.

    A user with no device keeps everything: the next device to log in gets it. The
    messages left without entries are deleted after this transaction commits (never
    inside it: two users pruning the last two entries of one message at once would each
    still see the other's entry, and neither would delete it).
    """
    message_ids: set[int] = set()
    for user_id in set(user_ids):
        floor = select(func.min(col(Device.acked_seq))).where(col(Device.user_id) == user_id).scalar_subquery()
        deleted = await session.execute(
            delete(InboxEntry)
            .where(col(InboxEntry.user_id) == user_id, col(InboxEntry.seq) <= floor)
            .returning(col(InboxEntry.message_id))
        )
        message_ids.update(mid for (mid,) in deleted if mid is not None)
    delete_orphans_after_commit(session, message_ids)
    return message_ids


def delete_orphans_after_commit(session: AsyncSession, message_ids: set[int]) -> None:
    """Deletes those of these messages left unreferenced, once the session's transaction has committed."""
    if not message_ids:
        return
    candidates = set(message_ids)

    async def work(after: AsyncSession) -> int:
        return await delete_orphaned_messages(after, candidates)

    after_commit(session, work)


async def delete_orphaned_messages(session: AsyncSession, message_ids: set[int]) -> int:
    """Deletes those of these messages no inbox entry refers to any more; returns how many."""
    if not message_ids:
        return 0
    result = await session.execute(
        delete(Message).where(
            col(Message.id).in_(message_ids),
            ~exists().where(col(InboxEntry.message_id) == col(Message.id)),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
