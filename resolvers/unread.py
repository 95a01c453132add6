"""Unread badges: per-member counters the send moves and markRead recounts, and the viewer's totals.

`members.unread_count` / `unread_mentions` are counters, never counts of rows: messages leave
the server once delivered. The send adds one for every recipient but the sender in its own
statement (infra/pg_inbox_store.py `counted`, and `count_sent` here for SQLite). markRead moves
`read_upto` (the newest message id read) and recounts from what outlives delivery: the sends'
records (`sent_keys`) and the `mentions` rows.

Why the recount is exact against a concurrent send on PostgreSQL (READ COMMITTED): markRead
first writes the reader's member row (`UPDATE … SET read_upto = max(…)`, which takes the same
FOR NO KEY UPDATE lock a `SELECT … FOR NO KEY UPDATE` would). A send that already incremented
that row holds its lock, so markRead waits for it to commit; a send that has not yet incremented
it waits for markRead's lock, and once markRead commits it adds its one to the recounted value
(its UPDATE re-reads the newest row version). The recount runs in a LATER statement, with a
snapshot taken after the lock was granted, so it sees every send of the first kind, and none of
the second (not committed, and its record commits with its increment). On SQLite writers are
serialized, and markRead's first statement is a write.

What the recount cannot know, it approximates: a message withheld from the reader by a block
(direct conversations) is judged by the blocks of now, and only sends since the reader joined
count. A message deleted for everyone leaves the counters as they are until the reader's next
markRead recounts without it (lowering other members' counters inside the delete would take
their member rows after the send's record, against the lock order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Block, Conversation, ConversationKind, Device, EventKind, Member, Mention, SentKey
from resolvers.accounts import Viewer
from resolvers.errors import NotFound
from resolvers.ids import MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.services import Services

READ_STATE = EventKind.READ_STATE.value


@dataclass(frozen=True, slots=True)
class ReadPosition:
    """A member's read position in a conversation after markRead, and what is left unread there."""

    conversation_id: int
    # The newest message read (None before anything was read, or once its record is gone).
    read_upto: MessageRef | None
    unread_count: int
    unread_mentions: int
    # Whether markRead changed the position or a counter (only then do the other devices hear of it).
    changed: bool


@dataclass(frozen=True, slots=True)
class UnreadTotal:
    """The viewer's badge: unread in conversations not muted now, and apart, in muted ones."""

    conversations: int
    messages: int
    mentions: int
    muted_conversations: int
    muted_messages: int


async def count_sent(
    session: AsyncSession, conversation_id: int, sender_id: int, recipients: Sequence[int], mentions: Sequence[int]
) -> None:
    """A send's counters (SQLite's path; PostgreSQL does it inside the send statement).

    Each recipient but the sender gets one more unread message (and mention, when named), and
    the conversation comes back from their archive; the named recipients get `mentions` rows.
    """
    others = [uid for uid in recipients if uid != sender_id]
    if not others:
        return
    named = [uid for uid in others if uid in set(mentions)]
    await session.execute(
        update(Member)
        .where(col(Member.conversation_id) == conversation_id, col(Member.user_id).in_(others))
        .values(
            unread_count=col(Member.unread_count) + 1,
            unread_mentions=col(Member.unread_mentions) + case((col(Member.user_id).in_(named), 1), else_=0),
            archived=False,
        )
        .execution_options(synchronize_session=False)
    )


async def store_mentions(
    session: AsyncSession, conversation_id: int, message_id: int, named: Sequence[int], *, sent_at: datetime
) -> None:
    """The `mentions` rows of a send for the named users it reaches (markRead recounts from these)."""
    if named:
        await session.execute(
            insert(Mention),
            [
                {"user_id": uid, "conversation_id": conversation_id, "message_id": message_id, "sent_at": sent_at}
                for uid in named
            ],
        )


async def members_among(session: AsyncSession, conversation_id: int, user_ids: Sequence[int]) -> int:
    """How many of `user_ids` are members of the conversation."""
    if not user_ids:
        return 0
    found = await session.scalar(
        select(func.count()).where(
            col(Member.conversation_id) == conversation_id, col(Member.user_id).in_(list(user_ids))
        )
    )
    return int(found or 0)


