"""One Redis URL for a single Redis, a Redis Cluster or a Redis behind Sentinel, and the redis-py client for it.

Detection. A URL pointing at any node of a cluster works as it is: the first connection asks that node
`INFO cluster`, and `cluster_enabled:1` selects redis-py's cluster client (`redis.cluster.RedisCluster`,
`redis.asyncio.cluster.RedisCluster`), which learns the other nodes and the slot map from it. The query parameter
`cluster=yes` or `cluster=no` (`redis://node:7000/0?cluster=yes`) skips the question (a Redis user refused
INFO is taken for a single Redis, so a cluster's restricted user needs `cluster=yes`); it is removed before the
URL reaches redis-py. Give it where a process may start while the cluster is down and cannot wait to ask: without
it, a process that cannot reach Redis when it first needs to know assumes a single Redis (see `guess_sync`).

Redis Cluster has only database 0; a path naming another database is refused by the cluster client.

Sentinel. `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]` (`rediss+sentinel://`
for TLS to the master) names the sentinels and the service they watch; the client (`redis.sentinel.Sentinel`,
`redis.asyncio.sentinel.Sentinel`, `master_for`) asks them for the current master on every new connection, so
after a failover the next connection goes to the promoted replica. The user and password are the master's; a
`sentinel_password=` query parameter authenticates to the sentinels. Sentinel is never a cluster.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.sentinel import Sentinel

from .errors import ConfigurationError

CLUSTER_PARAMETER = "cluster"
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
_ANSWERS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed `redis+sentinel://` URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    """Whether `url` names Sentinel (`redis+sentinel://`, `rediss+sentinel://`)."""
    return urlsplit(url).scheme.lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse a `redis+sentinel://` URL; raises ValueError saying what is wrong."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for address in filter(None, hosts.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {address!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("use redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    query = dict(parse_qsl(parts.query))
    return SentinelUrl(
        sentinels,
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
        query.get("sentinel_password"),
        parts.scheme.lower() == "rediss+sentinel",
    )


def split_url(url: str) -> tuple[str, bool | None]:
    """`url` without its `cluster=` parameter, and what that parameter said (None: absent, detect).
    Raises ConfigurationError for a value other than yes/no."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    said = [value for name, value in query if name == CLUSTER_PARAMETER]
    if not said:
        return url, None
    answer = _ANSWERS.get(said[-1].lower())
    if answer is None:
        raise ConfigurationError(f"the Redis URL's cluster= parameter must be yes or no, got {said[-1]!r}")
    rest = urlencode([(name, value) for name, value in query if name != CLUSTER_PARAMETER])
    return urlunsplit(parts._replace(query=rest)), answer


def _enabled(info: dict[str, Any]) -> bool:
    return str(info.get("cluster_enabled", 0)) == "1"


