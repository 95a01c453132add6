"""PostgreSQL failover (issue 22): a promoted standby takes over without a restart, and nothing sent is lost.

A throwaway primary with a synchronous streaming standby (`tests/support/pg_cluster.py`), two
`parley serve` processes given both servers in one multi-host URL, and senders at about 20
messages a second, each send recorded in a ledger. The primary is stopped as in a crash
(`pg_ctl stop -m immediate`) and, once the senders see it fail, the standby is promoted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from infra.migrate import migrate
from tests.support.client import GraphQLFailed, Json
from tests.support.helpers import Api, Person
from tests.support.pg_cluster import PgCluster
from tests.support.processes import ProcessServer
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import production_settings, suite_process_env
from tests.support.streams import bodies
from tests.support.waiting import until

SENDERS = 3
# Each sender's pace: three together send about 20 messages a second.
SEND_INTERVAL = 0.15
# "Within a few seconds": from the first refused send to the first stored one after the promotion.
FAILOVER_LIMIT = 10.0


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A primary and its synchronous standby of this test's own, stopped (both) at the end."""
    with PgCluster() as servers:
        yield servers


async def _migrated(cluster: PgCluster) -> str:
    """A migrated database on the primary (hence on the standby), as Parley's URL naming both servers."""
    connection = await asyncpg.connect(f"{cluster.server_url}/postgres")  # type: ignore[no-untyped-call]
    try:
        await connection.execute('CREATE DATABASE "parley_failover"')
    finally:
        await connection.close()
    url = cluster.url("parley_failover")
    await migrate(url)  # through the multi-host URL, as `parley migrate` would
    return url


@pytest.fixture
def cluster_url(cluster: PgCluster) -> str:
    """That database, for a test that fails the cluster over (the cluster serves one such test)."""
    return asyncio.run(_migrated(cluster))


@dataclass
class Send:
    """One entry of the ledger: a send and what the API answered."""

    client_id: str
    via: int  # which process took it
    at: float
    code: str | None  # None: the send returned the message
    message_id: str | None = None


@dataclass
class Sender:
    """A user sending to the group at a steady pace, alternating between the processes, recording every answer."""

    people: list[Person]  # the same device, once per process
    group: str
    ledger: list[Send] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        number = 0
        while not stop.is_set():
            client_id = f"{self.people[0].username}-{number:04d}"
            self.ledger.append(await self.send(client_id, via=number % len(self.people)))
            number += 1
            await asyncio.sleep(SEND_INTERVAL)

    async def send(self, client_id: str, *, via: int) -> Send:
        """Sends once through process `via`; a refusal is recorded with its code, not raised."""
        try:
            message = await self.people[via].send(self.group, client_id, client_id=client_id)
        except GraphQLFailed as refused:
            return Send(client_id, via, time.monotonic(), refused.code)
        assert message["clientId"] == client_id
        return Send(client_id, via, time.monotonic(), None, message["id"])


def _stored(senders: list[Sender], since: float) -> int:
    return sum(1 for s in senders for entry in s.ledger if entry.code is None and entry.at > since)


def _refusals(senders: list[Sender]) -> list[Send]:
    return [entry for s in senders for entry in s.ledger if entry.code is not None]


