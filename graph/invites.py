"""Invite links: createInvite, joinByInvite, revokeInvite, invites (bans: graph/moderation.py)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import Conversation, User, load_user
from resolvers import invites
from resolvers.errors import NotFound
from resolvers.ids import parse_row_id
from resolvers.invites import InviteView


@strawberry.type(description="An invite link to a group: whoever holds its code may join (joinByInvite).")
class Invite:
    id: strawberry.ID
    code: str | None = strawberry.field(
        description="The secret to share (put it in your app's link): only in createInvite's answer. The server "
        "keeps only its hash, so it is null everywhere else."
    )
    max_uses: int | None = strawberry.field(description="Joins it allows; null: any number (the group's size holds).")
    uses: int = strawberry.field(description="Users who joined with it.")
    expires_at: datetime | None
    revoked: bool
    created_at: datetime
    conversation_id: strawberry.Private[int]
    created_by_id: strawberry.Private[int]

    @strawberry.field
    async def conversation(self, info: Info) -> Conversation:
        header = await info.context.loaders(info).conversations.load(self.conversation_id)
        if header is None or not header.is_member:
            raise NotFound("No such conversation.")
        return Conversation.from_header(header)

    @strawberry.field
    async def created_by(self, info: Info) -> User:
        return await load_user(info, self.created_by_id)

    @classmethod
    def from_view(cls, view: InviteView) -> Invite:
        """The API object of an invite (with its code only when the view has it: on creation)."""
        row = view.invite
        return cls(
            id=strawberry.ID(str(view.id)),
            code=view.code,
            max_uses=row.max_uses,
            uses=row.uses,
            expires_at=row.expires_at,
            revoked=row.revoked_at is not None,
            created_at=row.created_at,
            conversation_id=row.conversation_id,
            created_by_id=row.created_by,
        )


def _conversation_id(value: strawberry.ID) -> int:
    return parse_row_id(value, what="conversation")


@strawberry.type
class InviteQuery:
    @strawberry.field(
        description="A group's invite links (OWNER or ADMIN, else FORBIDDEN), newest first: the usable ones and "
        "those that ended in the last 7 days; at most 100. Codes are never shown here."
    )
    async def invites(self, info: Info, conversation_id: strawberry.ID) -> list[Invite]:
        viewer = await info.context.require_viewer()
        views = await invites.list_invites(
            info.context.services, viewer, conversation_id=_conversation_id(conversation_id)
        )
        return [Invite.from_view(view) for view in views]


@strawberry.type
class InviteMutation:
    @strawberry.mutation(
        description="A new invite link to a group (OWNER or ADMIN, else FORBIDDEN; a DIRECT conversation is "
        "BAD_USER_INPUT). The answer holds its `code`, the only time it is shown. `maxUses` null: any number of "
        "joins; `expiresIn` (seconds) null: the longest the server allows. A group has a bounded number of usable "
        "links (CONFLICT beyond); creations count against an hourly limit (RATE_LIMITED)."
    )
    async def create_invite(
        self,
        info: Info,
        conversation_id: strawberry.ID,
        max_uses: int | None = None,
        expires_in: int | None = None,
    ) -> Invite:
        viewer = await info.context.require_viewer()
        view = await invites.create_invite(
            info.context.services,
            viewer,
            conversation_id=_conversation_id(conversation_id),
            max_uses=max_uses,
            expires_in=expires_in,
        )
        return Invite.from_view(view)

    @strawberry.mutation(
        description="Joins the group an invite code is for; members get a JOINED ConversationEvent. Already a "
        "member: the conversation, and the link is not used. NOT_FOUND for a code that is wrong, expired, revoked "
        "or used up (one answer for all); FORBIDDEN when you may not join; CONFLICT when the group is full; "
        "RATE_LIMITED after too many codes that were not valid."
    )
    async def join_by_invite(self, info: Info, code: str) -> Conversation:
        viewer = await info.context.require_viewer()
        view = await invites.join_by_invite(
            info.context.services, viewer, code=code, address=info.context.client_address
        )
        return Conversation.from_view(view)

    @strawberry.mutation(description="Ends an invite link at once (OWNER or ADMIN of its group). Idempotent.")
    async def revoke_invite(self, info: Info, invite_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await invites.revoke_invite(info.context.services, viewer, invite_id=parse_row_id(invite_id, what="invite"))
        return True
