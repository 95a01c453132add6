"""Failures injected into a real server's wiring (through `Overrides`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from infra.app import Overrides
from resolvers.ports import Bus, Resync
from resolvers.services import Services


class FaultyBus:
    """The real bus, but publishing and/or subscribing raise the given error."""

    def __init__(self, inner: Bus, *, publish: Exception | None = None, subscribe: Exception | None = None) -> None:
        self._inner = inner
        self._publish = publish
        self._subscribe = subscribe

    async def publish_many(self, items: Sequence[tuple[str, str]]) -> None:
        if self._publish is not None:
            raise self._publish
        await self._inner.publish_many(items)

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str | Resync]]:
        if self._subscribe is not None:
            raise self._subscribe
        return self._inner.subscribe(channel)

    async def ping(self) -> None:
        await self._inner.ping()


def replacing(**make: Callable[[Services], Any]) -> Overrides:
    """Overrides that swap services, e.g. `replacing(bus=lambda s: FaultyBus(s.bus, publish=...))`."""

    def wrap(services: Services) -> Services:
        return replace(services, **{name: factory(services) for name, factory in make.items()})

    return Overrides(wrap=wrap, fast_password_hashing=True)
