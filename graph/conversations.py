"""Conversation operations: direct chats, groups, roles, muting, and listing."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import Conversation, MemberRole
from resolvers import conversation_state, conversations
from resolvers.conversations import CONVERSATIONS_PAGE
from resolvers.errors import BadUserInput
from resolvers.ids import parse_row_id

MAX_IDS_PER_CALL = 1000


def _conversation_id(value: strawberry.ID) -> int:
    return parse_row_id(value, what="conversation")


def _user_ids(values: list[strawberry.ID]) -> list[int]:
    if len(values) > MAX_IDS_PER_CALL:
        raise BadUserInput(f"At most {MAX_IDS_PER_CALL} user ids per call.")
    return [parse_row_id(value, what="user") for value in values]


@strawberry.type
class ConversationQuery:
    @strawberry.field(
        description="The viewer's conversations, pinned ones first, then most recently active first: `first` "
        "(1 to 100) after the conversation `after` (the last one of the previous page). Archived ones are listed "
        "apart, with `archived: true`."
    )
    async def conversations(
        self,
        info: Info,
        first: int | None = CONVERSATIONS_PAGE,
        after: strawberry.ID | None = None,
        archived: bool | None = False,
    ) -> list[Conversation]:
        headers = await conversations.list_conversations(
            info.context.services,
            await info.context.require_viewer(),
            first=CONVERSATIONS_PAGE if first is None else first,
            after=None if after is None else _conversation_id(after),
            archived=bool(archived),
        )
        return [Conversation.from_header(header) for header in headers]

    @strawberry.field(description="One of the viewer's conversations; NOT_FOUND for any other id.")
    async def conversation(self, info: Info, id: strawberry.ID) -> Conversation | None:
        viewer = await info.context.require_viewer()
        header = await conversations.get_conversation(info.context.services, viewer, _conversation_id(id))
        return Conversation.from_header(header)


@strawberry.type
class ConversationMutation:
    @strawberry.mutation(
        description="Returns the existing DIRECT conversation with that user, or creates it. Creating one "
        "counts against an hourly limit (RATE_LIMITED); FORBIDDEN when that user does not accept it. "
        "`encrypted`: the pair's end-to-end encrypted conversation, another one than the plaintext one."
    )
    async def start_direct_conversation(
        self, info: Info, user_id: strawberry.ID, encrypted: bool | None = False
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.start_direct_conversation(
            info.context.services, viewer, user_id=parse_row_id(user_id, what="user"), encrypted=bool(encrypted)
        )
        return Conversation.from_view(view)

    @strawberry.mutation(
        description="Creates a GROUP with the viewer as OWNER; at most 100 members in all. Counts as a new "
        "conversation and its members as users added (hourly limits, RATE_LIMITED); FORBIDDEN when one of "
        "them does not accept it. `encrypted`: end-to-end encrypted, for good (Conversation.encrypted)."
    )
    async def create_group(
        self, info: Info, title: str, member_ids: list[strawberry.ID], encrypted: bool | None = False
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.create_group(
            info.context.services, viewer, title=title, member_ids=_user_ids(member_ids), encrypted=bool(encrypted)
        )
        return Conversation.from_view(view)

    @strawberry.mutation(
        description="Adds users to a group (OWNER or ADMIN). Users added count against an hourly limit "
        "(RATE_LIMITED); FORBIDDEN when one of them does not accept it."
    )
    async def add_members(
        self, info: Info, conversation_id: strawberry.ID, user_ids: list[strawberry.ID]
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.add_members(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            user_ids=_user_ids(user_ids),
        )
        return Conversation.from_view(view)

    @strawberry.mutation
    async def remove_member(self, info: Info, conversation_id: strawberry.ID, user_id: strawberry.ID) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.remove_member(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            user_id=parse_row_id(user_id, what="user"),
        )
        return Conversation.from_view(view)

    @strawberry.mutation(description="Gives a member another role (OWNER only).")
    async def set_member_role(
        self,
        info: Info,
        conversation_id: strawberry.ID,
        user_id: strawberry.ID,
        role: MemberRole,  # type: ignore[valid-type]
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.set_member_role(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            user_id=parse_row_id(user_id, what="user"),
            role=role,
        )
        return Conversation.from_view(view)

    @strawberry.mutation(description="Renames a group (OWNER or ADMIN); renames count against an hourly limit.")
    async def rename_group(self, info: Info, conversation_id: strawberry.ID, title: str) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversations.rename_group(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            title=title,
        )
        return Conversation.from_view(view)

    @strawberry.mutation
    async def leave_group(self, info: Info, conversation_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await conversations.leave_group(
            info.context.services, viewer, conversation_id=_conversation_id(conversation_id)
        )
        return True

    @strawberry.mutation(
        description="Mutes (or unmutes) the conversation's push notifications for the viewer: for good, or with "
        "`until` (in the future, at most 366 days ahead) until then, after which it is unmuted by itself. "
        "Counts against an hourly limit of settings changes (RATE_LIMITED)."
    )
    async def mute_conversation(
        self, info: Info, conversation_id: strawberry.ID, muted: bool, until: datetime | None = None
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversation_state.mute_conversation(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            muted=muted,
            until=until,
        )
        return Conversation.from_view(view)

    @strawberry.mutation(
        description="Archives the conversation for the viewer (or brings it back): it leaves the main list for "
        "conversations(archived: true), and comes back by itself with the next message. Archiving unpins it."
    )
    async def archive_conversation(self, info: Info, conversation_id: strawberry.ID, archived: bool) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversation_state.archive_conversation(
            info.context.services, viewer, conversation_id=_conversation_id(conversation_id), archived=archived
        )
        return Conversation.from_view(view)

    @strawberry.mutation(
        description="Pins the conversation at the top of the viewer's list (or unpins it); pinning takes it out of "
        "the archive. At most a few at once (the server's setting; BAD_USER_INPUT beyond)."
    )
    async def pin_conversation(self, info: Info, conversation_id: strawberry.ID, pinned: bool) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await conversation_state.pin_conversation(
            info.context.services, viewer, conversation_id=_conversation_id(conversation_id), pinned=pinned
        )
        return Conversation.from_view(view)
