"""One bus channel subscribed once per process, shared by all its local listeners.

The inbox fan-out (`infra/fanout.py`, one per shard) and the presence hub
(`infra/presence_hub.py`) both subscribe to a channel when their first local listener
arrives, hand every notice to a pump that dispatches it locally, and unsubscribe
when the last listener leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

from resolvers.ports import Bus

Pump = Callable[[AsyncIterator[Any]], Coroutine[Any, Any, None]]


class SharedSubscription:
    """A channel's subscription and pump task, counted by its local listeners.

    Callers count a listener with `hold()` before any await, then `await open()`;
    on leaving, `await release()`. Both awaits should be shielded by the caller, so
    a cancelled listener never leaves the subscription half opened or half closed.
    """

    def __init__(self, bus: Bus, channel: str, pump: Pump, *, name: str) -> None:
        self._bus = bus
        self._channel = channel
        self._make_pump = pump
        self._name = name
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task[None] | None = None
        self.refs = 0

    def hold(self) -> None:
        """Counts one more local listener (synchronously, so no release can close under it)."""
        self.refs += 1

    async def open(self) -> None:
        """Subscribes and starts the pump, unless already done."""
        async with self._lock:
            if self._task is not None:
                return
            stack = AsyncExitStack()
            source = await stack.enter_async_context(self._bus.subscribe(self._channel))
            self._stack = stack
            self._task = asyncio.create_task(self._make_pump(source), name=self._name)

    async def release(self) -> bool:
        """Counts a listener out; the last one stops the pump and unsubscribes. True when closed."""
        async with self._lock:
            self.refs -= 1
            if self.refs > 0:
                return False
            task, stack = self._task, self._stack
            self._task = self._stack = None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if stack is not None:
                await stack.aclose()
            return self.refs == 0
