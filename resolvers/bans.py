"""Bans: a group's owners and admins bar a user from it, for a while or until unbanned.

A ban removes the user if they are a member (the usual MEMBER_REMOVED event) and keeps
them out: neither addMembers nor an invite link lets them back in until the ban ends
(`banned_among` in resolvers/conversations.py is the rule both apply). Like removing,
only an owner bans an owner. Changes run under the conversation row's lock, as every
membership change does, so a join cannot slip in beside a ban.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Ban, Member, MemberRole, User
from resolvers.accounts import Viewer
from resolvers.conversations import Change, _announce, _group, _require_manager
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.inbox import Appended
from resolvers.publish import commit_then_publish
from resolvers.services import Services

log = logging.getLogger("parley.bans")

MAX_BAN_SECONDS = 10 * 366 * 86400


async def ban_member(
    services: Services, viewer: Viewer, *, conversation_id: int, user_id: int, expires_in: int | None
) -> None:
    """Bans a user from a group (OWNER or ADMIN), removing them if present; `expires_in` None: until unbanned.

    Banning again only sets the new expiry.
    """
    if user_id == viewer.user_id:
        raise BadUserInput("You cannot ban yourself; to go, use leaveGroup.")
    if expires_in is not None and not 1 <= expires_in <= MAX_BAN_SECONDS:
        raise BadUserInput(f"expiresIn is between 1 and {MAX_BAN_SECONDS} seconds, or null.")

    async def work(session: AsyncSession) -> tuple[None, list[Appended]]:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        if await session.get(User, user_id) is None:
            raise NotFound(f"No such user: {user_id}.")
        target = await session.get(Member, (conversation_id, user_id))
        if target is not None and target.role is MemberRole.OWNER and me.role is not MemberRole.OWNER:
            raise Forbidden("Only an owner can ban an owner.")
        now = services.clock()
        expires_at = None if expires_in is None else now + timedelta(seconds=expires_in)
        ban = await session.get(Ban, (conversation_id, user_id))
        if ban is None:
            ban = Ban(conversation_id=conversation_id, user_id=user_id, created_at=now)
        ban.banned_by = viewer.user_id
        ban.expires_at = expires_at
        session.add(ban)
        if target is None:
            await session.flush()
            return None, []
        await session.delete(target)
        await session.flush()
        appended = await _announce(
            session,
            conversation_id,
            Change.MEMBER_REMOVED,
            actor_id=viewer.user_id,
            users=[user_id],
            also_notify=[user_id],
        )
        return None, appended

    await commit_then_publish(services, work)
    log.info("user %s banned user %s from group %s", viewer.user_id, user_id, conversation_id)


async def unban_member(services: Services, viewer: Viewer, *, conversation_id: int, user_id: int) -> None:
    """Ends a user's ban from a group (OWNER or ADMIN); they may then be added or join again. Idempotent."""

    async def work(session: AsyncSession) -> None:
        _, me = await _group(session, conversation_id, viewer)
        _require_manager(me)
        await session.execute(
            delete(Ban).where(col(Ban.conversation_id) == conversation_id, col(Ban.user_id) == user_id)
        )

    await services.db.transaction(work)
    log.info("user %s unbanned user %s from group %s", viewer.user_id, user_id, conversation_id)
