"""The worker's health: liveness (its event loop turns) and readiness (Redis answers, the group exists, PostgreSQL
answers and would take rows: the table exists, the worker may insert, the session is writable, and the last batch
was not refused by PostgreSQL as a whole). Served by `probes.MetricsServer` as /livez and /readyz; 503 once the
worker drains after SIGTERM."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ..probes import READY_TIMEOUT_S, LoopHeartbeat
from ..replies import is_missing_key, text
from .store import Store


class Health(LoopHeartbeat):
    """Liveness (the event loop turns) and readiness (Redis and PostgreSQL answer, the group exists)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: Store,
        *,
        stream: str,
        group: str,
        stopping: asyncio.Event,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream
        self.group = group
        self.stopping = stopping
        self.timeout_s = timeout_s
        super().__init__()

    async def readiness(self) -> dict[str, str]:
        """Each check's result, "ok" or what is wrong (never a secret); ready when all are "ok"."""
        if self.stopping.is_set():
            return {"worker": "draining after a stop signal"}
        (redis_state, group_state), postgres_state = await asyncio.gather(self._check_redis(), self._check_postgres())
        return {"redis": redis_state, "postgres": postgres_state, "group": group_state}

    async def _check_redis(self) -> tuple[str, str]:
        try:
            groups = await asyncio.wait_for(self.redis.xinfo_groups(self.stream), self.timeout_s)
        except ResponseError as error:
            if is_missing_key(error):
                return "ok", f"missing: stream {self.stream} does not exist yet"
            return f"failed: {error}", "unknown"
        except (RedisError, OSError, TimeoutError) as error:
            return f"unreachable: {str(error) or type(error).__name__}", "unknown"
        names = {text(group["name"]) for group in groups}
        return "ok", "ok" if self.group in names else f"missing: no group {self.group} on stream {self.stream}"

    async def _check_postgres(self) -> str:
        try:
            problem = await asyncio.wait_for(self.store.readiness_problem(), self.timeout_s)
        except TimeoutError:
            return f"unreachable: no answer within {self.timeout_s}s"
        return problem or "ok"
