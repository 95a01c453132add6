"""The `presence(userIds:)` subscription: who of these users is online, then transitions (resolvers/presence.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry

from graph.context import Info
from graph.types import User, load_user
from resolvers import presence
from resolvers.errors import BadUserInput, Unauthenticated
from resolvers.ids import parse_row_id


@strawberry.type(description="Ephemeral: online/offline transitions only, not every heartbeat.")
class PresenceEvent:
    user_id: strawberry.Private[int]
    online: bool
    last_seen: datetime | None

    @strawberry.field
    async def user(self, info: Info) -> User:
        return await load_user(info, self.user_id)


@strawberry.type
class PresenceSubscription:
    @strawberry.subscription(
        description="Online/offline transitions of these users (each must share a conversation with the viewer; "
        "at most 100). First the current state of each, then transitions only. A user shows offline with a null "
        "`lastSeen` until they have sent a message in (or created) a conversation they share with the viewer, "
        "and always once they blocked the viewer; `lastSeen` is null for users who hide it."
    )
    async def presence(self, info: Info, user_ids: list[strawberry.ID]) -> AsyncGenerator[PresenceEvent, None]:
        viewer = await info.context.require_viewer()
        limit = info.context.services.limits.max_presence_watch
        if len(set(user_ids)) > limit:  # before parsing each id (repeats count once)
            raise BadUserInput(f"At most {limit} users can be watched at once.")
        ids = [parse_row_id(str(uid), what="user") for uid in user_ids]
        async for view in presence.watch_presence(info.context.services, viewer, ids):
            if info.context.revoked:  # the socket is closing (graph/sockets.py): show nothing more
                raise Unauthenticated("This device has logged out.")
            yield PresenceEvent(user_id=view.user_id, online=view.online, last_seen=view.last_seen)
