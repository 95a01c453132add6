"""Periodic clean-up: expire idle devices, and drop what nobody can receive any more."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Device, InboxEntry, Invite, Mention, Message, Reaction, SentKey
from resolvers.accounts import announce_revoked
from resolvers.device_lists import DeviceChange, append_device_changes, publish_device_changes
from resolvers.inbox import Appended, delete_orphans_after_commit, prune_inbox
from resolvers.invites import ENDED_LISTED_SECONDS
from resolvers.services import Services

log = logging.getLogger("parley.maintenance")

# Idempotency records outlive their messages this long: longer than any client retries.
SENT_KEY_RETENTION = timedelta(days=7)
# A message is stored with its inbox entries in one transaction; this only keeps the sweep
# clear of clocks that disagree between processes.
ORPHAN_GRACE = timedelta(minutes=1)


@dataclass(frozen=True)
class SweepResult:
    devices: int
    entries: int
    messages: int


async def sweep(services: Services, *, now: datetime) -> SweepResult:
    """Expires devices idle past the limit with their pending events (the API promises it).

    Entries of a user left with no device at all are dropped once older than the
    same limit, so nothing is kept forever. Expired devices' sockets close on every
    process. Safe to run on every process at once.
    """
    cutoff = now - timedelta(days=services.limits.device_inactivity_days)
    revoked: list[tuple[int, int]] = []
    appended: list[Appended] = []

    async def work(session: AsyncSession) -> SweepResult:
        expired = (
            await session.execute(
                delete(Device).where(col(Device.last_active_at) < cutoff).returning(col(Device.id), col(Device.user_id))
            )
        ).all()
        revoked[:] = [(device_id, user_id) for device_id, user_id in expired if device_id is not None]
        # Messages these deletions leave unreferenced go after the commit (see prune_inbox).
        await prune_inbox(session, [user_id for _, user_id in expired])
        appended[:] = await append_device_changes(
            session, [DeviceChange(user_id, device_id, added=False) for device_id, user_id in revoked]
        )
        orphaned = (
            await session.execute(
                delete(InboxEntry)
                .where(
                    col(InboxEntry.created_at) < cutoff,
                    ~exists().where(col(Device.user_id) == col(InboxEntry.user_id)),
                )
                .returning(col(InboxEntry.message_id))
            )
        ).all()
        delete_orphans_after_commit(session, {mid for (mid,) in orphaned if mid is not None})
        # Messages nothing refers to: left by a process that died between a pruning commit and
        # its orphan check, or sent to a conversation with nobody else to deliver to.
        unreferenced = await session.execute(
            delete(Message).where(
                col(Message.sent_at) < now - ORPHAN_GRACE,
                ~exists().where(col(InboxEntry.message_id) == col(Message.id)),
            )
        )
        deleted_messages = int(unreferenced.rowcount or 0)  # type: ignore[attr-defined]
        await session.execute(delete(SentKey).where(col(SentKey.sent_at) < now - SENT_KEY_RETENTION))
        # Mentions serve markRead's recount beside the send records: they go together.
        await session.execute(delete(Mention).where(col(Mention.sent_at) < now - SENT_KEY_RETENTION))
        # Ended invite links, once `invites` no longer lists them (a link's expiry is always set).
        ended_before = now - timedelta(seconds=ENDED_LISTED_SECONDS)
        await session.execute(
            delete(Invite).where((col(Invite.revoked_at) < ended_before) | (col(Invite.expires_at) < ended_before))
        )
        # Reactions outlive their messages (clients hold those) as long as attachments do.
        reactions_before = now - timedelta(seconds=services.file_config.retention_seconds)
        await session.execute(delete(Reaction).where(col(Reaction.created_at) < reactions_before))
        return SweepResult(devices=len(expired), entries=len(orphaned), messages=deleted_messages)

    result = await services.db.transaction(work)
    await publish_device_changes(services, appended)
    # Expired like a logout: their sockets close on every process.
    await announce_revoked(services, revoked)
    if result.devices or result.messages:
        log.info(
            "sweep expired %d devices, dropped %d undeliverable entries, deleted %d messages",
            result.devices,
            result.entries,
            result.messages,
        )
    return result
