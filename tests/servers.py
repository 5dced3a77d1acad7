"""The suite's throwaway servers: the names of `interactionlog.ops.servers`, which `interactionlog dev` shares.

Kept so tests import them as `from .servers import free_port, PostgresServer, RedisServer`.
"""

from __future__ import annotations

from interactionlog.ops.servers import (
    POSTGRES_OS_USER,
    PgBouncerServer,
    PostgresServer,
    RedisCluster,
    RedisSentinels,
    RedisServer,
    ServerError,
    StopMode,
    free_port,
    postgres_bindir,
)

__all__ = [
    "POSTGRES_OS_USER",
    "PgBouncerServer",
    "PostgresServer",
    "RedisCluster",
    "RedisSentinels",
    "RedisServer",
    "ServerError",
    "StopMode",
    "free_port",
    "postgres_bindir",
]
