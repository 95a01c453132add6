"""Message lifecycle: edits, deletes for everyone and reactions, as durable events about a message.

The server deletes a message once every device has it, so these are not updates of a
stored row: each is a payload inbox entry (kinds EDIT, DELETE, REACTION) appended to
every current member's inbox, the actor's included (their other devices), committed
then announced like receipts. They replay, stay pending until acknowledged and come
after the original in each inbox. Where the original is still pending it is changed
too: an edit rewrites its body, a delete removes body and attachments at once.

Payloads start with the message id (`{"m":<id>,`), so a delete finds the pending edits
of its message by that prefix and removes their bodies as well.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import emoji as emoji_lib
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import (
    Attachment,
    Conversation,
    ConversationKind,
    EventKind,
    InboxEntry,
    Message,
    Reaction,
    SentKey,
    UploadState,
    User,
)
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.conversations import MANAGERS, member_ids, membership
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.ids import MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.messages import check_body, check_send_rate
from resolvers.notify import commit_then_publish
from resolvers.ports import Services

log = logging.getLogger("parley.lifecycle")

LIFECYCLE_KINDS = frozenset({EventKind.EDIT.value, EventKind.DELETE.value, EventKind.REACTION.value})
# An emoji is one grapheme cluster, but ZWJ sequences and tags make some long.
MAX_EMOJI_LENGTH = 64


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    """What an edit, delete or reaction stores, as its events render it."""

    message: MessageRef
    actor_id: int
    actor_username: str
    actor_display_name: str
    at: datetime
    body: str | None = None
    emoji: str | None = None
    added: bool = True


def payload_of(kind: EventKind, change: LifecycleChange) -> str:
    """The stored payload; the message id first (see the module docstring)."""
    data: dict[str, Any] = {
        "m": change.message.message_id,
        "c": change.message.conversation_id,
        "s": change.message.sender_id,
        "u": change.actor_id,
        "un": change.actor_username,
        "ud": change.actor_display_name,
        "at": change.at.isoformat(),
    }
    if kind is EventKind.EDIT:
        data["b"] = change.body
    elif kind is EventKind.REACTION:
        data["e"] = change.emoji
        data["add"] = change.added
    return json.dumps(data, separators=(",", ":"))


def change_of(payload: str) -> LifecycleChange:
    """A stored payload read back."""
    data: dict[str, Any] = json.loads(payload)
    return LifecycleChange(
        message=MessageRef(int(data["m"]), int(data["c"]), int(data["s"])),
        actor_id=int(data["u"]),
        actor_username=data.get("un") or "deleted",
        actor_display_name=data.get("ud") or "Deleted user",
        at=datetime.fromisoformat(data["at"]),
        body=data.get("b"),
        emoji=data.get("e"),
        added=bool(data.get("add", True)),
    )


def _payload_prefix(message_id: int) -> str:
    return f'{{"m":{message_id},'


async def _actor(session: AsyncSession, viewer: Viewer) -> User:
    user = await session.get(User, viewer.user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


async def _sent_at(session: AsyncSession, ref: MessageRef) -> tuple[datetime | None, bool]:
    """When the message was sent (from the message if pending, else its idempotency record); and if deleted."""
    row = (
        await session.execute(
            select(col(Message.sent_at), col(Message.deleted_at)).where(
                col(Message.id) == ref.message_id, col(Message.conversation_id) == ref.conversation_id
            )
        )
    ).one_or_none()
    if row is not None:
        return row[0], row[1] is not None
    sent = await session.scalar(
        select(col(SentKey.sent_at)).where(
            col(SentKey.message_id) == ref.message_id, col(SentKey.sender_id) == ref.sender_id
        )
    )
    return sent, False


async def _append(session: AsyncSession, kind: EventKind, change: LifecycleChange) -> tuple[None, list[Appended]]:
    members = await member_ids(session, change.message.conversation_id)
    appended = await append_events(session, members, kind, payload_text=payload_of(kind, change), at=change.at)
    return None, appended


def _outside(sent_at: datetime | None, now: datetime, window: float) -> bool:
    return sent_at is None or now - sent_at > timedelta(seconds=window)


async def edit_message(services: Services, viewer: Viewer, ref: MessageRef, body: str) -> None:
    """Its sender changes a message's body within the edit window; every member's devices get the edit."""
    text = check_body(services, body)
    window = services.limits.edit_window_seconds

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        await membership(session, ref.conversation_id, viewer.user_id)
        if ref.sender_id != viewer.user_id:
            raise Forbidden("Only its sender can edit a message.")
        now = utcnow()
        sent_at, deleted = await _sent_at(session, ref)
        if deleted:
            raise NotFound("No such message.")
        if _outside(sent_at, now, window):
            raise Forbidden(f"A message can be edited for {window:g} seconds after it was sent.")
        # Still pending somewhere: a device that has not received it yet gets the new text too.
        await session.execute(
            update(Message)
            .where(col(Message.id) == ref.message_id, col(Message.deleted_at).is_(None))
            .values(body=text)
            .execution_options(synchronize_session=False)
        )
        actor = await _actor(session, viewer)
        change = LifecycleChange(ref, viewer.user_id, actor.username, actor.display_name, now, body=text)
        return await _append(session, EventKind.EDIT, change)

    await check_send_rate(services, viewer)
    await commit_then_publish(services, work)
    log.debug("message %s edited by user %s", ref.message_id, viewer.user_id)


async def delete_message(services: Services, viewer: Viewer, ref: MessageRef) -> None:
    """Deletes a message for everyone: its sender within the window, or a group owner or admin.

    Where it is still pending, its body and attachments leave the server in this
    transaction (the attachments' objects go with the next file-retention run), and
    the bodies of its pending edits too.
    """
    window = services.limits.delete_window_seconds
    retention = timedelta(seconds=services.file_config.retention_seconds)

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        member = await membership(session, ref.conversation_id, viewer.user_id)
        now = utcnow()
        kind = await session.scalar(select(col(Conversation.kind)).where(col(Conversation.id) == ref.conversation_id))
        manager = kind is ConversationKind.GROUP and member.role in MANAGERS
        if not manager:
            if ref.sender_id != viewer.user_id:
                raise Forbidden("Only its sender or a group owner or admin can delete a message.")
            sent_at, _deleted = await _sent_at(session, ref)
            if _outside(sent_at, now, window):
                raise Forbidden(f"A message can be deleted by its sender for {window:g} seconds after it was sent.")
        erased = await session.execute(
            update(Message)
            .where(
                col(Message.id) == ref.message_id,
                col(Message.conversation_id) == ref.conversation_id,
                col(Message.deleted_at).is_(None),
            )
            .values(body=None, attachments=None, deleted_at=now)
            .execution_options(synchronize_session=False)
        )
        if not erased.rowcount:  # type: ignore[attr-defined]
            deleted_before = await session.scalar(
                select(col(Message.id)).where(col(Message.id) == ref.message_id, col(Message.deleted_at).is_not(None))
            )
            if deleted_before is not None:
                return None, []  # deleted already: nothing new to tell
        # Released as if long ago: the next file-retention run marks and deletes the objects.
        await session.execute(
            update(Attachment)
            .where(col(Attachment.message_id) == ref.message_id, col(Attachment.state) != UploadState.DELETING)
            .values(released_at=now - retention - timedelta(days=1))
            .execution_options(synchronize_session=False)
        )
        actor = await _actor(session, viewer)
        change = LifecycleChange(ref, viewer.user_id, actor.username, actor.display_name, now)
        appended = await _append(session, EventKind.DELETE, change)
        # After the inbox heads are locked (the lock order of every writer), so no acknowledgement
        # pruning these entries can hold a head this transaction waits for.
        await _erase_pending_edits(session, ref.message_id)
        return appended

    await check_send_rate(services, viewer)
    await commit_then_publish(services, work)
    log.info("message %s deleted for everyone by user %s", ref.message_id, viewer.user_id)


async def _erase_pending_edits(session: AsyncSession, message_id: int) -> None:
    """Removes the bodies from the pending edit events of a deleted message, in every inbox.

    Every inbox, not only current members': someone removed since the edit still holds it
    pending. A scan of the pending edits (no index on payloads): deletes are rare.
    """
    rows = (
        await session.execute(
            select(col(InboxEntry.user_id), col(InboxEntry.seq), col(InboxEntry.payload)).where(
                col(InboxEntry.kind) == EventKind.EDIT,
                col(InboxEntry.payload).startswith(_payload_prefix(message_id), autoescape=True),
            )
        )
    ).all()
    for user_id, seq, payload in rows:
        data = json.loads(payload or "{}")
        data["b"] = None
        await session.execute(
            update(InboxEntry)
            .where(col(InboxEntry.user_id) == user_id, col(InboxEntry.seq) == seq)
            .values(payload=json.dumps(data, separators=(",", ":")))
            .execution_options(synchronize_session=False)
        )


def check_emoji(value: str) -> str:
    """`value` if it is exactly one emoji (the `emoji` library's set); `BadUserInput` otherwise."""
    if not 0 < len(value) <= MAX_EMOJI_LENGTH or not emoji_lib.is_emoji(value):
        raise BadUserInput("A reaction is exactly one emoji.")
    return value


async def react(services: Services, viewer: Viewer, ref: MessageRef, value: str, *, added: bool) -> None:
    """Adds (or removes) the viewer's reaction; doing what is already done stores and sends nothing."""
    emoji = check_emoji(value)
    limit = services.limits.max_reactions_per_user_per_message

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        await membership(session, ref.conversation_id, viewer.user_id)
        key = (ref.message_id, viewer.user_id, emoji)
        existing = await session.get(Reaction, key)
        now = utcnow()
        if added:
            if existing is not None:
                return None, []
            count = await session.scalar(
                select(func.count()).where(
                    col(Reaction.message_id) == ref.message_id, col(Reaction.user_id) == viewer.user_id
                )
            )
            if (count or 0) >= limit:
                raise BadUserInput(f"At most {limit} different reactions per message.")
            session.add(
                Reaction(
                    message_id=ref.message_id,
                    user_id=viewer.user_id,
                    emoji=emoji,
                    conversation_id=ref.conversation_id,
                    created_at=now,
                )
            )
            await session.flush()
        else:
            if existing is None:
                return None, []
            await session.execute(
                delete(Reaction).where(
                    col(Reaction.message_id) == ref.message_id,
                    col(Reaction.user_id) == viewer.user_id,
                    col(Reaction.emoji) == emoji,
                )
            )
        actor = await _actor(session, viewer)
        change = LifecycleChange(ref, viewer.user_id, actor.username, actor.display_name, now, emoji=emoji, added=added)
        return await _append(session, EventKind.REACTION, change)

    await check_send_rate(services, viewer)
    try:
        await commit_then_publish(services, work)
    except IntegrityError:
        # The same reaction raced itself: the other request stored and announced it.
        log.info("user %s reacted with the same emoji twice at once", viewer.user_id)
