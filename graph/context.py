"""The per-request (or per-WebSocket) context every resolver receives."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader
from strawberry.types import Info as StrawberryInfo

from models import User
from resolvers import accounts
from resolvers.accounts import Viewer
from resolvers.ids import MessageIds
from resolvers.ports import Services

log = logging.getLogger("parley.presence")

# Last-seen is written at most this often per user and process: activity is frequent.
TOUCH_INTERVAL_SECONDS = 30.0


class ActivityThrottle:
    """Remembers when this process last stored each user's activity."""

    def __init__(self, interval: float = TOUCH_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._last: dict[int, float] = {}

    def due(self, user_id: int) -> bool:
        """True (and remembered) when the user's activity should be stored again."""
        now = time.monotonic()
        if now - self._last.get(user_id, float("-inf")) < self._interval:
            return False
        if len(self._last) > 100_000:
            self._last.clear()
        self._last[user_id] = now
        return True


@dataclass
class Context:
    """What resolvers get: the services, the viewer and per-operation loaders."""

    services: Services
    ids: MessageIds
    throttle: ActivityThrottle
    request: Request | WebSocket
    response: Response | WebSocket | None = None
    connection_params: dict[str, Any] = field(default_factory=dict)
    viewer: Viewer | None = None

    def __post_init__(self) -> None:
        # Uncached: a WebSocket context lives as long as its connection (PITFALLS.md).
        self.users: DataLoader[int, User | None] = DataLoader(self._load_users, cache=False)
        self.online: DataLoader[int, bool] = DataLoader(self._load_online, cache=False)
        self.last_seen: DataLoader[int, datetime | None] = DataLoader(self._load_last_seen, cache=False)

    async def require_viewer(self) -> Viewer:
        """The authenticated viewer; `Unauthenticated` otherwise. Records activity."""
        if self.viewer is None:
            self.viewer = await accounts.authenticate(self.services, self.request.headers.get("authorization"))
        if self.throttle.due(self.viewer.user_id):
            try:
                await self.services.presence.touch(self.viewer.user_id)
            except Exception:  # last seen is best effort: never fail a request (or lose a send) over it
                log.warning("could not record activity of user %s", self.viewer.user_id, exc_info=True)
        return self.viewer

    async def _load_users(self, ids: list[int]) -> list[User | None]:
        found = await accounts.get_users(self.services, ids)
        return [found.get(uid) for uid in ids]

    async def _load_online(self, ids: list[int]) -> list[bool]:
        online = await self.services.presence.online(ids)
        return [uid in online for uid in ids]

    async def _load_last_seen(self, ids: list[int]) -> list[datetime | None]:
        seen = await self.services.presence.last_seen(ids)
        return [seen.get(uid) for uid in ids]


Info = StrawberryInfo[Context, None]
