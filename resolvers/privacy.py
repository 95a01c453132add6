"""Who may see whose presence (online, last seen), and the viewer's own privacy settings.

A user's presence is visible only to people they have engaged with: those who share
a conversation in which the user has sent a message or that the user created
(`Member.engaged`). Walking sequential user ids tells a stranger nothing, and neither
does adding someone to a group or starting a direct conversation with them: that
needs no consent. Among those people, a user who set `hide_last_seen` shows no
last-seen time to anyone (their online status stays visible, as in WhatsApp). A
user who blocked the viewer shows the viewer nothing. The viewer always sees their
own presence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import aliased
from sqlmodel import col

from models import Block, Member, User
from resolvers.accounts import Viewer, update_own_account
from resolvers.batches import chunks
from resolvers.errors import BadUserInput
from resolvers.services import Services


@dataclass(frozen=True, slots=True)
class PresenceVisibility:
    """What the viewer may see of one user's presence, and whether they share a conversation (any)."""

    online: bool
    last_seen: bool
    shares: bool


SELF = PresenceVisibility(online=True, last_seen=True, shares=True)
HIDDEN = PresenceVisibility(online=False, last_seen=False, shares=False)


async def presence_visibility(
    services: Services, viewer_id: int, user_ids: Sequence[int]
) -> dict[int, PresenceVisibility]:
    """What the viewer may see of each user's presence: one statement per chunk of ids.

    Unknown ids are absent (the caller shows them as hidden).
    """
    result: dict[int, PresenceVisibility] = {}
    others = [uid for uid in dict.fromkeys(user_ids) if uid != viewer_id]
    if viewer_id in user_ids:
        result[viewer_id] = SELF
    if not others:
        return result
    mine = aliased(Member)
    theirs = aliased(Member)
    shared = (
        col(mine.user_id) == viewer_id,
        col(theirs.conversation_id) == col(mine.conversation_id),
        col(theirs.user_id) == col(User.id),
    )
    shares = exists().where(*shared)
    engaged = exists().where(*shared, col(theirs.engaged))
    blocked_viewer = exists().where(and_(col(Block.blocker_id) == col(User.id), col(Block.blocked_id) == viewer_id))
    async with services.db.session() as session:
        for chunk in chunks(others):
            rows = await session.execute(
                select(
                    col(User.id),
                    col(User.hide_last_seen),
                    shares.label("shares"),
                    engaged.label("engaged"),
                    blocked_viewer.label("blocked"),
                ).where(col(User.id).in_(chunk))
            )
            for user_id, hide_last_seen, share, engaged_with_viewer, blocked in rows:
                assert user_id is not None
                visible = bool(engaged_with_viewer) and not blocked
                result[user_id] = PresenceVisibility(
                    online=visible, last_seen=visible and not hide_last_seen, shares=bool(share)
                )
    return result


async def set_privacy(
    services: Services, viewer: Viewer, *, hide_last_seen: bool | None = None, read_receipts: bool | None = None
) -> User:
    """Stores the viewer's privacy settings given (None leaves one as it is); returns their account.

    Takes effect on the next read, or for read receipts on the next `markRead`
    (resolvers/read_privacy.py). Neither given is `BadUserInput`.
    """
    values: dict[str, bool] = {}
    if hide_last_seen is not None:
        values["hide_last_seen"] = hide_last_seen
    if read_receipts is not None:
        values["hide_read_receipts"] = not read_receipts
    if not values:
        raise BadUserInput("Give hideLastSeen, readReceipts or both.")
    return await update_own_account(services, viewer, **values)
