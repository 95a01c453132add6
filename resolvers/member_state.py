"""One member's own view of a conversation: unread badges, mute (for good or until a time), archive, pin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from models import Member


def muted_now(muted: bool, muted_until: datetime | None, now: datetime) -> bool:
    """Whether notifications are muted at `now`: for good, or until a time not yet reached (it ends by itself)."""
    return muted or (muted_until is not None and muted_until > now)


@dataclass(frozen=True, slots=True)
class MemberState:
    """What `Conversation` shows the viewer of their own membership (defaults: not a member)."""

    unread_count: int = 0
    unread_mentions: int = 0
    muted: bool = False
    muted_until: datetime | None = None
    archived: bool = False
    pinned: bool = False

    @classmethod
    def of(cls, member: Member | None, now: datetime) -> MemberState:
        """The state of a member row as of `now` (a mute until a past time reads as unmuted)."""
        if member is None:
            return cls()
        until = member.muted_until if member.muted_until is not None and member.muted_until > now else None
        return cls(
            unread_count=member.unread_count,
            unread_mentions=member.unread_mentions,
            muted=muted_now(member.muted, member.muted_until, now),
            muted_until=until,
            archived=member.archived,
            pinned=member.pinned_at is not None,
        )
