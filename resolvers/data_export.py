"""Exporting one's data (`exportMyData`): what the server holds about the viewer, as one JSON document.

Never a secret: no token or invite code hashes, no push tokens, endpoints or keys, no storage
keys. Messages are not in it: the server keeps only those still pending, and the viewer's
devices have them. Rows are read in pages of `PAGE` by id; the document's size is bounded
by what one user can have (a group's member cap, the hourly limits on conversations, invites
and uploads, device expiry) and calls are limited per user and hour (`data_exports_per_hour`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import (
    Attachment,
    Ban,
    Block,
    Conversation,
    Device,
    InboxEntry,
    Invite,
    Member,
    Message,
    PushRegistration,
    UploadState,
    User,
)
from models.moderation import Report
from resolvers.accounts import Viewer
from resolvers.errors import Unauthenticated
from resolvers.rate_limits import spend
from resolvers.services import Services

log = logging.getLogger("parley.data_export")

FORMAT = "parley-export-1"
PAGE = 500
HOUR = 3600

Row = dict[str, Any]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def export_my_data(services: Services, viewer: Viewer) -> str:
    """The viewer's data as a JSON document (see the module docstring); limited per user and hour."""
    limit = services.limits.data_exports_per_hour
    await spend(
        services,
        f"data-exports:{viewer.user_id}",
        limit=limit,
        window_seconds=HOUR,
        refusal=f"At most {limit} data exports an hour; try again later.",
    )
    async with services.db.session() as session:
        user = await session.get(User, viewer.user_id)
        if user is None or user.deleted_at is not None:
            raise Unauthenticated("This token is not valid (logged out or expired).")
        devices = await _devices(session, viewer)
        if not any(device["id"] == str(viewer.device_id) for device in devices):
            raise Unauthenticated("This token is not valid (logged out or expired).")
        document = {
            "format": FORMAT,
            "profile": _profile(user),
            "devices": devices,
            "pushRegistrations": await _paged(session, _push_page(viewer.user_id)),
            "conversations": await _paged(session, _conversation_page(viewer.user_id)),
            "blocks": await _paged(session, _block_page(viewer.user_id)),
            "invitesCreated": await _paged(session, _invite_page(viewer.user_id)),
            "bans": await _paged(session, _ban_page(viewer.user_id)),
            "uploads": await _paged(session, _upload_page(viewer.user_id)),
            "reportsFiled": await _paged(session, _report_page(viewer.user_id)),
            "pending": {
                "messagesSent": await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(col(Message.sender_id) == viewer.user_id, col(Message.deleted_at).is_(None))
                )
                or 0,
            },
        }
    log.info("user %s exported their data", viewer.user_id)
    return json.dumps(document, separators=(",", ":"))


def _profile(user: User) -> Row:
    return {
        "id": str(user.id),
        "username": user.username,
        "displayName": user.display_name,
        "createdAt": _time(user.created_at),
        "privacy": {"hideLastSeen": user.hide_last_seen, "readReceipts": not user.hide_read_receipts},
        "notifications": {"pushMentionsWhenMuted": user.push_mentions_when_muted},
    }


async def _devices(session: AsyncSession, viewer: Viewer) -> list[Row]:
    """The viewer's devices, each with its count of pending events (never the token hash)."""
    pending = func.count(col(InboxEntry.seq))
    query = (
        select(Device, pending)
        .outerjoin(
            InboxEntry,
            and_(col(InboxEntry.user_id) == col(Device.user_id), col(InboxEntry.seq) > col(Device.acked_seq)),
        )
        .where(col(Device.user_id) == viewer.user_id)
        .group_by(col(Device.id))
    )

    async def read(after: int) -> list[tuple[int, Row]]:
        rows = (await session.execute(query.where(col(Device.id) > after).order_by(col(Device.id)).limit(PAGE))).all()
        return [
            (
                device.id or 0,
                {
                    "id": str(device.id),
                    "name": device.name,
                    "createdAt": _time(device.created_at),
                    "lastActiveAt": _time(device.last_active_at),
                    "current": device.id == viewer.device_id,
                    "pendingEvents": int(count),
                },
            )
            for device, count in rows
        ]

    return await _collect(read)


PageReader = Callable[[AsyncSession, int], Awaitable[list[tuple[int, Row]]]]


async def _paged(session: AsyncSession, reader: PageReader) -> list[Row]:
    async def read(after: int) -> list[tuple[int, Row]]:
        return await reader(session, after)

    return await _collect(read)


async def _collect(read: Callable[[int], Awaitable[list[tuple[int, Row]]]]) -> list[Row]:
    """Every row, page by page: `read(after)` returns up to PAGE (key, row) pairs with keys above `after`."""
    rows: list[Row] = []
    after = 0
    while True:
        page = await read(after)
        rows += [row for _, row in page]
        if len(page) < PAGE:
            return rows
        after = page[-1][0]


