"""Group moderation: banMember, unbanMember, bans, muteMember, unmuteMember, updateConversationSettings."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import Conversation, User, load_user
from resolvers import bans, moderation
from resolvers.bans import BanView
from resolvers.ids import parse_row_id


@strawberry.type(description="A user barred from a group (banMember) until `until` (null: until unbanMember).")
class Ban:
    created_at: datetime
    until: datetime | None
    user_id: strawberry.Private[int]
    banned_by_id: strawberry.Private[int | None]

    @strawberry.field
    async def user(self, info: Info) -> User:
        return await load_user(info, self.user_id)

    @strawberry.field(description="Who banned them last; null when that account is gone.")
    async def banned_by(self, info: Info) -> User | None:
        return None if self.banned_by_id is None else await load_user(info, self.banned_by_id)

    @classmethod
    def from_view(cls, view: BanView) -> Ban:
        """The API object of a ban."""
        return cls(created_at=view.created_at, until=view.until, user_id=view.user_id, banned_by_id=view.banned_by)


@strawberry.input(description="What to change; a field left out stays as it is.")
class ConversationSettingsInput:
    only_admins_send: bool | None = strawberry.field(
        default=strawberry.UNSET, description="Announcement group: only owners and admins send."
    )
    only_admins_edit: bool | None = strawberry.field(
        default=strawberry.UNSET,
        description="Only owners and admins change the title and disappearing timer (false: every member may).",
    )
    slow_mode_seconds: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="One message per member per this many seconds (1 to the server's maximum); null turns it off.",
    )


def _id(value: strawberry.ID, what: str) -> int:
    return parse_row_id(value, what=what)


def _flag(value: bool | None) -> bool | None:
    # null and left out both leave a flag as it is
    return None if value is strawberry.UNSET else value


@strawberry.type
class ModerationQuery:
    @strawberry.field(
        description="A group's bans in force (OWNER or ADMIN, else FORBIDDEN), newest first; at most 500."
    )
    async def bans(self, info: Info, conversation_id: strawberry.ID) -> list[Ban]:
        viewer = await info.context.require_viewer()
        views = await bans.list_bans(
            info.context.services, viewer, conversation_id=_id(conversation_id, "conversation")
        )
        return [Ban.from_view(view) for view in views]


@strawberry.type
class ModerationMutation:
    @strawberry.mutation(
        description="Bans a user from a group (OWNER or ADMIN; only an owner bans an owner): removes them if they "
        "are a member (MEMBER_REMOVED; their sends are then NOT_FOUND) and keeps them from being added or joining "
        "by invite (FORBIDDEN) until `until` (null: until unbanMember). `until` is in the future, at most the "
        "server's maximum ahead (BAD_USER_INPUT otherwise). Banning again sets the new end."
    )
    async def ban_member(
        self, info: Info, conversation_id: strawberry.ID, user_id: strawberry.ID, until: datetime | None = None
    ) -> bool:
        viewer = await info.context.require_viewer()
        await bans.ban_member(
            info.context.services,
            viewer,
            conversation_id=_id(conversation_id, "conversation"),
            user_id=_id(user_id, "user"),
            until=until,
        )
        return True

    @strawberry.mutation(description="Ends a user's ban from a group (OWNER or ADMIN). Idempotent.")
    async def unban_member(self, info: Info, conversation_id: strawberry.ID, user_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await bans.unban_member(
            info.context.services,
            viewer,
            conversation_id=_id(conversation_id, "conversation"),
            user_id=_id(user_id, "user"),
        )
        return True

    @strawberry.mutation(
        description="Mutes a member of a group (OWNER or ADMIN; only an owner mutes an owner) until `until` (null: "
        "until unmuteMember): they still receive, but sending, reacting and typing there are FORBIDDEN. Members get "
        "MEMBER_MUTED. Not the mute of one's own notifications (muteConversation)."
    )
    async def mute_member(
        self, info: Info, conversation_id: strawberry.ID, user_id: strawberry.ID, until: datetime | None = None
    ) -> bool:
        viewer = await info.context.require_viewer()
        await moderation.mute_member(
            info.context.services,
            viewer,
            conversation_id=_id(conversation_id, "conversation"),
            user_id=_id(user_id, "user"),
            until=until,
        )
        return True

    @strawberry.mutation(description="Lifts a member's mute (OWNER or ADMIN); members get MEMBER_UNMUTED. Idempotent.")
    async def unmute_member(self, info: Info, conversation_id: strawberry.ID, user_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await moderation.unmute_member(
            info.context.services,
            viewer,
            conversation_id=_id(conversation_id, "conversation"),
            user_id=_id(user_id, "user"),
        )
        return True

    @strawberry.mutation(
        description="Changes a group's rules (OWNER or ADMIN, else FORBIDDEN; a DIRECT conversation is "
        "BAD_USER_INPUT): announcement mode, who edits, slow mode. Members get SETTINGS_CHANGED when anything "
        "changed. Counts against an hourly limit of moderation actions (RATE_LIMITED)."
    )
    async def update_conversation_settings(
        self, info: Info, conversation_id: strawberry.ID, input: ConversationSettingsInput
    ) -> Conversation:
        viewer = await info.context.require_viewer()
        slow = input.slow_mode_seconds
        change = moderation.SettingsChange(
            only_admins_send=_flag(input.only_admins_send),
            only_admins_edit=_flag(input.only_admins_edit),
            set_slow_mode=slow is not strawberry.UNSET,
            slow_mode_seconds=None if slow is strawberry.UNSET else slow,
        )
        header = await moderation.update_conversation_settings(
            info.context.services, viewer, conversation_id=_id(conversation_id, "conversation"), change=change
        )
        return Conversation.from_header(header)
