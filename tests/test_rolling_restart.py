"""Rolling restart (issue 11): two processes restarted in turn under steady sending lose nothing and reorder nothing.

Recipients hold sockets on both processes; a sender sends every 20 ms for the whole
test; each process in turn gets SIGTERM and is started again on its port. Clients
do what an app does: on 1012 reconnect to the other process and resume with
`events(after: <last cursor>)`, acknowledging as they go; the sender retries a
send that failed with a connection error under the same clientId.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from tests.support.client import Json
from tests.support.helpers import EVENTS, MESSAGE_FIELDS, Api, Person
from tests.support.processes import ProcessServer
from tests.support.services import RedisTarget
from tests.support.settings import suite_process_env
from tests.support.waiting import until

SEND = f"mutation S($input: SendMessageInput!) {{ sendMessage(input: $input) {{ {MESSAGE_FIELDS} }} }}"
ACKNOWLEDGE = "mutation A($c: String!) { acknowledge(cursor: $c) }"
# The pace of the simulated clients (sending, reconnecting, acknowledging): traffic to keep up
# through the restarts, not a wait for anything.
SEND_INTERVAL = 0.02
RECONNECT_PAUSE = 0.05
ACKNOWLEDGE_EVERY = 0.2


@dataclass
class Recipient:
    """One device listening as an app does: reconnects to the other process when its socket closes."""

    person: Person
    conversations: set[str]
    servers: list[ProcessServer]
    index: int
    last_cursor: str | None
    cursors: set[str] = field(default_factory=set)
    received: list[str] = field(default_factory=list)  # client ids of the messages, duplicates dropped
    duplicates: int = 0
    close_codes: list[int | None] = field(default_factory=list)
    refused_connects: int = 0
    errors: list[Json] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Listens until `stop`, moving to the other process whenever a socket closes or cannot open."""
        acknowledger = asyncio.create_task(self._acknowledge_steadily(stop))
        try:
            while not stop.is_set():
                try:
                    await self._listen(self.servers[self.index], stop)
                except (OSError, InvalidHandshake, TimeoutError):
                    self.refused_connects += 1  # that process is down or stopping: try the other
                    await asyncio.sleep(RECONNECT_PAUSE)
                if not stop.is_set():
                    self.index = 1 - self.index
        finally:
            acknowledger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acknowledger

    async def _listen(self, server: ProcessServer, stop: asyncio.Event) -> None:
        async with connect(server.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], open_timeout=5) as ws:
            reader = asyncio.create_task(self._read(ws))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not reader.done():  # the test is over: our own close, not the server's
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                return
            reader.result()
            self.close_codes.append(ws.close_code)

    async def _read(self, ws: ClientConnection) -> None:
        token = f"Bearer {self.person.token}"
        try:
            await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": token}}))
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "connection_ack":
                    subscribe = {"query": EVENTS, "variables": {"after": self.last_cursor}}
                    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": subscribe}))
                elif message["type"] == "next" and not message["payload"].get("errors"):
                    self._take(message["payload"]["data"]["events"])
                elif message["type"] != "ping":
                    self.errors.append(message)
        except ConnectionClosed:
            pass  # ws.close_code says how

    def _take(self, event: Json) -> None:
        cursor = event.get("cursor")
        if cursor is None:
            return  # typing: not stored, no cursor
        if cursor in self.cursors:
            self.duplicates += 1  # replayed across a reconnect: dropped by its cursor
            return
        self.cursors.add(cursor)
        self.last_cursor = cursor
        if event["__typename"] == "MessageEvent":
            self.received.append(event["message"]["clientId"])

    async def _acknowledge_steadily(self, stop: asyncio.Event) -> None:
        acknowledged: str | None = None
        async with httpx.AsyncClient(timeout=5) as http:
            while not stop.is_set():
                await asyncio.sleep(ACKNOWLEDGE_EVERY)
                cursor = self.last_cursor
                if cursor is None or cursor == acknowledged:
                    continue
                with contextlib.suppress(httpx.TransportError):  # that process is stopping: the next one covers it
                    response = await http.post(
                        f"{self.servers[self.index].url}/graphql",
                        json={"query": ACKNOWLEDGE, "variables": {"c": cursor}},
                        headers={"Authorization": f"Bearer {self.person.token}"},
                    )
                    assert not response.json().get("errors"), response.text
                    acknowledged = cursor

    def expected(self, sent: list[tuple[str, str]]) -> list[str]:
        """The client ids this device must receive, in the order they were sent."""
        return [client_id for conversation, client_id in sent if conversation in self.conversations]