def detect_sync(url: str, *, timeout_s: float) -> bool:
    """Whether `url` names a cluster node: its `cluster=` parameter, else `INFO cluster` on it. Raises RedisError
    when the node cannot be reached, ConfigurationError for a bad parameter."""
    plain, said = split_url(url)
    if said is not None or is_sentinel(url):
        return bool(said)
    probe = redis.Redis.from_url(plain, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return _enabled(probe.info("cluster"))
    except ResponseError:
        return False  # INFO refused (an ACL without it): a single Redis, unless the URL says cluster=yes
    finally:
        probe.close()


def guess_sync(url: str, *, timeout_s: float) -> bool:
    """`detect_sync`, but False (a single Redis) when the node cannot be reached: for a process that must start
    without Redis and cannot wait to ask (a `cluster=yes` parameter removes the guess)."""
    try:
        return detect_sync(url, timeout_s=timeout_s)
    except (RedisError, OSError):
        return False


async def detect(url: str, *, timeout_s: float) -> bool:
    """Whether `url` names a cluster node: its `cluster=` parameter, else `INFO cluster` on it. Raises RedisError
    when the node cannot be reached (callers that can wait retry), ConfigurationError for a bad parameter."""
    plain, said = split_url(url)
    if said is not None or is_sentinel(url):
        return bool(said)
    probe = aioredis.Redis.from_url(plain, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return _enabled(await probe.info("cluster"))
    except ResponseError:
        return False  # INFO refused (an ACL without it): a single Redis, unless the URL says cluster=yes
    finally:
        await probe.aclose()


def async_client(url: str, *, cluster: bool, max_connections: int, **options: Any) -> Any:
    """An asyncio client for `url`: `redis.asyncio.Redis`, or `RedisCluster` (with `max_connections` per node)
    when `cluster`. `options` are those both take (timeouts, retry)."""
    plain, _ = split_url(url)
    if is_sentinel(url):
        where = parse_sentinel_url(url)
        watchers = AsyncSentinel(where.sentinels, sentinel_kwargs=_sentinel_options(where, options))  # type: ignore[no-untyped-call]
        return watchers.master_for(where.service, max_connections=max_connections, **_master_options(where, options))
    if cluster:
        return AsyncRedisCluster.from_url(plain, max_connections=max_connections, **options)
    return aioredis.Redis.from_url(plain, max_connections=max_connections, **options)


def sync_client(url: str, *, cluster: bool, **options: Any) -> Any:
    """A synchronous client for `url`: `redis.Redis`, or `RedisCluster` when `cluster`."""
    plain, _ = split_url(url)
    if is_sentinel(url):
        where = parse_sentinel_url(url)
        watchers = Sentinel(where.sentinels, sentinel_kwargs=_sentinel_options(where, options))  # type: ignore[no-untyped-call]
        return watchers.master_for(where.service, **_master_options(where, options))  # type: ignore[no-untyped-call]
    if cluster:
        return RedisCluster.from_url(plain, **options)
    return redis.Redis.from_url(plain, **options)


def _sentinel_options(where: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels themselves: the same timeouts, their own password."""
    found: dict[str, Any] = {
        name: options[name] for name in ("socket_timeout", "socket_connect_timeout") if name in options
    }
    if where.sentinel_password:
        found["password"] = where.sentinel_password
    return found


def _master_options(where: SentinelUrl, options: dict[str, Any]) -> dict[str, Any]:
    """The master's connection options: the caller's, the URL's database and credentials, TLS."""
    found = {**options, "db": where.db, "username": where.username, "password": where.password}
    if where.ssl:
        found["ssl"] = True
    return found


class NodeClients:
    """Plain asyncio clients to single masters of a cluster, one per node, for what must run on one connection
    to the master of a key's slot: a MULTI/EXEC (redis-py 8's asyncio cluster pipeline runs a transaction's every
    command in a thread of its own, blocking the event loop, and fails once its slot map needs refreshing) and a
    WAIT after writes. A caller that meets MOVED or a lost connection calls `refresh`: the slot map is learnt
    again and these clients are dropped."""

    def __init__(self, cluster: AsyncRedisCluster, max_connections: int = 64) -> None:
        self.cluster = cluster
        self.max_connections = max_connections
        self._clients: dict[str, aioredis.Redis] = {}

    def for_key(self, key: str) -> aioredis.Redis:
        """A client of the master serving `key`'s slot, with the cluster client's credentials, TLS and timeouts.
        Raises SlotNotCoveredError before the cluster client's first command (nothing is known yet)."""
        node = self.cluster.get_node_from_key(key)
        assert node is not None  # get_node_from_key raises rather than return None for a primary
        client = self._clients.get(node.name)
        if client is None:
            options = {name: value for name, value in node.connection_kwargs.items() if name not in ("host", "port")}
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class,
                host=node.host,
                port=int(node.port),
                max_connections=self.max_connections,
                **options,
            )
            client = self._clients[node.name] = aioredis.Redis(connection_pool=pool)
        return client

    async def refresh(self) -> None:
        """Forget these clients and learn the slot map again (best effort: the next call fails if it cannot)."""
        await self.aclose()
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self.cluster.nodes_manager.initialize()

    async def aclose(self) -> None:
        """Close every client."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
