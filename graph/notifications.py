"""Notification preferences: what the viewer is pushed (read back as `me { notificationPreferences }`)."""

from __future__ import annotations

import strawberry

from graph.context import Info
from graph.unread_types import NotificationPreferences
from resolvers import conversation_state


@strawberry.type
class NotificationMutation:
    @strawberry.mutation(
        description="Whether a mention of you is pushed even in a conversation you muted (on by default). "
        "Counts against an hourly limit of settings changes (RATE_LIMITED)."
    )
    async def set_notification_preferences(self, info: Info, push_mentions_when_muted: bool) -> NotificationPreferences:
        viewer = await info.context.require_viewer()
        row = await conversation_state.set_notification_preferences(
            info.context.services, viewer, push_mentions_when_muted=push_mentions_when_muted
        )
        return NotificationPreferences.of(row)
