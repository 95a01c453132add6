"""The per-request (or per-WebSocket) context every resolver receives."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from graph.loaders import Loaders, LoaderScopes
from resolvers import accounts
from resolvers.accounts import Viewer
from resolvers.errors import Unauthenticated
from resolvers.ids import MessageIds
from resolvers.services import Services

if TYPE_CHECKING:
    from graph.sockets import SocketRegistry

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
    # WebSocket: the viewer is authenticated once, at connection_init; `revoked` is set when
    # its device is revoked (graph/sockets.py) and refuses every later operation at once.
    revoked: bool = False
    sockets: SocketRegistry | None = None
    # WebSocket: the user this socket is counted online for (graph/view.py), uncounted once when it ends.
    presence_user: int | None = None

    def __post_init__(self) -> None:
        # DataLoaders per operation (graph/loaders.py): a WebSocket context lives as long as
        # its connection (docs/upstream-notes.md, strawberry), so caches must not live on the context itself.
        self.loader_scopes: LoaderScopes = LoaderScopes(self)

    def loaders(self, info: Info) -> Loaders:
        """The DataLoaders of the operation (or subscription event) `info` belongs to."""
        return self.loader_scopes.get(info)

    @property
    def client_address(self) -> str | None:
        """The caller's IP address (behind a trusted proxy, the one it forwarded: infra/forwarded.py)."""
        client = self.request.client
        return client.host if client else None

    @property
    def public_base_url(self) -> str:
        """The scheme and host clients reach this API at: for upload and download URLs the app serves."""
        configured = self.services.file_config.public_url
        if configured:
            return configured.rstrip("/")
        url = self.request.base_url  # the scheme as trusted proxies report it (infra/forwarded.py)
        scheme = {"ws": "http", "wss": "https"}.get(url.scheme, url.scheme)
        return str(url.replace(scheme=scheme)).rstrip("/")

    async def require_viewer(self, *, record_activity: bool = True) -> Viewer:
        """The authenticated viewer; `Unauthenticated` otherwise. Records activity (throttled) unless told not to."""
        if self.revoked:
            raise Unauthenticated("This token is not valid (logged out or expired).")
        if self.viewer is None:
            self.viewer = await accounts.authenticate(self.services, self.request.headers.get("authorization"))
        if record_activity and self.throttle.due(self.viewer.user_id):
            try:
                await self.services.presence.touch(self.viewer.user_id)
            except Exception:  # last seen is best effort: never fail a request (or lose a send) over it
                log.warning("could not record activity of user %s", self.viewer.user_id, exc_info=True)
        return self.viewer

    async def devices_revoked(self, device_ids: Sequence[int]) -> None:
        """After a revocation committed: this process's sockets of those devices stop at once.

        The calling socket, if revoked, is only marked (so its answer still goes out); the
        bus notice closes it like every other process's sockets.
        """
        if self.viewer is not None and self.viewer.device_id in device_ids:
            self.revoked = True
        if self.sockets is not None:
            await self.sockets.revoke(device_ids, spare=self)


Info = StrawberryInfo[Context, None]
