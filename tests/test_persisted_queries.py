"""Persisted queries in a shared store (review 2, items 5 and 10): what anyone may register is
bounded, only documents that could run are kept, and the allow-list holds for stored texts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from graph.persisted_queries import sha256_hex
from infra.persisted_queries import TOUCH_INTERVAL_MS, RedisPersistedQueries
from infra.redis_cluster import cluster_client, hash_tagged
from tests.support.helpers import Api, unique_name
from tests.support.redis_cluster import ThrowawayCluster
from tests.support.servers import ThreadServer
from tests.support.services import RedisTarget
from tests.support.settings import production_settings

Json = dict[str, Any]


def persisted(query: str | None, sha256: str) -> Json:
    body: Json = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256}}}
    if query is not None:
        body["query"] = query
    return body


async def post(url: str, body: Json, token: str | None = None) -> Json:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        answer: Json = (await http.post(f"{url}/graphql", json=body, headers=headers)).json()
    return answer


def code(answer: Json) -> str | None:
    errors = answer.get("errors") or [{}]
    value = errors[0].get("extensions", {}).get("code")
    return value if isinstance(value, str) else None


async def test_a_text_that_does_not_parse_or_validate_is_not_stored(api: Api) -> None:
    """Review 2, item 5: only a text that parses and validates is stored; a failed request stores nothing."""
    tag = unique_name("t")  # texts no other test registered
    unparsable = f"query {{ me {{ id  # {tag}"
    invalid = f"query {{ nope {tag}: me {{ id }} }}"
    too_many_tokens = f"query {{ me {{ {' '.join(['id'] * 3000)} }} }} # {tag}"  # max_tokens = 2000
    for text in (unparsable, invalid, too_many_tokens):
        sha256 = sha256_hex(text)
        assert code(await post(api.url, persisted(text, sha256))) == "BAD_USER_INPUT", text
        assert code(await post(api.url, persisted(None, sha256))) == "PERSISTED_QUERY_NOT_FOUND", text
    # A text that validates is kept, even when the request fails for another reason (no token here).
    valid = f"query Mine {{ me {{ id }} }} # {tag}"
    assert code(await post(api.url, persisted(valid, sha256_hex(valid)))) == "UNAUTHENTICATED"
    assert code(await post(api.url, persisted(None, sha256_hex(valid)))) == "UNAUTHENTICATED"


@pytest.fixture
def capped_target(redis_target: RedisTarget) -> RedisTarget:
    """This run's Redis under a prefix of this test's own (the bound counts every entry under a prefix)."""
    return replace(redis_target, prefix=f"{redis_target.prefix}{unique_name('cap')}:")


@pytest.fixture
def capped_server(migrated_postgres: str, capped_target: RedisTarget) -> Iterator[ThreadServer]:
    with ThreadServer(production_settings(migrated_postgres, capped_target, persisted_query_max_entries=3)) as server:
        yield server


@pytest.fixture
async def redis(capped_target: RedisTarget) -> AsyncIterator[Redis]:
    client = Redis.from_url(capped_target.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_shared_store_holds_at_most_its_bound_the_oldest_out_first(
    capped_server: ThreadServer, capped_target: RedisTarget, redis: Redis
) -> None:
    """Review 2, item 5: anyone may register texts, so Redis keeps at most `persisted_query_max_entries`."""
    texts = [f"query Q{n} {{ __typename }} # {capped_target.prefix}" for n in range(6)]
    for text in texts:
        assert (await post(capped_server.url, persisted(text, sha256_hex(text))))["data"] == {"__typename": "Query"}
    found = [code(await post(capped_server.url, persisted(None, sha256_hex(text)))) for text in texts]
    assert found == ["PERSISTED_QUERY_NOT_FOUND"] * 3 + [None] * 3
    keys = [key async for key in redis.scan_iter(match=f"{capped_target.prefix}apq:*")]
    assert len(keys) == 3 + 1  # three texts and their index
    assert await redis.zcard(f"{capped_target.prefix}apq:lru") == 3


async def test_a_text_in_use_outlives_newer_ones_nobody_uses(capped_target: RedisTarget, redis: Redis) -> None:
    """Review 2, item 5: the bound evicts the least recently used text (a lookup counts as a use)."""
    now = 1_700_000_000.0
    store = RedisPersistedQueries(redis, f"{capped_target.prefix}apq:", max_entries=2, clock=lambda: now)
    await store.put("a" * 64, "query A { __typename }")
    now += 1
    await store.put("b" * 64, "query B { __typename }")
    now += TOUCH_INTERVAL_MS / 1000 + 1  # uses are recorded at most once per interval
    assert await store.get("a" * 64) == "query A { __typename }"
    now += 1
    await store.put("c" * 64, "query C { __typename }")
    assert await store.get("b" * 64) is None
    assert await store.get("a" * 64) == "query A { __typename }"
    assert await store.get("c" * 64) == "query C { __typename }"
    assert 0 < await redis.ttl(f"{capped_target.prefix}apq:{'a' * 64}") <= 7 * 86400


async def test_the_bound_holds_on_a_redis_cluster() -> None:
    """Review 2, item 5: on a cluster the texts and their index share one slot, so the bound's script runs there."""
    with ThrowawayCluster() as cluster:
        client = cluster_client(cluster.url)
        try:
            store = RedisPersistedQueries(client, hash_tagged("parley:", "apq"), max_entries=2)
            for name in "abc":
                await store.put(name * 64, f"query {name.upper()} {{ __typename }}")
            assert [await store.get(name * 64) for name in "abc"] == [
                None,
                "query B { __typename }",
                "query C { __typename }",
            ]
            assert await client.zcard("{parley:apq}:lru") == 2
        finally:
            await client.aclose()


@pytest.fixture
def allowlist_production_server(migrated_postgres: str, redis_target: RedisTarget) -> Iterator[ThreadServer]:
    """A production process in allowlist mode sharing Redis (and its persisted queries) with `production_server`."""
    with ThreadServer(production_settings(migrated_postgres, redis_target, persisted_queries="allowlist")) as server:
        yield server


async def test_allowlist_refuses_a_stored_text_that_is_not_listed(
    production_server: ThreadServer, allowlist_production_server: ThreadServer
) -> None:
    """Review 2, item 10: a text another process stored (in `auto` mode, or before the switch) is no way around the allow-list."""
    api = Api(url=production_server.url, ws_url=production_server.ws_url, mode="production")
    alice = await api.register("alice")
    text = f"query NotListed {{ me {{ id }} }} # {alice.username}"
    sha256 = sha256_hex(text)
    stored = await post(production_server.url, persisted(text, sha256), alice.token)
    assert stored == {"data": {"me": {"id": alice.user_id}}}
    refused = await post(allowlist_production_server.url, persisted(None, sha256), alice.token)
    assert code(refused) == "OPERATION_NOT_ALLOWED"
    assert refused.get("data") is None
