"""Message lifecycle: edits, deletes for everyone and reactions, as durable events about a message.

The server deletes a message once every device has it, so these are not updates of a
stored row: each is a payload inbox entry (kinds EDIT, DELETE, REACTION) appended to
every current member's inbox, the actor's included (their other devices), committed
then announced like receipts. They replay, stay pending until acknowledged and come
after the original in each inbox. Where the original is still pending it is changed
too: an edit rewrites its body, a delete removes body and attachments at once.

Payloads start with the message id (`{"m":<id>,`), so a delete finds the pending edits
of its message by that prefix and removes their bodies as well.

Blocks filter these events as they filter messages: in a direct conversation nothing a
user edits, deletes or reacts reaches a member who blocked them (resolvers/blocks.py). A
delete for everyone is final: it is remembered on the send's record (`SentKey`), which
outlives the message row, and an edit of a deleted message is `NotFound`.

Each change first writes the actor's member row (`_hold_membership`): membership then
holds until commit, as for a send, and one member's changes in a conversation take turns,
so that the per-message reaction limit is counted with no other insert in flight. Locks
follow the order of every writer: member row, the send's record, the message row, inbox heads.
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
    Member,
    Message,
    Reaction,
    SentKey,
    UploadState,
    User,
)
from resolvers import before_send, encryption
from resolvers.accounts import Viewer
from resolvers.blocks import blockers_among
from resolvers.conversations import MANAGERS, member_ids
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.expiry import is_expired
from resolvers.ids import MessageRef
from resolvers.inbox import Appended, append_events
from resolvers.messages import check_body, check_send_rate
from resolvers.moderation import require_voice
from resolvers.publish import commit_then_publish
from resolvers.records import DELETED_DISPLAY_NAME, DELETED_USERNAME
from resolvers.services import Services
from resolvers.webhooks import message_payload, stage

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
    # An edit in an encrypted conversation: the new content, opaque (resolvers/encryption.py).
    ciphertext: str | None = None


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
        if change.ciphertext is not None:
            data["ct"] = change.ciphertext
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
        actor_username=data.get("un") or DELETED_USERNAME,
        actor_display_name=data.get("ud") or DELETED_DISPLAY_NAME,
        at=datetime.fromisoformat(data["at"]),
        body=data.get("b"),
        emoji=data.get("e"),
        added=bool(data.get("add", True)),
        ciphertext=data.get("ct"),
    )


def _payload_prefix(message_id: int) -> str:
    return f'{{"m":{message_id},'


async def _actor(session: AsyncSession, viewer: Viewer) -> User:
    user = await session.get(User, viewer.user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


async def _hold_membership(session: AsyncSession, conversation_id: int, user_id: int) -> Member:
    """The actor's membership, held until commit; `NotFound` for non-members, as for a missing conversation.

    A write, not a read (as a send's first statement): on SQLite it takes the write lock,
    so every later read is current; on PostgreSQL it locks the member row against a removal
    and against the member's other changes here (a send's FOR KEY SHARE does not wait for it).
    """
    held = await session.execute(
        update(Member)
        .where(col(Member.conversation_id) == conversation_id, col(Member.user_id) == user_id)
        .values(muted=col(Member.muted))
        .execution_options(synchronize_session=False)
    )
    if not held.rowcount:  # type: ignore[attr-defined]
        raise NotFound("No such conversation.")
    member = await session.get(Member, (conversation_id, user_id))
    assert member is not None  # locked above
    return member


async def _sent_at(
    session: AsyncSession, ref: MessageRef, *, now: datetime, lock: bool = False
) -> tuple[datetime | None, bool]:
    """When the message was sent, and whether it is gone for everyone (deleted, or disappeared).

    From its row while it is pending, else from its send's record (which remembers a
    delete, and an expiry once swept, after the row is gone). `lock` locks both as a
    delete's UPDATE does (FOR NO KEY UPDATE), so that an edit and a delete of one message take turns.
    """
    key_query = select(col(SentKey.sent_at), col(SentKey.deleted_at)).where(
        col(SentKey.message_id) == ref.message_id, col(SentKey.sender_id) == ref.sender_id
    )
    row_query = select(col(Message.sent_at), col(Message.deleted_at), col(Message.expires_at)).where(
        col(Message.id) == ref.message_id, col(Message.conversation_id) == ref.conversation_id
    )
    if lock:
        key_query, row_query = key_query.with_for_update(key_share=True), row_query.with_for_update(key_share=True)
    key = (await session.execute(key_query)).one_or_none()
    row = (await session.execute(row_query)).one_or_none()
    # An expired message is gone before the sweep removes its row: an edit must not send its text on.
    gone = row is not None and (row[1] is not None or is_expired(row[2], now))
    deleted = (key is not None and key[1] is not None) or gone
    sent_at = row[0] if row is not None else key[0] if key is not None else None
    return sent_at, deleted


async def _recipients(session: AsyncSession, ref: MessageRef, actor_id: int) -> tuple[list[int], bool]:
    """Who gets the actor's change, and whether a blocker was left out.

    Every member, less (in a direct conversation) those who blocked the actor: the rule
    of a send (infra/pg_inbox_store.py `recipients`, infra/sql_inbox_store.py).
    """
    members = await member_ids(session, ref.conversation_id)
    kind = await session.scalar(select(col(Conversation.kind)).where(col(Conversation.id) == ref.conversation_id))
    if kind is not ConversationKind.DIRECT:
        return members, False
    blockers = set(await blockers_among(session, actor_id, members))
    return [uid for uid in members if uid not in blockers], bool(blockers)


async def _append(
    session: AsyncSession, kind: EventKind, change: LifecycleChange, recipients: list[int]
) -> tuple[None, list[Appended]]:
    appended = await append_events(session, recipients, kind, payload_text=payload_of(kind, change), at=change.at)
    return None, appended


def _outside(sent_at: datetime | None, now: datetime, window: float) -> bool:
    return sent_at is None or now - sent_at > timedelta(seconds=window)


async def edit_message(
    services: Services, viewer: Viewer, ref: MessageRef, body: str | None, *, ciphertext: str | None = None
) -> None:
    """Its sender changes a message's body (ciphertext where encrypted) within the edit window; members' devices get it."""
    if ciphertext is not None:
        text = None if body is None or not body.strip() else body
        encryption.check_ciphertext(services, ciphertext)
    else:
        text = check_body(services, body or "")
    window = services.limits.edit_window_seconds

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        await _hold_membership(session, ref.conversation_id, viewer.user_id)
        if ref.sender_id != viewer.user_id:
            raise Forbidden("Only its sender can edit a message.")
        encrypted = await session.scalar(
            select(col(Conversation.encrypted)).where(col(Conversation.id) == ref.conversation_id)
        )
        wrong_kind = encryption.mismatch(bool(encrypted), body=text, ciphertext=ciphertext)
        if wrong_kind is not None:
            raise encryption.refusal_error(wrong_kind)
        now = services.clock()
        # Locked: a delete for everyone (by a group admin, say) either committed before and is
        # seen here, or waits and then finds this edit's event to erase.
        sent_at, deleted = await _sent_at(session, ref, now=now, lock=True)
        if deleted:
            raise NotFound("No such message.")
        if _outside(sent_at, now, window):
            raise Forbidden(f"A message can be edited for {window:g} seconds after it was sent.")
        recipients, blocked = await _recipients(session, ref, viewer.user_id)
        if not blocked:
            # Still pending somewhere: a device that has not received it yet gets the new text too.
            # Not for a member who blocked the sender: their pending copy keeps the text it had.
            await session.execute(
                update(Message)
                .where(col(Message.id) == ref.message_id, col(Message.deleted_at).is_(None))
                .values(body=text, ciphertext=ciphertext)
                .execution_options(synchronize_session=False)
            )
        actor = await _actor(session, viewer)
        change = LifecycleChange(
            ref, viewer.user_id, actor.username, actor.display_name, now, body=text, ciphertext=ciphertext
        )
        stage(session, "message.edited", message_payload(ref, body=text, actor_id=viewer.user_id))
        return await _append(session, EventKind.EDIT, change, recipients)

    await check_send_rate(services, viewer)
    hook = services.before_send
    if hook is not None and ciphertext is None and ref.sender_id == viewer.user_id:
        # The new text is judged as a send's would be (before the transaction: no lock is held
        # while the hook answers); others' edits are refused below without asking it.
        text = await before_send.screen(
            services,
            hook,
            viewer,
            conversation_id=ref.conversation_id,
            client_id="",
            body=text,
            mentions=(),
            attachment_count=0,
            reply_to=None,
            edit_of=ref,
        )
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
        member = await _hold_membership(session, ref.conversation_id, viewer.user_id)
        now = services.clock()
        kind = await session.scalar(select(col(Conversation.kind)).where(col(Conversation.id) == ref.conversation_id))
        manager = kind is ConversationKind.GROUP and member.role in MANAGERS
        if not manager:
            if ref.sender_id != viewer.user_id:
                raise Forbidden("Only its sender or a group owner or admin can delete a message.")
            sent_at, _deleted = await _sent_at(session, ref, now=now)
            if _outside(sent_at, now, window):
                raise Forbidden(f"A message can be deleted by its sender for {window:g} seconds after it was sent.")
        # Remembered on the send's record, which outlives the row: an edit after delivery reads it
        # there. The record before the row, the order in which an edit locks them.
        marked = await session.execute(
            update(SentKey)
            .where(
                col(SentKey.message_id) == ref.message_id,
                col(SentKey.sender_id) == ref.sender_id,
                col(SentKey.deleted_at).is_(None),
            )
            .values(deleted_at=now)
            .execution_options(synchronize_session=False)
        )
        erased = await session.execute(
            update(Message)
            .where(
                col(Message.id) == ref.message_id,
                col(Message.conversation_id) == ref.conversation_id,
                col(Message.deleted_at).is_(None),
            )
            .values(body=None, ciphertext=None, attachments=None, deleted_at=now)
            .execution_options(synchronize_session=False)
        )
        if not marked.rowcount and not erased.rowcount:  # type: ignore[attr-defined]
            _sent, deleted_before = await _sent_at(session, ref, now=now)
            if deleted_before:
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
        recipients, _blocked = await _recipients(session, ref, viewer.user_id)
        appended = await _append(session, EventKind.DELETE, change, recipients)
        stage(session, "message.deleted", message_payload(ref, actor_id=viewer.user_id))
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
        if "ct" in data:
            data["ct"] = None
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
        # Held first: the member's reactions take turns, so the count below sees every one stored.
        await _hold_membership(session, ref.conversation_id, viewer.user_id)
        key = (ref.message_id, viewer.user_id, emoji)
        existing = await session.get(Reaction, key)
        now = services.clock()
        # A frozen conversation, or a member muted there: no reactions (resolvers/moderation.py).
        await require_voice(session, ref.conversation_id, viewer.user_id, now)
        if added:
            if existing is not None:
                return None, []
            _sent, deleted = await _sent_at(session, ref, now=now)
            if deleted:  # nothing is left to react to, as for an edit
                raise NotFound("No such message.")
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
        recipients, _blocked = await _recipients(session, ref, viewer.user_id)
        stage(
            session,
            "reaction.added" if added else "reaction.removed",
            {"message_id": ref, "conversation_id": ref.conversation_id, "user_id": viewer.user_id, "emoji": emoji},
        )
        return await _append(session, EventKind.REACTION, change, recipients)

    await check_send_rate(services, viewer)
    try:
        await commit_then_publish(services, work)
    except IntegrityError:
        # The same reaction raced itself: the other request stored and announced it.
        log.info("user %s reacted with the same emoji twice at once", viewer.user_id)
