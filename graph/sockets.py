"""This process's open WebSockets by device, closed (4403) as soon as their device is revoked anywhere.

Revocations (logout, revokeDevice, changePassword, expiry) commit in the database and
then publish a notice on the bus (`resolvers.accounts.REVOKED_CHANNEL`); every process
marks its sockets of those devices revoked, so any operation still arriving on them is
`UNAUTHENTICATED`, and closes them. A socket's device is authenticated once, at
`connection_init`, so this registry is also what keeps its activity fresh: a device that
only holds a socket open must not expire as idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketState

from models.columns import utcnow
from resolvers.accounts import REVOKED_CHANNEL, activity_interval, existing_devices, revoked_devices, touch_devices
from resolvers.services import Services

if TYPE_CHECKING:
    from graph.context import Context

log = logging.getLogger("parley.sockets")

REVOKED_CLOSE_CODE = 4403
# A device revoked this recently is refused even if its socket authenticated just before the
# revocation committed and registers only after the notice was handled.
REMEMBER_REVOKED_SECONDS = 60.0
MAX_REMEMBERED = 100_000
RETRY_SECONDS = 1.0


class SocketRegistry:
    """Authenticated WebSocket contexts of this process, by device id."""

    def __init__(self) -> None:
        # Contexts are mutable dataclasses (unhashable): keyed by identity.
        self._by_device: dict[int, dict[int, Context]] = {}
        self._revoked: dict[int, float] = {}  # device id -> when its revocation was seen (monotonic)

    def add(self, context: Context) -> bool:
        """Registers an authenticated socket; False (not registered) when its device was just revoked."""
        assert context.viewer is not None
        device_id = context.viewer.device_id
        if device_id in self._revoked:
            return False
        self._by_device.setdefault(device_id, {})[id(context)] = context
        return True

    def discard(self, context: Context) -> None:
        """Forgets a socket that has closed."""
        if context.viewer is None:
            return
        sockets = self._by_device.get(context.viewer.device_id)
        if sockets is not None:
            sockets.pop(id(context), None)
            if not sockets:
                del self._by_device[context.viewer.device_id]

    def devices(self) -> list[int]:
        """Devices with an open socket on this process."""
        return list(self._by_device)

    async def revoke(self, device_ids: Iterable[int], *, spare: Context | None = None) -> None:
        """Marks these devices' sockets revoked and closes them (all but `spare`, which is only marked)."""
        closing: list[Context] = []
        for device_id in device_ids:
            self._remember(device_id)
            for context in list(self._by_device.get(device_id, {}).values()):
                context.revoked = True
                if context is not spare:
                    closing.append(context)
        if closing:
            await asyncio.gather(*(_close(context) for context in closing))

    def _remember(self, device_id: int) -> None:
        now = time.monotonic()
        self._revoked.pop(device_id, None)
        self._revoked[device_id] = now
        # Insertion order is age order: drop from the oldest end.
        while self._revoked:
            oldest, seen = next(iter(self._revoked.items()))
            if now - seen < REMEMBER_REVOKED_SECONDS and len(self._revoked) <= MAX_REMEMBERED:
                break
            del self._revoked[oldest]

    async def run(self, services: Services) -> None:
        """Follows revocation notices and keeps the activity of connected devices fresh, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow_revocations(services), name="parley.sockets.revocations")
            tasks.create_task(self._keep_active(services), name="parley.sockets.activity")

    async def _follow_revocations(self, services: Services) -> None:
        while True:
            try:
                async with services.bus.subscribe(REVOKED_CHANNEL) as feed:
                    # Whatever was revoked while this process was not listening.
                    await self._recheck(services)
                    async for item in feed:
                        if isinstance(item, str):
                            await self.revoke(revoked_devices(item))
                        else:  # the bus may have lost notices (Redis outage, overflow)
                            await self._recheck(services)
                return  # the bus has shut down
            except Exception:  # must outlive any failure, like the bus itself
                log.warning("revocation listener failed; resubscribing", exc_info=True)
                await asyncio.sleep(RETRY_SECONDS)

    async def _recheck(self, services: Services) -> None:
        connected = self.devices()
        if not connected:
            return
        alive = await existing_devices(services, connected)
        gone = [device_id for device_id in connected if device_id not in alive]
        if gone:
            log.info("closing sockets of %d devices revoked while notices were lost", len(gone))
            await self.revoke(gone)

    async def _keep_active(self, services: Services) -> None:
        # Twice per interval: a device is never more than one interval (a quarter of the
        # expiry at most) behind, whatever the phase between the loop and its last touch.
        period = activity_interval(services.limits).total_seconds() / 2
        while True:
            await asyncio.sleep(period)
            connected = self.devices()
            if not connected:
                continue
            try:
                await touch_devices(services, connected, now=utcnow())
            except Exception:  # activity is retried next period; never stop the loop
                log.warning("could not record activity of %d connected devices", len(connected), exc_info=True)


async def _close(context: Context) -> None:
    socket = context.request
    if not isinstance(socket, WebSocket) or socket.application_state is not WebSocketState.CONNECTED:
        return
    # It may close on its own meanwhile: then there is nothing left to do.
    with contextlib.suppress(Exception):
        await socket.close(code=REVOKED_CLOSE_CODE, reason="This device has logged out.")
