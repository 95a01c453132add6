"""Reports: reportMessage, reportUser, and the ReportEvent a group's owners and admins get."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import Conversation, EventType, User, event_from_view, load_user
from models import ConversationKind as ConversationKindModel
from models.moderation import ReportKind as ReportKindModel
from resolvers import reports
from resolvers.events import Event as EventView
from resolvers.ids import parse_row_id
from resolvers.reports import ReportEventView

ReportReason = strawberry.enum(reports.ReportReason, name="ReportReason")
ReportKind = strawberry.enum(ReportKindModel, name="ReportKind")


@strawberry.type(description="A report, as a group's owners and admins see it (ReportEvent).")
class Report:
    id: strawberry.ID
    kind: ReportKind  # type: ignore[valid-type]
    reason: ReportReason  # type: ignore[valid-type]
    excerpt: str | None = strawberry.field(
        description="The reported text as the reporter's app showed it (the server keeps no delivered message): "
        "what the reporter says it was, not a copy the server vouches for."
    )
    created_at: datetime
    message_id: strawberry.ID | None = strawberry.field(description="The reported message; null for a user report.")
    reporter_id: strawberry.Private[int]
    reported_user_id: strawberry.Private[int]
    conversation_id: strawberry.Private[int | None]

    @strawberry.field
    async def reporter(self, info: Info) -> User:
        return await load_user(info, self.reporter_id)

    @strawberry.field(description="Who the report is about: the message's sender, or the user reported.")
    async def reported_user(self, info: Info) -> User:
        return await load_user(info, self.reported_user_id)

    @strawberry.field(description="Where the reported message was sent; null for a user report.")
    async def conversation(self, info: Info) -> Conversation | None:
        if self.conversation_id is None:
            return None
        header = await info.context.loaders(info).conversations.load(self.conversation_id)
        if header is None:  # deleted since: show what the event knew
            return Conversation(
                id=strawberry.ID(str(self.conversation_id)),
                kind=ConversationKindModel.GROUP,
                title=None,
                created_at=self.created_at,
                muted=False,
                members_visible=False,
            )
        return Conversation.from_header(header)


@strawberry.type(
    description="Durable, for a group's owners and admins: a member reported a message there. Never sent to the "
    "reporter or to the reported user (even when they administer the group)."
)
class ReportEvent:
    cursor: str
    report: Report

    @classmethod
    def of(cls, view: ReportEventView, info: Info) -> ReportEvent:
        """The API event of a stored report event."""
        message = view.message
        return cls(
            cursor=view.cursor,
            report=Report(
                id=strawberry.ID(str(view.report_id)),
                kind=ReportKindModel(view.kind),
                reason=reports.ReportReason(view.reason),
                excerpt=view.excerpt,
                created_at=view.created_at,
                message_id=strawberry.ID(info.context.ids.encode(message)) if message is not None else None,
                reporter_id=view.reporter_id,
                reported_user_id=view.reported_user_id,
                conversation_id=view.conversation_id,
            ),
        )


def api_event(view: EventView, info: Info) -> EventType | ReportEvent:
    """The API type of any domain event, reports included."""
    if isinstance(view, ReportEventView):
        return ReportEvent.of(view, info)
    return event_from_view(view, info)


@strawberry.type
class ReportMutation:
    @strawberry.mutation(
        description="Reports a message of a conversation you are in to the operators and, in a group, to its "
        "owners and admins (ReportEvent); the sender is never told. Send the text as your app shows it in "
        "`excerpt` (the server keeps no delivered message; at most PARLEY_MAX_REPORT_EXCERPT_LENGTH characters). "
        "Reporting the same message again stores nothing and answers true. NOT_FOUND outside the conversation, "
        "RATE_LIMITED past the hourly limit."
    )
    async def report_message(
        self,
        info: Info,
        message_id: strawberry.ID,
        reason: ReportReason,  # type: ignore[valid-type]
        excerpt: str | None = None,
    ) -> bool:
        viewer = await info.context.require_viewer()
        await reports.report_message(
            info.context.services,
            viewer,
            info.context.ids,
            message_id=str(message_id),
            reason=reports.ReportReason(reason).value,
            excerpt=excerpt,
        )
        return True

    @strawberry.mutation(
        description="Reports a user (their name, or conduct `details` describes) to the operators only; they are "
        "never told. Any account that exists and is not deleted; again while your earlier report of them is open, "
        "it stores nothing and answers true. RATE_LIMITED past the hourly limit."
    )
    async def report_user(
        self,
        info: Info,
        user_id: strawberry.ID,
        reason: ReportReason,  # type: ignore[valid-type]
        details: str | None = None,
    ) -> bool:
        viewer = await info.context.require_viewer()
        await reports.report_user(
            info.context.services,
            viewer,
            user_id=parse_row_id(user_id, what="user"),
            reason=reports.ReportReason(reason).value,
            details=details,
        )
        return True
