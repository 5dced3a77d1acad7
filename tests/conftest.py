"""Fixtures giving each test real Redis and PostgreSQL servers that the suite starts and removes itself.

Shared servers live for the session and each test gets a clean slate on them (a flushed Redis, a fresh
database); a test that kills, freezes or restarts a server asks for `own_redis` or `own_postgres` instead.
Both take keyword arguments through indirect parametrisation:

    @pytest.mark.parametrize("own_redis", [{"appendonly": True}], indirect=True)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.servers import PostgresServer, RedisCluster, RedisSentinels, RedisServer

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; tests must not stop it (use `own_postgres` for that)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def database_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database on the session server, dropped after the test."""
    # Named after the test, so a leftover connection in pg_stat_activity says whose it is; 63 bytes is
    # PostgreSQL's identifier limit.
    slug = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())
    name = f"t{next(_database_numbers):04d}_{slug}"[:63]
    url = postgres_server.create_database(name)
    yield url
    # Dropped rather than left for the session's end: each database costs ~7.5 MB of disk.
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the whole session; tests must not stop it (use `own_redis` for that)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session Redis server, emptied with FLUSHALL before the test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


def _server_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = getattr(request, "param", {})
    return options


@pytest.fixture
def own_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A started Redis server of the test's own, killed and deleted afterwards whatever the test did to it."""
    with RedisServer(**_server_options(request)) as server:
        yield server


@pytest.fixture
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[RedisCluster]:
    """A Redis Cluster of the test's own on loopback (3 masters, 1 replica each by default), killed and deleted
    afterwards; a test may kill its nodes."""
    with RedisCluster(**_server_options(request)) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinels(request: pytest.FixtureRequest) -> Iterator[RedisSentinels]:
    """A master, a replica and 3 sentinels of the test's own on loopback, killed and deleted afterwards."""
    with RedisSentinels(**_server_options(request)) as setup:
        yield setup


@pytest.fixture
def own_postgres(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A started PostgreSQL server of the test's own, killed and deleted afterwards whatever the test did to it."""
    with PostgresServer(**_server_options(request)) as server:
        yield server
