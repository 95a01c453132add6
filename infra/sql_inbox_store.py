"""The hot path's storage through SQLAlchemy: what the embedded mode (SQLite) runs.

It does in several statements, inside one transaction, what `infra/pg_inbox_store.py`
does in one statement on PostgreSQL; both satisfy `InboxStore` and the same
API tests run against each. SQLite serializes writers: a send writes first, so
that its membership check holds until it commits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import (
    Conversation,
    ConversationKind,
    Device,
    EventKind,
    InboxEntry,
    InboxHead,
    Member,
    Message,
    PushRegistration,
    SentKey,
    User,
)
from resolvers import encryption
from resolvers.blocks import blockers_among
from resolvers.file_store import claim_uploads
from resolvers.ids import MessageRef
from resolvers.inbox import append_events, delete_orphaned_messages, prune_inbox, read_entries
from resolvers.moderation import paced, refusal_of
from resolvers.ports import Database
from resolvers.records import AckOutcome, AttachmentClaim, EarlierSend, SendOutcome, StoredEntry, StoredMessage
from resolvers.unread import count_sent, members_among, store_mentions
from resolvers.watermarks import advance_watermarks


class _NotAttachable(Exception):
    """An attachment of a send could not be claimed: the transaction rolls back."""


async def _is_direct(session: AsyncSession, conversation_id: int) -> bool:
    kind = await session.scalar(select(col(Conversation.kind)).where(col(Conversation.id) == conversation_id))
    return kind is ConversationKind.DIRECT


class SqlInboxStore:
    """`InboxStore` on SQLAlchemy sessions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def device_for_token(
        self, token_hash: str, *, now: datetime, touch_before: datetime
    ) -> tuple[int, int] | None:
        """The (device, user) a token names, recording activity at most once per interval."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(col(Device.id), col(Device.user_id), col(Device.last_active_at))
                    .join(User, col(User.id) == col(Device.user_id))
                    # A suspended (or deleted) account's devices stay, but their tokens are refused.
                    .where(
                        col(Device.token_hash) == token_hash,
                        col(User.suspended_at).is_(None),
                        col(User.deleted_at).is_(None),
                    )
                )
            ).one_or_none()
            if row is None:
                return None
            device_id, user_id, last_active = row
            assert device_id is not None  # a primary key read back
            if last_active < touch_before:
                await session.execute(update(Device).where(col(Device.id) == device_id).values(last_active_at=now))
                await session.commit()
        return device_id, user_id

    async def send(
        self,
        *,
        sender_id: int,
        device_id: int,
        conversation_id: int,
        client_id: str,
        body: str | None,
        sent_at: datetime,
        attachments: AttachmentClaim | None = None,
        reply_to: tuple[int, int] | None = None,
        mentions: Sequence[int] = (),
        ciphertext: str | None = None,
    ) -> SendOutcome:
        """Stores the message, its idempotency key and one inbox entry per recipient, in one transaction."""

        async def work(session: AsyncSession) -> SendOutcome:
            # A write first, to the conversation row (the lock order of every path): on SQLite it
            # takes the write lock, so the checks below read the latest state and hold until commit.
            await session.execute(
                update(Conversation)
                .where(col(Conversation.id) == conversation_id)
                .values(last_activity_at=col(Conversation.last_activity_at))
            )
            device = await session.get(Device, device_id)
            if device is None or device.user_id != sender_id:  # logged out since authentication
                return SendOutcome(is_member=False, message=None, device_known=False)
            member = await session.get(Member, (conversation_id, sender_id))
            if member is None:
                return SendOutcome(is_member=False, message=None)
            # The moderation rules, as the PostgreSQL statement applies them (resolvers/moderation.py).
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None  # a member's conversation exists
            refusal, refused_until = refusal_of(conversation, member, sent_at)
            wrong_kind = encryption.mismatch(conversation.encrypted, body=body, ciphertext=ciphertext)
            if wrong_kind is not None:  # first, as in the PostgreSQL statement's `verdict`
                refusal, refused_until = wrong_kind, None
            if refusal is not None:
                return SendOutcome(is_member=True, message=None, refusal=refusal, refused_until=refused_until)
            if await session.get(SentKey, (sender_id, client_id)) is not None:
                return SendOutcome(is_member=True, message=None, attachments_ok=attachments is None)
            if await members_among(session, conversation_id, mentions) != len(mentions):
                return SendOutcome(is_member=True, message=None, mentions_ok=False)
            # The timer as of this send: read after the conversation row's write above, so it holds.
            timer = await session.scalar(
                select(col(Conversation.disappear_after_seconds)).where(col(Conversation.id) == conversation_id)
            )
            message = Message(
                conversation_id=conversation_id,
                sender_id=sender_id,
                client_id=client_id,
                body=body,
                ciphertext=ciphertext,
                sent_at=sent_at,
                attachments=attachments.metadata if attachments is not None else None,
                reply_to_id=reply_to[0] if reply_to is not None else None,
                reply_to_sender_id=reply_to[1] if reply_to is not None else None,
                mentions=json.dumps(sorted(mentions)) if mentions else None,
                expires_at=sent_at + timedelta(seconds=timer) if timer is not None else None,
            )
            session.add(message)
            await session.flush()
            assert message.id is not None
            if attachments is not None and not await claim_uploads(
                session,
                attachments.ids,
                uploader_id=sender_id,
                conversation_id=conversation_id,
                message_id=message.id,
                opaque=conversation.encrypted,
            ):
                raise _NotAttachable
            session.add(
                SentKey(
                    sender_id=sender_id,
                    client_id=client_id,
                    message_id=message.id,
                    conversation_id=conversation_id,
                    sent_at=sent_at,
                )
            )
            newly_engaged = not member.engaged
            if newly_engaged:
                # From their first message here, the sender's presence shows to its members
                # (resolvers/privacy.py); written once, with the message or not at all.
                member.engaged = True
            if paced(conversation, member):
                member.last_sent_at = sent_at
            await session.flush()
            recipients = list(
                (
                    await session.execute(
                        select(col(Member.user_id)).where(col(Member.conversation_id) == conversation_id)
                    )
                ).scalars()
            )
            others = await session.scalar(
                select(func.count()).where(col(Device.user_id) == sender_id, col(Device.id) != device_id)
            )
            if not others:  # nobody else of the sender's to tell; the sending device has it
                recipients = [uid for uid in recipients if uid != sender_id]
            if await _is_direct(session, conversation_id):
                # Nothing reaches a member who blocked the sender: the message stays SENT.
                blockers = set(await blockers_among(session, sender_id, recipients))
                recipients = [uid for uid in recipients if uid not in blockers]
            # Badges, in the order of the PostgreSQL statement: member rows before inbox heads.
            await count_sent(session, conversation_id, sender_id, recipients, mentions)
            named = [uid for uid in recipients if uid != sender_id and uid in set(mentions)]
            await store_mentions(session, conversation_id, message.id, named, sent_at=sent_at)
            appended = await append_events(session, recipients, EventKind.MESSAGE, message_id=message.id, at=sent_at)
            await session.execute(
                update(Conversation).where(col(Conversation.id) == conversation_id).values(last_activity_at=sent_at)
            )
            sender = await session.get(User, sender_id)
            return SendOutcome(
                is_member=True,
                message=StoredMessage.from_model(message, sender),
                appended=[(a.user_id, a.seq) for a in appended],
                may_push=await _may_push(session, conversation_id, sender_id, recipients, named=named, now=sent_at),
                newly_engaged=newly_engaged,
            )

        try:
            return await self._db.transaction(work)
        except _NotAttachable:  # rolled back: nothing stored
            return SendOutcome(is_member=True, message=None, attachments_ok=False)
        except IntegrityError:
            # The same clientId raced itself: the other request stored it.
            return SendOutcome(is_member=True, message=None)

    async def earlier_send(self, sender_id: int, client_id: str) -> EarlierSend | None:
        """The first send with this clientId, if any."""
        async with self._db.session() as session:
            key = await session.get(SentKey, (sender_id, client_id))
            if key is None:
                return None
            message = await session.get(Message, key.message_id)
            if message is not None and message.deleted_at is not None:
                # deleted for everyone: reads as gone, so a retry does not announce it again
                return EarlierSend(key.message_id, key.conversation_id, key.sent_at, None, [])
            sender = await session.get(User, sender_id) if message is not None else None
            pending = (
                await session.execute(
                    select(col(InboxEntry.user_id), col(InboxEntry.seq))
                    .where(col(InboxEntry.message_id) == key.message_id)
                    .order_by(col(InboxEntry.user_id))
                )
            ).all()
        stored = StoredMessage.from_model(message, sender) if message is not None else None
        appended = [(int(user_id), int(seq)) for user_id, seq in pending]
        return EarlierSend(key.message_id, key.conversation_id, key.sent_at, stored, appended)

    async def acknowledge(self, *, user_id: int, device_id: int, seq: int, at: datetime) -> AckOutcome:
        """Advances the device, raises DELIVERED watermarks and prunes, in one transaction."""

        async def work(session: AsyncSession) -> AckOutcome:
            device = await session.get(Device, device_id, with_for_update=True)
            head = int(
                await session.scalar(select(col(InboxHead.last_seq)).where(col(InboxHead.user_id) == user_id)) or 0
            )
            if device is None:
                return AckOutcome(acked_before=None, head=head, receipts=[], pruned_messages=[])
            before = device.acked_seq
            if seq <= before or seq > head:
                return AckOutcome(acked_before=before, head=head, receipts=[], pruned_messages=[])
            covered = (
                await session.execute(
                    select(col(Message.conversation_id), col(Message.sender_id), func.max(col(Message.id)))
                    .join(InboxEntry, col(InboxEntry.message_id) == col(Message.id))
                    .where(
                        col(InboxEntry.user_id) == user_id,
                        col(InboxEntry.seq) > before,
                        col(InboxEntry.seq) <= seq,
                        col(Message.sender_id) != user_id,
                    )
                    .group_by(col(Message.conversation_id), col(Message.sender_id))
                )
            ).all()
            device.acked_seq = seq
            session.add(device)
            await session.flush()
            refs = [MessageRef(mid, cid, sid) for cid, sid, mid in covered if mid is not None]
            receipts = await advance_watermarks(session, user_id, refs, "DELIVERED", at=at)
            await prune_inbox(session, [user_id])
            return AckOutcome(
                acked_before=before,
                head=head,
                receipts=[(entry.user_id, entry.seq, payload) for entry, payload in receipts],
                pruned_messages=[],
            )

        return await self._db.transaction(work)

    async def delete_orphans(self, message_ids: Sequence[int]) -> int:
        """Deletes those messages no entry refers to any more."""

        async def work(session: AsyncSession) -> int:
            return await delete_orphaned_messages(session, set(message_ids))

        return await self._db.transaction(work) if message_ids else 0

    async def positions(self, device_id: int) -> tuple[int, int] | None:
        """The device's acknowledged position and its user's head; None when the device is gone."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(col(Device.acked_seq), col(InboxHead.last_seq))
                    .join(InboxHead, col(InboxHead.user_id) == col(Device.user_id))
                    .where(col(Device.id) == device_id)
                )
            ).one_or_none()
        return None if row is None else (int(row[0]), int(row[1]))

    async def read_after(self, *, user_id: int, device_id: int, after: int, limit: int) -> list[StoredEntry] | None:
        """Entries after `after`, oldest first; None when the device is gone."""
        async with self._db.session() as session:
            if await session.get(Device, device_id) is None:
                return None
            rows = await read_entries(session, user_id, after=after, limit=limit, device_id=device_id)
        return [
            StoredEntry(
                seq=entry.seq,
                kind=entry.kind.value,
                # a message deleted for everyone before delivery is never shown
                message=StoredMessage.from_model(message, sender)
                if message is not None and message.deleted_at is None
                else None,
                payload=entry.payload,
                device_id=entry.device_id,
            )
            for entry, message, sender in rows
        ]


async def _may_push(
    session: AsyncSession,
    conversation_id: int,
    sender_id: int,
    recipients: list[int],
    *,
    named: list[int],
    now: datetime,
) -> bool:
    """Whether a recipient other than the sender has a push registration and the conversation unmuted now,
    or was mentioned and wants mentions pushed even where muted."""
    others = [uid for uid in recipients if uid != sender_id]
    if not others:
        return False
    unmuted = and_(col(Member.muted).is_(False), or_(col(Member.muted_until).is_(None), col(Member.muted_until) <= now))
    if named:
        wants = select(col(User.id)).where(col(User.id).in_(named), col(User.push_mentions_when_muted).is_(True))
        unmuted = or_(unmuted, col(Member.user_id).in_(wants))
    found = await session.scalar(
        select(col(PushRegistration.device_id))
        .join(
            Member,
            and_(col(Member.user_id) == col(PushRegistration.user_id), col(Member.conversation_id) == conversation_id),
        )
        .where(col(PushRegistration.user_id).in_(others), unmuted)
        .limit(1)
    )
    return found is not None
