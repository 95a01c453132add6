"""Deleting an account (`deleteAccount`): everything the user put on the server goes, their row stays scrubbed.

The users row is kept, so that ids others hold (a direct conversation, a group's events,
receipts) still name someone: it is renamed `deleted-<id>` (a name no one can register, as
usernames have no '-'), shown as "Deleted account", gets a password hash no password matches
and keeps `deleted_at`. Everything else of theirs goes in one transaction: devices (their
sockets close on every process once it commits) and push channels, group memberships (an
OWNER's group passes to the longest-standing ADMIN, else member; members get LEFT and
ROLE_CHANGED events; a group left empty is deleted), their pending messages and edits, their
inbox, watermarks, blocks both ways, reactions, send records, mentions, invites, bans and
uploads (the stored objects are deleted after the commit, else by the retention sweep). A
direct conversation stays, with the deleted account in it, for the other person; its member
row loses the user's own state (mute, archive, pin, counters). Reports stay, those they filed and
those about them: the operator's record of abuse, naming the account only by id (docs/security.md).

Receipts, deletes and reactions of theirs still pending in others' inboxes carry their names as
JSON (resolvers/watermarks.py, resolvers/lifecycle.py): those payloads are rewritten to the
placeholder names. Lock order: the account row first (`_claim`), then conversation rows by
id, member rows and inbox heads by user id, as every writer of a conversation, and the
account row again for its rename, last.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import (
    Attachment,
    Ban,
    Block,
    Conversation,
    ConversationKind,
    Device,
    EventKind,
    InboxEntry,
    InboxHead,
    Invite,
    Member,
    Mention,
    Message,
    PushRegistration,
    Reaction,
    ReceiptWatermark,
    SentKey,
    UploadState,
    User,
)
from models.columns import utcnow
from resolvers import auth_limits, file_store, webhooks
from resolvers.accounts import MAX_PASSWORD, Viewer, announce_revoked
from resolvers.batches import chunks
from resolvers.conversations import Change, announce, member_ids, pass_ownership
from resolvers.device_lists import DeviceChange, append_device_changes, device_audiences
from resolvers.errors import NotFound, Unauthenticated
from resolvers.file_retention import DELETE_BATCH
from resolvers.inbox import Appended
from resolvers.publish import commit_then_publish
from resolvers.services import Services

log = logging.getLogger("parley.account_deletion")

DELETED_DISPLAY_NAME = "Deleted account"
# Not an argon2 hash: verifying any password against it is False (infra/passwords.py).
UNUSABLE_PASSWORD_HASH = "!deleted"  # noqa: S105 - a marker that is no hash
# Pending payload entries rewritten per round trip.
_SCRUB_PAGE = 500
_NAMED_KINDS = (EventKind.RECEIPT, EventKind.EDIT, EventKind.DELETE, EventKind.REACTION, EventKind.TO_DEVICE)


def placeholder_username(user_id: int) -> str:
    """The username a deleted account keeps: unique, and unusable (registered names have no '-')."""
    return f"deleted-{user_id}"


@dataclass
class Deletion:
    """What a deletion did: the devices revoked and the groups left (and of those, deleted as empty)."""

    devices: list[int] = field(default_factory=list)
    groups_left: int = 0
    groups_deleted: int = 0


async def delete_account(services: Services, viewer: Viewer, *, password: str) -> list[int]:
    """Deletes the viewer's account after checking its password; returns the revoked devices (all of them).

    A wrong password is `Unauthenticated`, counted and limited like changePassword's.
    """
    await auth_limits.count_password_check(services, viewer.user_id)
    async with services.db.session() as session:
        current = (
            await session.execute(
                select(col(User.password_hash)).where(col(User.id) == viewer.user_id, col(User.deleted_at).is_(None))
            )
        ).scalar_one_or_none()
    if len(password) > MAX_PASSWORD or not await services.passwords.verify(current, password):
        log.info("user %s: account deletion refused, wrong password", viewer.user_id)
        raise Unauthenticated("The password is wrong.")
    deletion = await erase_account(services, viewer.user_id, device_id=viewer.device_id)
    # Here, not in erase_account: the operator's deletion (resolvers/admin.py) emits its own.
    await webhooks.emit(services, "user.deleted", {"user_id": viewer.user_id, "at": services.clock().isoformat()})
    await auth_limits.password_check_succeeded(services, viewer.user_id)
    log.info(
        "user %s deleted their account: %d devices revoked, %d groups left (%d deleted as empty)",
        viewer.user_id,
        len(deletion.devices),
        deletion.groups_left,
        deletion.groups_deleted,
    )
    return deletion.devices


async def erase_account(services: Services, user_id: int, *, device_id: int | None = None) -> Deletion:
    """Deletes an account, with no password check (deleteAccount checks it; an operator needs none).

    `device_id`: the caller's own device, which must still exist. `NotFound` when the account
    is deleted already (or never existed).
    """
    deletion = await commit_then_publish(
        services, functools.partial(_delete, uid=user_id, device_id=device_id, now=utcnow())
    )
    await announce_revoked(services, [(revoked, user_id) for revoked in deletion.devices])
    await _delete_uploads(services, user_id)
    return deletion


async def _delete(
    session: AsyncSession, *, uid: int, device_id: int | None, now: datetime
) -> tuple[Deletion, list[Appended]]:
    old_name = await _claim(session, uid, device_id, now)
    deletion = Deletion()
    await session.execute(delete(PushRegistration).where(col(PushRegistration.user_id) == uid))
    revoked = await session.execute(delete(Device).where(col(Device.user_id) == uid).returning(col(Device.id)))
    deletion.devices = [device_id for (device_id,) in revoked.all() if device_id is not None]
    # Read while the account is still a member; appended once its memberships ended (their locks come first).
    audiences = await device_audiences(session, [uid])
    appended = await _end_memberships(session, uid, deletion)
    appended += await append_device_changes(
        session,
        [DeviceChange(uid, device_id, added=False) for device_id in deletion.devices],
        exclude=[uid],
        audiences=audiences,
    )
    await _delete_pending_messages(session, uid)
    await session.execute(delete(InboxEntry).where(col(InboxEntry.user_id) == uid))
    # No head: nothing can be appended for the account any more (sends and receipts skip it).
    await session.execute(delete(InboxHead).where(col(InboxHead.user_id) == uid))
    await _scrub_payloads(session, uid, old_name)
    # The rename changes a unique column, so it waits for every transaction still inserting a row
    # that refers to the account (an upload, a block): the deletes below see those rows.
    await session.execute(
        update(User)
        .where(col(User.id) == uid)
        .values(
            username=placeholder_username(uid),
            display_name=DELETED_DISPLAY_NAME,
            display_name_key="",
            password_hash=UNUSABLE_PASSWORD_HASH,
            hide_last_seen=False,
            hide_read_receipts=False,
            push_mentions_when_muted=True,
        )
        .execution_options(synchronize_session=False)
    )
    for statement in (
        delete(ReceiptWatermark).where(
            or_(col(ReceiptWatermark.reader_id) == uid, col(ReceiptWatermark.sender_id) == uid)
        ),
        delete(Block).where(or_(col(Block.blocker_id) == uid, col(Block.blocked_id) == uid)),
        delete(Reaction).where(col(Reaction.user_id) == uid),
        delete(SentKey).where(col(SentKey.sender_id) == uid),
        delete(Mention).where(col(Mention.user_id) == uid),
        delete(Invite).where(col(Invite.created_by) == uid),
        delete(Ban).where(col(Ban.user_id) == uid),
        # Their objects go after the commit (`_delete_uploads`), else with the retention sweep.
        update(Attachment)
        .where(col(Attachment.uploader_id) == uid)
        .values(state=UploadState.DELETING, filename="deleted"),
    ):
        await session.execute(statement.execution_options(synchronize_session=False))
    return deletion, appended


async def _claim(session: AsyncSession, uid: int, device_id: int | None, now: datetime) -> str:
    """Marks the account deleted, as the transaction's first lock; returns its username.

    A row lock that leaves foreign keys alone (sends to the account's conversations go on), but
    that the share locks of `login` and of adding users to conversations wait for: after the
    commit they see the account deleted, and whatever they did before is seen here.
    """
    old_name = (
        await session.execute(select(col(User.username)).where(col(User.id) == uid, col(User.deleted_at).is_(None)))
    ).scalar_one_or_none()
    if device_id is None:  # an operator's deletion: no device of theirs to check
        if old_name is None:
            raise NotFound("No such account (or it is deleted already).")
    elif (
        old_name is None
        or (
            await session.execute(select(col(Device.id)).where(col(Device.id) == device_id, col(Device.user_id) == uid))
        ).scalar_one_or_none()
        is None
    ):
        raise Unauthenticated("This token is not valid (logged out or expired).")
    claimed = await session.execute(
        update(User)
        .where(col(User.id) == uid, col(User.deleted_at).is_(None))
        .values(deleted_at=now)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        raise Unauthenticated("This account is already deleted.")
    return old_name


async def _end_memberships(session: AsyncSession, uid: int, deletion: Deletion) -> list[Appended]:
    """Leaves every group (handing ownership on, deleting it when empty); announces it to those left."""
    conversation_ids = list(
        (
            await session.execute(
                select(col(Member.conversation_id))
                .where(col(Member.user_id) == uid)
                .order_by(col(Member.conversation_id))
            )
        ).scalars()
    )
    for chunk in chunks(conversation_ids):
        await session.execute(
            select(col(Conversation.id))
            .where(col(Conversation.id).in_(chunk))
            .order_by(col(Conversation.id))
            .with_for_update(key_share=True)
        )
    # Read again under the locks: a removal may have committed while they were taken.
    rows = (
        await session.execute(
            select(Member, col(Conversation.kind))
            .join(Conversation, col(Conversation.id) == col(Member.conversation_id))
            .where(col(Member.user_id) == uid)
            .order_by(col(Member.conversation_id))
        )
    ).all()
    left: list[tuple[int, int | None]] = []
    for member, kind in rows:
        if kind is ConversationKind.DIRECT:
            await _leave_direct(session, member)
            continue
        await session.delete(member)
        await session.flush()
        heir = await pass_ownership(session, member.conversation_id)
        deletion.groups_left += 1
        if not await member_ids(session, member.conversation_id):
            await session.execute(delete(Conversation).where(col(Conversation.id) == member.conversation_id))
            deletion.groups_deleted += 1
            continue
        left.append((member.conversation_id, heir.user_id if heir is not None else None))
    await _lock_heads(session, [other for cid, _ in left for other in await member_ids(session, cid)])
    appended: list[Appended] = []
    for conversation_id, heir_id in left:
        appended += await announce(session, conversation_id, Change.LEFT, actor_id=uid, users=[uid])
        if heir_id is not None:
            appended += await announce(session, conversation_id, Change.ROLE_CHANGED, actor_id=uid, users=[heir_id])
    return appended


async def _leave_direct(session: AsyncSession, member: Member) -> None:
    """Keeps a direct conversation for the other person, or deletes it when the other account is deleted too.

    The member row is deleted and stored again (same role, joining time and engagement) rather than
    updated: a send, edit or read of the user's still in flight waits for the deletion and then finds
    its row gone (a new row is not the one it waited for), as in a group; and none of the user's own
    state here (mute, archive, pin, counters) survives.
    """
    others = [uid for uid in await member_ids(session, member.conversation_id) if uid != member.user_id]
    live = (
        await session.execute(select(col(User.id)).where(col(User.id).in_(others), col(User.deleted_at).is_(None)))
    ).first()
    if live is None:
        await session.execute(delete(Conversation).where(col(Conversation.id) == member.conversation_id))
        return
    kept = Member(
        conversation_id=member.conversation_id,
        user_id=member.user_id,
        role=member.role,
        joined_at=member.joined_at,
        engaged=member.engaged,
    )
    await session.delete(member)
    await session.flush()
    session.add(kept)
    await session.flush()


async def _lock_heads(session: AsyncSession, user_ids: Sequence[int]) -> None:
    """Locks these inbox heads in user id order, once for all the announcements that follow."""
    for chunk in chunks(sorted(set(user_ids))):
        await session.execute(
            select(col(InboxHead.user_id))
            .where(col(InboxHead.user_id).in_(chunk))
            .order_by(col(InboxHead.user_id))
            .with_for_update()
        )


async def _delete_pending_messages(session: AsyncSession, uid: int) -> None:
    """Deletes the user's messages still pending anywhere, with their inbox entries (their bodies go at once)."""
    message_ids = list((await session.execute(select(col(Message.id)).where(col(Message.sender_id) == uid))).scalars())
    for chunk in chunks([mid for mid in message_ids if mid is not None]):
        await session.execute(
            delete(InboxEntry).where(col(InboxEntry.message_id).in_(chunk)).execution_options(synchronize_session=False)
        )
        await session.execute(
            delete(Message).where(col(Message.id).in_(chunk)).execution_options(synchronize_session=False)
        )


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _scrub_payloads(session: AsyncSession, uid: int, old_name: str) -> None:
    """Rewrites the names in others' pending receipts, deletes and reactions by the user; drops their edits and to-device messages.

    Such payloads hold the username and display name together, so the username (quoted as JSON
    writes it) finds them all; the id in each is checked before anything changes.
    """
    pattern = f'%"{_like_literal(old_name)}"%'
    after = (0, 0)
    while True:
        rows = (
            await session.execute(
                select(col(InboxEntry.user_id), col(InboxEntry.seq), col(InboxEntry.kind), col(InboxEntry.payload))
                .where(
                    col(InboxEntry.kind).in_(_NAMED_KINDS),
                    col(InboxEntry.payload).like(pattern, escape="\\"),
                    tuple_(col(InboxEntry.user_id), col(InboxEntry.seq)) > tuple_(*after),
                )
                .order_by(col(InboxEntry.user_id), col(InboxEntry.seq))
                .limit(_SCRUB_PAGE)
            )
        ).all()
        for user_id, seq, kind, payload in rows:
            await _scrub_entry(session, uid, (user_id, seq, EventKind(kind)), payload or "{}")
        if len(rows) < _SCRUB_PAGE:
            return
        after = (rows[-1][0], rows[-1][1])


async def _scrub_entry(session: AsyncSession, uid: int, entry: tuple[int, int, EventKind], payload: str) -> None:
    user_id, seq, kind = entry
    data: dict[str, Any] = json.loads(payload)
    where = (col(InboxEntry.user_id) == user_id, col(InboxEntry.seq) == seq)
    if kind is EventKind.TO_DEVICE:
        # Sent by one of the user's devices, which are gone: nothing can answer it, and it names them.
        if int(data.get("sender_id", 0)) == uid:
            await session.execute(delete(InboxEntry).where(*where).execution_options(synchronize_session=False))
        return
    if kind is EventKind.RECEIPT:
        if int(data.get("reader_id", 0)) != uid:
            return
        data["reader_username"] = placeholder_username(uid)
        data["reader_display_name"] = DELETED_DISPLAY_NAME
    else:
        if int(data.get("u", 0)) != uid:
            return
        if kind is EventKind.EDIT:
            # The new text of one of their messages: pending message content, which goes.
            await session.execute(delete(InboxEntry).where(*where).execution_options(synchronize_session=False))
            return
        data["un"] = placeholder_username(uid)
        data["ud"] = DELETED_DISPLAY_NAME
    # Key order kept: lifecycle payloads must start with the message id (resolvers/lifecycle.py).
    text = json.dumps(data, separators=(",", ":"))
    await session.execute(
        update(InboxEntry).where(*where).values(payload=text).execution_options(synchronize_session=False)
    )


async def _delete_uploads(services: Services, uid: int) -> None:
    """Deletes the stored objects of the user's uploads, then their records; what fails is left to the sweep."""
    files = services.files
    if files is None:
        return
    try:
        while True:
            async with services.db.session() as session:
                rows = await file_store.being_deleted(session, limit=DELETE_BATCH, uploader_id=uid)
            if not rows:
                return
            await files.delete([key for _, keys in rows for key in keys])
            ids = [upload_id for upload_id, _ in rows]
            await services.db.transaction(functools.partial(file_store.forget, ids=ids))
            if len(rows) < DELETE_BATCH:
                return
    except Exception:
        log.warning("user %s: uploads left for the retention sweep to delete", uid, exc_info=True)
