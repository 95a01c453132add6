"""Privacy operations: who sees the viewer's last seen (graph/types.py `User` applies the rule) and read receipts."""

from __future__ import annotations

import strawberry

from graph.context import Info
from graph.types import User
from resolvers import privacy


@strawberry.type
class PrivacyMutation:
    @strawberry.mutation(
        description="Changes the viewer's privacy settings; an argument left out (or null) stays as it is, and "
        "at least one is needed (BAD_USER_INPUT). `hideLastSeen`: hides (or shows again) the viewer's last seen "
        "from everyone else; online status stays visible to the members of the conversations the viewer created "
        "or sent a message in. `readReceipts: false`: in direct conversations the viewer sends no READ receipts "
        "and sees none from the other member (DELIVERED is unaffected; groups always show READ). Read them back "
        "as `me { hideLastSeen readReceipts }`."
    )
    async def set_privacy(
        self, info: Info, hide_last_seen: bool | None = None, read_receipts: bool | None = None
    ) -> User:
        viewer = await info.context.require_viewer()
        row = await privacy.set_privacy(
            info.context.services, viewer, hide_last_seen=hide_last_seen, read_receipts=read_receipts
        )
        return User.from_row(row, is_self=True)
