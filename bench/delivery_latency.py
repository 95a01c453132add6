"""Delivery latency through a real server: send → live event, acknowledge → DELIVERED receipt.

Run: .venv/bin/python -m bench.delivery_latency [--messages 200]
Starts an embedded server, and a production one when PostgreSQL and Redis run
locally (the same fixtures the tests use), and prints percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tests.backing_services import fresh_database, fresh_redis, postgres_server, redis_server
from tests.conftest import embedded_settings, production_settings
from tests.helpers import Api
from tests.servers import ThreadServer
from tests.test_delivery import next_of


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.2f} ms  p95 {p95 * 1000:6.2f} ms  max {ordered[-1] * 1000:6.2f} ms"
    )


async def measure(api: Api, messages: int) -> None:
    """Prints the latencies of `messages` sends between two users on `api`."""
    alice, bob = await api.people("alice", "bob")
    direct = await alice.direct_with(bob)
    await bob.drain()
    send_to_event: list[float] = []
    ack_to_receipt: list[float] = []
    async with alice.events() as alice_events, bob.events() as bob_events:
        for n in range(messages):
            started = time.perf_counter()
            await alice.send(direct, f"bench {n}")
            event = await next_of(bob_events, "MessageEvent")
            send_to_event.append(time.perf_counter() - started)
            started = time.perf_counter()
            await bob.acknowledge(str(event["cursor"]))
            try:
                await next_of(alice_events, "ReceiptEvent")
            except TimeoutError:
                print("timeout at", n, event)
                raise
            ack_to_receipt.append(time.perf_counter() - started)
    print(f"  send → live event        {_percentiles(send_to_event)}")
    print(f"  acknowledge → DELIVERED  {_percentiles(ack_to_receipt)}")


def main() -> None:
    """Runs the benchmark in each mode it can."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ThreadServer(embedded_settings(Path(tmp))) as server:
        print(f"embedded (SQLite, in-process bus), {args.messages} messages:")
        asyncio.run(measure(Api(server.url, server.ws_url, "embedded"), args.messages))
    with (
        postgres_server() as pg,
        fresh_database(pg) as database,
        redis_server() as rs,
        fresh_redis(rs) as target,
    ):
        from infra.migrate import migrate  # noqa: PLC0415

        asyncio.run(migrate(database))
        with ThreadServer(production_settings(database, target)) as server:
            print(f"production (PostgreSQL + Redis), {args.messages} messages:")
            asyncio.run(measure(Api(server.url, server.ws_url, "production"), args.messages))


if __name__ == "__main__":
    main()
