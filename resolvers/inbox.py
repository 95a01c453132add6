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

from sqlalchemy import delete, exists, func, insert, select, update
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
    # Lock heads in id order so concurrent fan-outs to overlapping groups cannot deadlock.
    await session.execute(
        select(col(InboxHead.user_id))
        .where(col(InboxHead.user_id).in_(users))
        .order_by(col(InboxHead.user_id))
        .with_for_update()
    )
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


async def read_entries(
    session: AsyncSession, user_id: int, *, after: int, limit: int
) -> list[tuple[InboxEntry, Message | None, User | None]]:
    """The user's entries after position `after`, oldest first, with their messages and senders."""
    rows = (
        await session.execute(
            select(InboxEntry, Message, User)
            .outerjoin(Message, col(Message.id) == col(InboxEntry.message_id))
            .outerjoin(User, col(User.id) == col(Message.sender_id))
            .where(col(InboxEntry.user_id) == user_id, col(InboxEntry.seq) > after)
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