@dataclass
class Sender:
    """Sends one message every 20 ms, round the conversations; on a connection error, retries on the other process."""

    person: Person
    conversations: list[str]
    servers: list[ProcessServer]
    index: int = 0
    sent: list[tuple[str, str]] = field(default_factory=list)
    retries: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            number = 0
            while not stop.is_set():
                conversation = self.conversations[number % len(self.conversations)]
                client_id = f"m{number:05d}"
                await self._send(http, conversation, client_id)
                self.sent.append((conversation, client_id))
                number += 1
                await asyncio.sleep(SEND_INTERVAL)

    async def _send(self, http: httpx.AsyncClient, conversation: str, client_id: str) -> None:
        variables = {"input": {"conversationId": conversation, "clientId": client_id, "body": client_id}}
        deadline = time.monotonic() + 20
        while True:
            try:
                response = await http.post(
                    f"{self.servers[self.index].url}/graphql",
                    json={"query": SEND, "variables": variables},
                    headers={"Authorization": f"Bearer {self.person.token}"},
                )
            except httpx.TransportError:
                # Refused or cut off: maybe stored, maybe not. The same clientId makes the retry safe.
                assert time.monotonic() < deadline, "no process took the send for 20 s"
                self.retries += 1
                self.index = 1 - self.index
                await asyncio.sleep(SEND_INTERVAL)
                continue
            body = response.json()
            assert not body.get("errors"), body
            assert body["data"]["sendMessage"]["clientId"] == client_id
            return


async def flowing(messenger: Sender, recipients: list[Recipient], *, more: int = 20) -> None:
    """Waits until `more` further messages were sent and every recipient received another: traffic goes on."""
    sent = len(messenger.sent)
    received = [len(r.received) for r in recipients]

    def moved_on() -> bool:
        return len(messenger.sent) >= sent + more and all(
            len(r.received) > before for r, before in zip(recipients, received, strict=True)
        )

    await until(moved_on, f"{more} more messages sent and one more received by each", timeout=30)


async def restart(server: ProcessServer) -> int:
    """SIGTERM, the exit status, and the same server started again on its port."""
    server.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(server.wait_exit, 20)
    await asyncio.to_thread(server.start)
    return status


async def test_a_rolling_restart_under_steady_sending_loses_and_reorders_nothing(
    migrated_postgres: str, redis_target: RedisTarget, tmp_path: Path
) -> None:
    env = {
        **suite_process_env(migrated_postgres, redis_target),
        "PARLEY_SHUTDOWN_DRAIN_SECONDS": "0.5",
        "PARLEY_SHUTDOWN_GRACE_SECONDS": "5",
        "PARLEY_SEND_RATE_PER_MINUTE": "100000",
    }
    one = ProcessServer(env, log_path=tmp_path / "one.log")
    two = ProcessServer(env, log_path=tmp_path / "two.log")
    servers = [one, two]
    async with one, two:
        apis = [Api(s.url, s.ws_url, "production") for s in servers]
        sender = await apis[0].register("sender")
        r1, r2, r3 = await asyncio.gather(*(apis[i % 2].register(f"r{i}") for i in range(3)))
        group = await sender.create_group("ops", members=[r1, r2, r3])
        direct = await sender.direct_with(r1)
        recipients = []
        for index, (person, conversations) in enumerate([(r1, {group, direct}), (r2, {group}), (r3, {group})]):
            backlog = await person.drain()
            last = backlog[-1]["cursor"] if backlog else None
            recipients.append(Recipient(person, conversations, servers, index=index % 2, last_cursor=last))

        stop_listening, stop_sending = asyncio.Event(), asyncio.Event()
        listeners = [asyncio.create_task(r.run(stop_listening)) for r in recipients]
        messenger = Sender(sender, [group, direct], servers)
        sending = asyncio.create_task(messenger.run(stop_sending))
        try:
            # Steady traffic to every listener before each restart and after the last.
            await flowing(messenger, recipients)
            assert await restart(one) == 0
            await flowing(messenger, recipients)
            assert await restart(two) == 0
            await flowing(messenger, recipients)
            await until(lambda: len(messenger.sent) > 100, "over 100 messages sent", timeout=30)
        finally:
            stop_sending.set()
            await sending

        await until(
            lambda: all(len(r.received) >= len(r.expected(messenger.sent)) for r in recipients),
            "every recipient to receive every message sent",
        )
        stop_listening.set()
        await asyncio.gather(*listeners)

    assert len(messenger.sent) > 100
    for recipient in recipients:
        name = recipient.person.username
        assert recipient.received == recipient.expected(messenger.sent), name
        assert recipient.errors == [], name
        # Every socket the servers closed said 1012 (service restart); none was simply dropped (1006).
        assert recipient.close_codes, name
        assert set(recipient.close_codes) == {1012}, (name, recipient.close_codes)
