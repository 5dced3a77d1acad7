"""The gateway's health: liveness (its event loop turns) and readiness (Redis answers). Served as /livez and
/readyz on the HTTP port (or on the metrics port when HTTP is off), and as the gRPC health service's status.

PostgreSQL is deliberately not part of readiness: tokens checked before keep working while it is away, and an
unready gateway would refuse those MCPs too. A token it cannot check is answered 503 instead.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..probes import READY_TIMEOUT_S, LoopHeartbeat


class GatewayHealth(LoopHeartbeat):
    """Liveness and readiness of one `interactionlog serve` process."""

    def __init__(self, redis: aioredis.Redis, stopping: asyncio.Event, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.redis = redis
        self.stopping = stopping
        self.timeout_s = timeout_s
        super().__init__()

    async def readiness(self) -> dict[str, str]:
        """Each check's result, "ok" or what is wrong (never a secret); ready when all are "ok"."""
        if self.stopping.is_set():
            return {"gateway": "draining after a stop signal"}
        try:
            await asyncio.wait_for(self.redis.ping(), self.timeout_s)
        except (RedisError, OSError, TimeoutError) as error:
            return {"redis": f"unreachable: {str(error) or type(error).__name__}"}
        return {"redis": "ok"}
