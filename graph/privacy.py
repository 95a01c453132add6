"""Privacy operations: who sees the viewer's last seen (graph/types.py `User` applies the rule)."""

from __future__ import annotations

import strawberry

from graph.context import Info
from graph.types import User
from resolvers import privacy


@strawberry.type
class PrivacyMutation:
    @strawberry.mutation(
        description="Hides (or shows again) the viewer's last seen from everyone else; online status stays "
        "visible to the members of the conversations the viewer created or sent a message in. Read it back as "
        "`me { hideLastSeen }`."
    )
    async def set_privacy(self, info: Info, hide_last_seen: bool) -> User:
        viewer = await info.context.require_viewer()
        row = await privacy.set_privacy(info.context.services, viewer, hide_last_seen=hide_last_seen)
        return User.from_row(row, is_self=True)
