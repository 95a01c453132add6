"""A Parley server with push configured (and its `parley worker` in the production mode), and markers.

Shared by the push tests and the mention tests: a local WebPush endpoint (tests/support/push_fakes.py)
receives what the worker sends; a `Marker` tells "no (more) pushes" without waiting a fixed time.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from infra.push.queue import GROUP
from tests.support.helpers import Api, Person
from tests.support.processes import ProcessServer
from tests.support.push_fakes import PUSH_SETTINGS, REGISTER_PUSH, PushEndpoint, Received, Subscription, b64url
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import embedded_settings, production_settings, suite_process_env
from tests.support.waiting import until

# A marker's pushes go to users named so, whose pushes the tests set aside.
MARKER_PATH = "/push/marker_"


@dataclass
class PushRig:
    """A Parley server, its push worker(s) and the Redis stream they share (production mode)."""

    api: Api
    mode: str
    tmp: Path
    worker_env: dict[str, str] | None = None
    redis: Redis | None = None
    prefix: str = ""
    # The running worker's liveness (and metrics) address, in the production mode.
    worker_url: str | None = None

    def worker(self, **changes: str) -> ProcessServer:
        assert self.worker_env is not None
        return ProcessServer(
            {**self.worker_env, **changes},
            log_path=self.tmp / f"worker-{uuid.uuid4().hex[:6]}.log",
            command=[str(Path(sys.executable).parent / "parley"), "worker"],
        )

    async def all_acknowledged(self) -> bool:
        """Whether no job is held by a worker unacknowledged (production mode)."""
        assert self.redis is not None
        pending = await self.redis.xpending(f"{self.prefix}push:jobs", GROUP)
        return int(pending["pending"]) == 0

    async def dead_lettered(self) -> bool:
        return bool(await self.dead_letters())

    async def dead_letters(self) -> list[dict[bytes, bytes]]:
        assert self.redis is not None
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(f"{self.prefix}push:dead")  # type: ignore[assignment]
        return [fields for _id, fields in entries]


def _env(settings: dict[str, object]) -> dict[str, str]:
    return {f"PARLEY_{name.upper()}": str(value) for name, value in settings.items()}


@asynccontextmanager
async def rig(
    tmp: Path,
    backends: tuple[str, RedisTarget] | None,
    *,
    start_worker: bool = True,
    settings: dict[str, object] | None = None,
    **worker_changes: str,
) -> AsyncIterator[PushRig]:
    """A server (and in the production mode a `parley worker` process) with push configured.

    `settings` change both the server's and the worker's; `worker_changes` (PARLEY_* variables) the worker's only.
    """
    push_settings = {**PUSH_SETTINGS, **(settings or {})}
    if backends is None:
        with ThreadServer(embedded_settings(tmp, **push_settings)) as server:
            yield PushRig(Api(server.url, server.ws_url, "embedded"), "embedded", tmp)
        return
    postgres, target = backends
    mode = "production"
    # A prefix of its own: no other test's jobs in this test's stream.
    prefix = f"{target.prefix}push-{uuid.uuid4().hex[:8]}:"
    env = {
        **suite_process_env(postgres, RedisTarget(target.url, prefix)),
        **_env(push_settings),
        "PARLEY_PUSH_ALLOW_PRIVATE_ENDPOINTS": "true",
        "PARLEY_LOG_LEVEL": "INFO",
    }
    redis = Redis.from_url(target.url)
    try:
        with ThreadServer(production_settings(postgres, RedisTarget(target.url, prefix), **push_settings)) as server:
            setup = PushRig(Api(server.url, server.ws_url, mode), mode, tmp, env, redis, prefix)
            if not start_worker:
                yield setup
                return
            async with setup.worker(**worker_changes) as worker:
                setup.worker_url = worker.url
                yield setup
    finally:
        await redis.aclose()


async def subscribe(person: Person, endpoint: PushEndpoint) -> Subscription:
    """Registers a WebPush subscription on the person's device, at the local endpoint."""
    subscription = Subscription()
    data = await person.data(
        REGISTER_PUSH,
        input={
            "platform": "WEBPUSH",
            "endpoint": endpoint.url(person.username),
            "p256dh": subscription.p256dh,
            "auth": b64url(subscription.auth),
        },
    )
    assert data["registerPush"] is True
    return subscription


@dataclass
class Marker:
    """A newcomer's push asked for after the jobs a test watches: it is handled after them.

    The positive form of "no (more) pushes": jobs wait out the same coalescing window oldest
    first, so once the marker's push is in, every job queued before its message was handled,
    and no fixed quiet time is needed.
    """

    endpoint: PushEndpoint
    sender: Person
    conversation: str
    path: str

    @classmethod
    async def ready(cls, setup: PushRig, endpoint: PushEndpoint, sender: Person) -> Marker:
        """A newcomer subscribed to `endpoint`, in a direct conversation with `sender`."""
        newcomer = await setup.api.register("marker")
        await subscribe(newcomer, endpoint)
        conversation = await sender.direct_with(newcomer)
        return cls(endpoint, sender, conversation, f"/push/{newcomer.username}")

    async def send(self) -> None:
        await self.sender.send(self.conversation, "marker")

    async def pushes_before(self) -> list[Received]:
        """Waits for the marker's push (`send` first); every push so far but markers', in order."""
        await until(lambda: any(r.path == self.path for r in self.endpoint.received), "the marker's push")
        return [r for r in self.endpoint.received if not r.path.startswith(MARKER_PATH)]


async def pushes_before_marker(setup: PushRig, endpoint: PushEndpoint, sender: Person) -> list[Received]:
    """The pushes (but markers') handled before a message `sender` sends now: see `Marker`."""
    marker = await Marker.ready(setup, endpoint, sender)
    await marker.send()
    return await marker.pushes_before()