async def test_a_promoted_standby_takes_over_without_a_restart_and_nothing_sent_is_lost(
    cluster: PgCluster, cluster_url: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """Primary stopped hard, standby promoted: sends resume on the same processes, refusals meanwhile are
    UNAVAILABLE, and every send that returned, or was retried by its clientId, is delivered exactly once."""
    redis = RedisTarget(redis_target.url, f"{redis_target.prefix}failover-{uuid.uuid4().hex[:6]}:")
    env = {
        **suite_process_env(cluster_url, redis),
        "PARLEY_SEND_RATE_PER_MINUTE": "100000",
        "PARLEY_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
        "PARLEY_DATABASE_POOL_TIMEOUT_SECONDS": "2",
    }
    servers = [ProcessServer(env, log_path=tmp_path / f"parley{n}.log") for n in range(2)]
    async with servers[0], servers[1]:
        pids = [server.pid for server in servers]
        apis = [Api(s.url, s.ws_url, "production") for s in servers]
        recipients = [await apis[0].register(f"reader{n}") for n in range(2)]
        writers = [await apis[n % 2].register(f"writer{n}") for n in range(SENDERS)]
        group = await writers[0].create_group("failover", members=[*writers[1:], *recipients])
        senders = [
            Sender([Person(api, w.username, w.token, w.user_id, w.device_id) for api in apis], group) for w in writers
        ]
        stop = asyncio.Event()
        sending = [asyncio.create_task(sender.run(stop)) for sender in senders]
        try:
            await until(lambda: _stored(senders, 0) >= 30, "30 messages stored before the failover", timeout=30)
            # What makes a returned send survive: each commit waited for the standby.
            assert await cluster.replication_state() == "sync"
            stopped_at = time.monotonic()
            await asyncio.to_thread(cluster.stop_primary)
            # As a failover manager does: promote once the primary is seen to be gone.
            await until(lambda: _refusals(senders), "a send refused once the primary is gone", timeout=20)
            await asyncio.to_thread(cluster.promote_standby)
            await until(
                lambda: _stored(senders, stopped_at) >= 30, "30 messages stored after the promotion", timeout=30
            )
        finally:
            stop.set()
            await asyncio.gather(*sending)

        refusals = _refusals(senders)
        first_refused = min(entry.at for entry in refusals)
        first_stored_after = min(
            entry.at for s in senders for entry in s.ledger if entry.code is None and entry.at > first_refused
        )
        failover_seconds = first_stored_after - first_refused
        print(
            f"failover: {failover_seconds:.2f} s from the first refused send to the first stored one, {len(refusals)} refused"
        )
        assert failover_seconds < FAILOVER_LIMIT
        # Told to come back later, never an internal error.
        assert {entry.code for entry in refusals} == {"UNAVAILABLE"}

        # The apps retry what was refused, with the same clientId, through either process: each
        # is stored once, and so is a retry of a send that had returned (it gets the same message).
        for sender in senders:
            for n, entry in enumerate(e for e in sender.ledger if e.code is not None):
                retry = await sender.send(entry.client_id, via=n % 2)
                assert retry.code is None, retry
            # The last send that returned before the crash: the newest the standby had to have.
            last_before = [e for e in sender.ledger if e.code is None and e.at < stopped_at][-1]
            again = await sender.send(last_before.client_id, via=1)
            assert again.message_id == last_before.message_id

        ledger = {entry.client_id for s in senders for entry in s.ledger}
        for reader in recipients:
            events = await Person(apis[1], reader.username, reader.token, reader.user_id, reader.device_id).drain()
            delivered = Counter(e["message"]["clientId"] for e in events if e["__typename"] == "MessageEvent")
            assert {c: n for c, n in delivered.items() if n > 1} == {}, reader.username
            assert set(delivered) == ledger, reader.username
        # The same processes throughout, each storing sends again: none was restarted to follow the new primary.
        assert [server.pid for server in servers] == pids
        assert {e.via for s in senders for e in s.ledger if e.code is None and e.at > first_refused} == {0, 1}


async def _until_stored(send: Callable[[], Awaitable[Json]], *, within: float) -> set[str]:
    """Retries a send as an app does until it is stored; the codes of the refusals before."""
    codes: set[str] = set()
    deadline = time.monotonic() + within
    while True:
        try:
            await send()
            return codes
        except GraphQLFailed as refused:
            codes.add(refused.code)
            assert time.monotonic() < deadline, f"not stored within {within} s: {codes}"
        await asyncio.sleep(0.05)


async def test_a_fenced_primary_is_left_for_the_promoted_standby_and_refusals_meanwhile_are_unavailable(
    cluster: PgCluster, cluster_url: str, redis_target: RedisTarget
) -> None:
    """Connections to a primary made read-only (25006) are dropped: UNAVAILABLE until a writable server is found."""
    redis = RedisTarget(redis_target.url, f"{redis_target.prefix}fence-{uuid.uuid4().hex[:6]}:")
    settings = production_settings(
        cluster_url, redis, database_pool_timeout_seconds=2, database_connect_timeout_seconds=1
    )
    with ThreadServer(settings) as server:
        api = Api(server.url, server.ws_url, "production")
        alice, bob = await api.people("alice", "bob")
        direct = await alice.direct_with(bob)
        await alice.send(direct, "before")  # both pools now hold connections to the primary

        await cluster.fence_primary()
        # Neither server takes writes: the hot path's send and a SQLAlchemy transaction both refuse.
        with pytest.raises(GraphQLFailed) as send_refused:
            await alice.send(direct, "while fenced", client_id="fenced-1")
        with pytest.raises(GraphQLFailed) as register_refused:
            await api.register("carol")
        assert (send_refused.value.code, register_refused.value.code) == ("UNAVAILABLE", "UNAVAILABLE")

        await asyncio.to_thread(cluster.promote_standby)
        # The same process finds the promoted standby: the app's retry under the same clientId is stored once.
        codes = await _until_stored(lambda: alice.send(direct, "while fenced", client_id="fenced-1"), within=10)
        assert codes <= {"UNAVAILABLE"}
        dave = await api.register("dave")
        assert await dave.direct_with(alice)
        assert bodies(await bob.pending()) == ["before", "while fenced"]