def _push_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(col(PushRegistration.device_id), col(PushRegistration.platform), col(PushRegistration.created_at))
            .where(col(PushRegistration.user_id) == user_id, col(PushRegistration.device_id) > after)
            .order_by(col(PushRegistration.device_id))
            .limit(PAGE)
        )
        return [
            (device_id, {"deviceId": str(device_id), "platform": str(platform), "createdAt": _time(created)})
            for device_id, platform, created in rows
        ]

    return read


def _conversation_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(Member, Conversation)
            .join(Conversation, col(Conversation.id) == col(Member.conversation_id))
            .where(col(Member.user_id) == user_id, col(Member.conversation_id) > after)
            .order_by(col(Member.conversation_id))
            .limit(PAGE)
        )
        return [
            (
                member.conversation_id,
                {
                    "id": str(member.conversation_id),
                    "kind": str(conversation.kind),
                    "title": conversation.title,
                    "createdAt": _time(conversation.created_at),
                    "lastActivityAt": _time(conversation.last_activity_at),
                    "disappearAfterSeconds": conversation.disappear_after_seconds,
                    "role": str(member.role),
                    "joinedAt": _time(member.joined_at),
                    "muted": member.muted,
                    "mutedUntil": _time(member.muted_until),
                    "archived": member.archived,
                    "pinnedAt": _time(member.pinned_at),
                    "unreadCount": member.unread_count,
                    "unreadMentions": member.unread_mentions,
                },
            )
            for member, conversation in rows
        ]

    return read


def _block_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(col(Block.blocked_id), col(User.username), col(Block.created_at))
            .join(User, col(User.id) == col(Block.blocked_id))
            .where(col(Block.blocker_id) == user_id, col(Block.blocked_id) > after)
            .order_by(col(Block.blocked_id))
            .limit(PAGE)
        )
        return [
            (blocked, {"userId": str(blocked), "username": username, "blockedAt": _time(created)})
            for blocked, username, created in rows
        ]

    return read


def _invite_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(Invite)
            .where(col(Invite.created_by) == user_id, col(Invite.id) > after)
            .order_by(col(Invite.id))
            .limit(PAGE)
        )
        return [
            (
                invite.id or 0,
                {
                    "id": str(invite.id),
                    "conversationId": str(invite.conversation_id),
                    "createdAt": _time(invite.created_at),
                    "expiresAt": _time(invite.expires_at),
                    "maxUses": invite.max_uses,
                    "uses": invite.uses,
                    "revokedAt": _time(invite.revoked_at),
                },
            )
            for invite in rows.scalars()
        ]

    return read


def _ban_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(col(Ban.conversation_id), col(Ban.created_at), col(Ban.expires_at))
            .where(col(Ban.user_id) == user_id, col(Ban.conversation_id) > after)
            .order_by(col(Ban.conversation_id))
            .limit(PAGE)
        )
        return [
            (cid, {"conversationId": str(cid), "since": _time(since), "until": _time(until)})
            for cid, since, until in rows
        ]

    return read


def _upload_page(user_id: int) -> PageReader:
    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(Attachment)
            .where(
                col(Attachment.uploader_id) == user_id,
                col(Attachment.state) != UploadState.DELETING,
                col(Attachment.id) > after,
            )
            .order_by(col(Attachment.id))
            .limit(PAGE)
        )
        return [
            (
                upload.id or 0,
                {
                    "id": str(upload.id),
                    "filename": upload.filename,
                    "contentType": upload.content_type,
                    "size": upload.size if upload.size is not None else upload.declared_size,
                    "createdAt": _time(upload.created_at),
                    "conversationId": str(upload.conversation_id) if upload.conversation_id is not None else None,
                    "attached": upload.message_id is not None,
                },
            )
            for upload in rows.scalars()
        ]

    return read


def _report_page(user_id: int) -> PageReader:
    """Reports the user filed (never those about them: reporting is not revealed); not the operator's notes."""

    async def read(session: AsyncSession, after: int) -> list[tuple[int, Row]]:
        rows = await session.execute(
            select(Report)
            .where(col(Report.reporter_id) == user_id, col(Report.id) > after)
            .order_by(col(Report.id))
            .limit(PAGE)
        )
        return [
            (
                row.id or 0,
                {
                    "id": str(row.id),
                    "kind": row.kind,
                    "reason": row.reason,
                    "reportedUserId": str(row.reported_user_id),
                    "conversationId": str(row.conversation_id) if row.conversation_id is not None else None,
                    "excerpt": row.excerpt,
                    "createdAt": _time(row.created_at),
                    "resolvedAt": _time(row.resolved_at),
                },
            )
            for row in rows.scalars()
        ]

    return read
