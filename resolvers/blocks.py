"""Blocking: a user refuses contact from another, without the other being told.

A blocked user cannot start a direct conversation with the blocker, nor add them
to a group (`FORBIDDEN`, worded so it does not say who blocked whom). In an
existing direct conversation, what the blocked user sends and types no longer
reaches the blocker: the send succeeds and the message stays SENT, never
DELIVERED, as it would to a phone that is switched off. Groups are unaffected:
both still see each other's messages in a group they share (leave it, or have
an admin remove the other). Blocking is one-way and private: nobody but the
blocker can list it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from models import Block, User
from models.columns import utcnow
from resolvers.accounts import Viewer
from resolvers.errors import BadUserInput, Forbidden, NotFound
from resolvers.services import Services

log = logging.getLogger("parley.blocks")

MAX_BLOCKS_LISTED = 1000


async def blockers_among(session: AsyncSession, user_id: int, candidates: Sequence[int]) -> list[int]:
    """Those of `candidates` who have blocked `user_id`."""
    if not candidates:
        return []
    return list(
        (
            await session.execute(
                select(col(Block.blocker_id)).where(
                    col(Block.blocked_id) == user_id, col(Block.blocker_id).in_(list(candidates))
                )
            )
        ).scalars()
    )


async def refuse_if_blocked(session: AsyncSession, actor_id: int, user_ids: Sequence[int]) -> None:
    """`Forbidden` when any of `user_ids` has blocked the actor (without naming who)."""
    if await blockers_among(session, actor_id, [uid for uid in user_ids if uid != actor_id]):
        raise Forbidden("You cannot start a conversation with, or add, one of these users.")


async def block_user(services: Services, viewer: Viewer, *, user_id: int) -> None:
    """The viewer blocks `user_id`; blocking again changes nothing."""
    if user_id == viewer.user_id:
        raise BadUserInput("You cannot block yourself.")
    try:
        async with services.db.session() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"No such user: {user_id}.")
            if await session.get(Block, (viewer.user_id, user_id)) is not None:
                return
            session.add(Block(blocker_id=viewer.user_id, blocked_id=user_id, created_at=utcnow()))
            await session.commit()
    except IntegrityError:
        # The same block raced itself, or the user was deleted meanwhile: either way nothing to add.
        return
    log.info("user %s blocked user %s", viewer.user_id, user_id)


async def unblock_user(services: Services, viewer: Viewer, *, user_id: int) -> None:
    """The viewer unblocks `user_id`; what was sent meanwhile stays undelivered."""
    async with services.db.session() as session:
        await session.execute(
            delete(Block).where(col(Block.blocker_id) == viewer.user_id, col(Block.blocked_id) == user_id)
        )
        await session.commit()


async def blocked_users(services: Services, viewer: Viewer) -> list[User]:
    """The users the viewer has blocked, most recent first."""
    async with services.db.session() as session:
        rows = await session.execute(
            select(User)
            .join(Block, col(Block.blocked_id) == col(User.id))
            .where(col(Block.blocker_id) == viewer.user_id)
            .order_by(col(Block.created_at).desc(), col(User.id))
            .limit(MAX_BLOCKS_LISTED)
        )
        return list(rows.scalars())