async def read_up_to(session: AsyncSession, viewer: Viewer, conversation_id: int, newest: MessageRef) -> ReadPosition:
    """Moves the viewer's read position to `newest` (never back) and recounts what is left unread.

    `NotFound` for a non-member. In the caller's transaction; see the module docstring for why
    the lock comes first and the count in a later statement.
    """
    # Read before the lock, only to tell whether the position moves (a stale value can only
    # make the other devices hear of it once more).
    before = await session.scalar(
        select(col(Member.read_upto)).where(
            col(Member.conversation_id) == conversation_id, col(Member.user_id) == viewer.user_id
        )
    )
    held = await session.execute(
        update(Member)
        .where(col(Member.conversation_id) == conversation_id, col(Member.user_id) == viewer.user_id)
        .values(
            read_upto=case((col(Member.read_upto) < newest.message_id, newest.message_id), else_=col(Member.read_upto))
        )
        .returning(col(Member.read_upto), col(Member.joined_at), col(Member.unread_count), col(Member.unread_mentions))
        .execution_options(synchronize_session=False)
    )
    row = held.one_or_none()
    if row is None:
        raise NotFound("No such conversation.")
    read_upto, joined_at, old_count, old_mentions = row
    kind = await session.scalar(select(col(Conversation.kind)).where(col(Conversation.id) == conversation_id))
    unread_query = select(func.count()).where(
        col(SentKey.conversation_id) == conversation_id,
        col(SentKey.message_id) > read_upto,
        col(SentKey.sender_id) != viewer.user_id,
        col(SentKey.deleted_at).is_(None),
        col(SentKey.sent_at) >= joined_at,
    )
    if kind is ConversationKind.DIRECT:
        blocked = select(col(Block.blocked_id)).where(col(Block.blocker_id) == viewer.user_id)
        unread_query = unread_query.where(col(SentKey.sender_id).not_in(blocked))
    unread = int(await session.scalar(unread_query) or 0)
    mentions = int(
        await session.scalar(
            select(func.count())
            .select_from(Mention)
            .join(
                SentKey,
                and_(
                    col(SentKey.message_id) == col(Mention.message_id),
                    col(SentKey.conversation_id) == col(Mention.conversation_id),
                ),
            )
            .where(
                col(Mention.user_id) == viewer.user_id,
                col(Mention.conversation_id) == conversation_id,
                col(Mention.message_id) > read_upto,
                col(SentKey.deleted_at).is_(None),
            )
        )
        or 0
    )
    await session.execute(
        update(Member)
        .where(col(Member.conversation_id) == conversation_id, col(Member.user_id) == viewer.user_id)
        .values(unread_count=unread, unread_mentions=mentions)
        .execution_options(synchronize_session=False)
    )
    if read_upto == newest.message_id:
        ref: MessageRef | None = newest
    else:
        sender = await session.scalar(
            select(col(SentKey.sender_id)).where(
                col(SentKey.message_id) == read_upto, col(SentKey.conversation_id) == conversation_id
            )
        )
        ref = MessageRef(read_upto, conversation_id, sender) if sender is not None and read_upto else None
    changed = read_upto != before or (unread, mentions) != (old_count, old_mentions)
    return ReadPosition(conversation_id, ref, unread, mentions, changed=changed)


def read_state_payload(position: ReadPosition, *, at: datetime) -> str:
    """The stored JSON of a READ_STATE event (short keys, like the lifecycle events')."""
    ref = position.read_upto
    data: dict[str, Any] = {
        "c": position.conversation_id,
        "m": ref.message_id if ref is not None else None,
        "s": ref.sender_id if ref is not None else None,
        "u": position.unread_count,
        "n": position.unread_mentions,
        "at": at.isoformat(),
    }
    return json.dumps(data, separators=(",", ":"))


def read_state_at(payload: str) -> datetime:
    """When a stored READ_STATE event was written."""
    return datetime.fromisoformat(json.loads(payload)["at"])


def read_state_of(payload: str) -> ReadPosition:
    """A stored READ_STATE payload read back (`changed` is meaningless there)."""
    data: dict[str, Any] = json.loads(payload)
    conversation_id = int(data["c"])
    ref = (
        MessageRef(int(data["m"]), conversation_id, int(data["s"]))
        if data.get("m") is not None and data.get("s") is not None
        else None
    )
    return ReadPosition(conversation_id, ref, int(data["u"]), int(data["n"]), changed=True)


async def has_other_device(session: AsyncSession, viewer: Viewer) -> bool:
    """Whether another device of the viewer's exists (the send's rule for the sender's own inbox)."""
    other = await session.scalar(
        select(col(Device.id)).where(col(Device.user_id) == viewer.user_id, col(Device.id) != viewer.device_id).limit(1)
    )
    return other is not None


async def announce_read_state(
    session: AsyncSession, viewer: Viewer, position: ReadPosition, *, at: datetime
) -> list[Appended]:
    """Appends the READ_STATE event to the reader's own inbox, for their other devices."""
    payload = read_state_payload(position, at=at)
    return await append_events(session, [viewer.user_id], EventKind.READ_STATE, payload_text=payload, at=at)


async def unread_total(services: Services, viewer: Viewer) -> UnreadTotal:
    """The viewer's badge, summed over their member rows (muted ones apart, as of the services' clock)."""
    now = services.clock()
    muted = or_(col(Member.muted), and_(col(Member.muted_until).is_not(None), col(Member.muted_until) > now))
    muted_flag = case((muted, 1), else_=0)
    async with services.db.session() as session:
        rows = (
            await session.execute(
                select(
                    muted_flag,
                    func.count(),
                    func.coalesce(func.sum(col(Member.unread_count)), 0),
                    func.coalesce(func.sum(col(Member.unread_mentions)), 0),
                )
                .where(col(Member.user_id) == viewer.user_id, col(Member.unread_count) > 0)
                .group_by(muted_flag)
            )
        ).all()
    by_flag = {int(flag): (int(n), int(messages), int(mentions)) for flag, n, messages, mentions in rows}
    loud, quiet = by_flag.get(0, (0, 0, 0)), by_flag.get(1, (0, 0, 0))
    return UnreadTotal(
        conversations=loud[0],
        messages=loud[1],
        mentions=loud[2] + quiet[2],
        muted_conversations=quiet[0],
        muted_messages=quiet[1],
    )
