"""Every Redis client Parley opens, built in one place: one server, a Redis Cluster, or a master named by Sentinels.

The bus, the presence registry, the rate limits, the push and webhook queues and the
persisted queries all take their client from `redis_client` (the bus's pub/sub from
`server_client`), so each follows whatever topology the settings name:

- **One server**: `PARLEY_REDIS_URL`, as redis-py reads it (query options win).
- **Cluster** (`PARLEY_REDIS_CLUSTER`): infra/redis_cluster.py.
- **Sentinel** (`PARLEY_REDIS_SENTINELS`): redis-py's `Sentinel(...).master_for(name)`. Each
  new connection asks the Sentinels where the master is, so after a failover the next
  connection (a command's reconnect, the bus's resubscription) reaches the promoted
  replica; a connection still open to a demoted master fails on its first write
  (`READONLY`) and reconnects. Meanwhile commands fail with redis-py's
  `ConnectionError`s (`MasterNotFoundError` while no Sentinel names a healthy master),
  which infra/outages.py turns into `UNAVAILABLE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from infra.settings import Settings


@dataclass(frozen=True)
class RedisEndpoint:
    """Where Parley's Redis is: `url` alone, a cluster reached through `url`, or the master `master` the Sentinels name."""

    url: str
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    sentinel_password: str | None = None

    @property
    def kind(self) -> Literal["server", "cluster", "sentinel"]:
        """How the clients find the server(s)."""
        if self.cluster:
            return "cluster"
        return "sentinel" if self.sentinels else "server"


def redis_endpoint(settings: Settings) -> RedisEndpoint | None:
    """The Redis the settings name; None in the embedded mode."""
    if not settings.redis_url:
        return None
    return RedisEndpoint(
        url=settings.redis_url,
        cluster=settings.redis_cluster,
        sentinels=tuple(_host_port(entry) for entry in settings.redis_sentinels),
        master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
    )


def redis_client(
    endpoint: RedisEndpoint,
    *,
    max_connections: int | None = 64,
    timeout: float = 5.0,
    connect_timeout: float | None = None,
    pool_wait: float | None = 5.0,
) -> Redis | RedisCluster:
    """A client of the endpoint; it connects on first use and owns its pools (`aclose()` closes them).

    `pool_wait`: how long a command waits for a free connection past `max_connections`
    (None: a pool that fails at once instead; `max_connections` None: no bound).
    `connect_timeout` defaults to `timeout`. On a cluster only the bound and `timeout` apply.
    """
    if endpoint.cluster:
        # Imported here: infra/redis_cluster.py builds on the bus, which builds its clients with this module.
        from infra.redis_cluster import cluster_client  # noqa: PLC0415

        return cluster_client(endpoint.url, max_connections=max_connections or 64, timeout=timeout)
    return server_client(
        endpoint, max_connections=max_connections, timeout=timeout, connect_timeout=connect_timeout, pool_wait=pool_wait
    )


def server_client(
    endpoint: RedisEndpoint,
    *,
    max_connections: int | None = None,
    timeout: float = 5.0,
    connect_timeout: float | None = None,
    pool_wait: float | None = None,
    retries: int | None = None,
    decode_responses: bool = False,
) -> Redis:
    """A client of the one server or the Sentinel-named master (not a cluster); `retries`: redis-py's, per command."""
    if endpoint.cluster:
        raise ValueError("a Redis Cluster has no single server: use redis_client")
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout if connect_timeout is None else connect_timeout,
        "decode_responses": decode_responses,
    }
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    if endpoint.sentinels:
        return _sentinel_master(endpoint, options, max_connections=max_connections, pool_wait=pool_wait)
    if pool_wait is None:
        if max_connections is not None:
            options["max_connections"] = max_connections
        return Redis.from_url(endpoint.url, **options)
    pool = BlockingConnectionPool.from_url(
        endpoint.url, max_connections=max_connections or 64, timeout=pool_wait, **options
    )
    return Redis.from_pool(pool)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool that waits briefly for a free connection past its bound, as the one-server pool does."""


class _SentinelMaster(Redis):
    """The master's client; closing it also closes its connections to the Sentinels (redis-py leaves those open)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast("SentinelConnectionPool", self.connection_pool)
        await pool.sentinel_manager.aclose()


def _sentinel_master(
    endpoint: RedisEndpoint, options: dict[str, Any], *, max_connections: int | None, pool_wait: float | None
) -> Redis:
    # The URL gives credentials, database, TLS and options (which win, as redis-py's from_url lets them);
    # its host is not used: the Sentinels say where the master is.
    url_options: dict[str, Any] = dict(parse_url(endpoint.url))
    for unused in ("host", "port", "path"):
        url_options.pop(unused, None)
    connection_class = url_options.pop("connection_class", None)
    tls = isinstance(connection_class, type) and issubclass(connection_class, SSLConnection)
    options = {**options, **url_options}
    sentinel_options: dict[str, Any] = {
        key: options[key] for key in ("socket_timeout", "socket_connect_timeout") if key in options
    }
    if endpoint.sentinel_password:
        sentinel_options["password"] = endpoint.sentinel_password
    if tls:
        sentinel_options.update({key: value for key, value in options.items() if key.startswith("ssl")}, ssl=True)
    sentinel = Sentinel(list(endpoint.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]  # unannotated in redis-py
    pool_options: dict[str, Any] = {"max_connections": max_connections}
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    if pool_wait is not None:
        pool_class = _BlockingSentinelPool
        pool_options = {"max_connections": max_connections or 64, "timeout": pool_wait}
    client = sentinel.master_for(
        endpoint.master,
        redis_class=_SentinelMaster,
        connection_pool_class=pool_class,
        ssl=tls,
        **pool_options,
        **options,
    )
    return cast("Redis", client)


def _host_port(entry: str) -> tuple[str, int]:
    """(`host`, port) of `host:port` or `[v6]:port` (the settings checked the form)."""
    host, _, port = entry.rpartition(":")
    return host.strip("[]"), int(port)
