"""Blocking: blockUser, unblockUser and the viewer's blocked list."""

from __future__ import annotations

import strawberry

from graph.context import Info
from graph.types import User
from resolvers import blocks
from resolvers.ids import parse_row_id


@strawberry.type
class BlockQuery:
    @strawberry.field(description="The users the viewer has blocked, most recent first (only the viewer sees this).")
    async def blocked_users(self, info: Info) -> list[User]:
        viewer = await info.context.require_viewer()
        return [User.from_row(row) for row in await blocks.blocked_users(info.context.services, viewer)]


@strawberry.type
class BlockMutation:
    @strawberry.mutation(
        description="Blocks a user: they can no longer start a direct conversation with the viewer or add "
        "them to a group (FORBIDDEN), and what they send or type in the direct conversation no longer "
        "reaches the viewer (it stays SENT for them). Group messages are unaffected. Idempotent."
    )
    async def block_user(self, info: Info, user_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await blocks.block_user(info.context.services, viewer, user_id=parse_row_id(user_id, what="user"))
        return True

    @strawberry.mutation(description="Unblocks a user; what they sent while blocked stays undelivered. Idempotent.")
    async def unblock_user(self, info: Info, user_id: strawberry.ID) -> bool:
        viewer = await info.context.require_viewer()
        await blocks.unblock_user(info.context.services, viewer, user_id=parse_row_id(user_id, what="user"))
        return True
