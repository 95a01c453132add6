"""API types of unread badges, read state across one's devices, and notification preferences."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from models import User as UserRow
from resolvers.unread import ReadPosition
from resolvers.unread import UnreadTotal as UnreadTotalRecord


@strawberry.type(
    description="Durable, in the reader's own inbox: one of their devices called markRead. `unreadCount` and "
    "`unreadMentions` are what is left unread in the conversation now (absolute values: apply the newest). "
    "Every device of the reader gets it, the one that read too, which may ignore it."
)
class ReadStateEvent:
    cursor: str
    conversation_id: strawberry.ID
    read_up_to: strawberry.ID | None = strawberry.field(
        description="The newest message read there (every earlier one is read too); null when unknown."
    )
    unread_count: int
    unread_mentions: int
    at: datetime

    @classmethod
    def of(cls, cursor: str, position: ReadPosition, at: datetime, info: Info) -> ReadStateEvent:
        """The API event of a stored read state."""
        ref = position.read_upto
        return cls(
            cursor=cursor,
            conversation_id=strawberry.ID(str(position.conversation_id)),
            read_up_to=strawberry.ID(info.context.ids.encode(ref)) if ref is not None else None,
            unread_count=position.unread_count,
            unread_mentions=position.unread_mentions,
            at=at,
        )


@strawberry.type(
    description="The viewer's badge. `conversations` and `messages` count unread messages in conversations that "
    "are not muted now; muted ones are counted apart, so a badge can leave them out. `mentions` counts unread "
    "mentions of the viewer in every conversation, muted or not."
)
class UnreadTotal:
    conversations: int
    messages: int
    mentions: int
    muted_conversations: int
    muted_messages: int

    @classmethod
    def of(cls, total: UnreadTotalRecord) -> UnreadTotal:
        """The API object of the viewer's totals."""
        return cls(
            conversations=total.conversations,
            messages=total.messages,
            mentions=total.mentions,
            muted_conversations=total.muted_conversations,
            muted_messages=total.muted_messages,
        )


@strawberry.type(description="The viewer's notification preferences (setNotificationPreferences).")
class NotificationPreferences:
    push_mentions_when_muted: bool = strawberry.field(
        description="A mention of you is pushed even in a conversation you muted (default true)."
    )

    @classmethod
    def of(cls, row: UserRow) -> NotificationPreferences:
        """The preferences stored on an account row."""
        return cls(push_mentions_when_muted=row.push_mentions_when_muted)
