"""Disappearing messages: the conversation timer (resolvers/disappearing.py has the rules)."""

from __future__ import annotations

import strawberry

from graph.context import Info
from graph.types import Conversation
from resolvers import disappearing
from resolvers.ids import parse_row_id


@strawberry.type
class DisappearingMutation:
    @strawberry.mutation(
        description="Sets the conversation's disappearing-message timer in seconds, or turns it off with null: "
        "messages sent from then on carry `expiresAt` (sent time plus the timer); earlier ones keep theirs. "
        "Either member of a direct conversation, an OWNER or ADMIN of a group (FORBIDDEN otherwise); outside the "
        "server's bounds BAD_USER_INPUT; changes count against an hourly limit. Members get a ConversationEvent "
        "DISAPPEARING_TIMER_CHANGED."
    )
    async def set_disappearing_timer(
        self, info: Info, conversation_id: strawberry.ID, seconds: int | None
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        header = await disappearing.set_disappearing_timer(
            info.context.services,
            viewer,
            conversation_id=parse_row_id(conversation_id, what="conversation"),
            seconds=seconds,
        )
        return Conversation.from_header(header)
