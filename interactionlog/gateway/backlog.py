"""The backlog guard: the stream's length and the group's lag, read every `backlog_interval_s`, so that the
gateways answer 429 (gRPC RESOURCE_EXHAUSTED) before the MAXLEN cap would trim entries no worker has read.

Read on an interval rather than per request: two cheap commands a second whatever the request rate. While Redis
does not answer, the last reading is dropped (the XADD itself will say 503), never taken as "no backlog" or
"full".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ..replies import is_missing_key, text
from ..retry import periodically


@dataclass(frozen=True)
class Backlog:
    """One reading: entries in the stream, and entries not yet delivered to the group (None: unknown)."""

    length: int
    lag: int | None


class BacklogGuard:
    """Reads the backlog periodically and says whether it is over the thresholds (0 disables one)."""

    def __init__(self, redis: aioredis.Redis, *, stream: str, group: str, max_stream_length: int, max_lag: int) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.max_stream_length = max_stream_length
        self.max_lag = max_lag
        self.last: Backlog | None = None

    async def read(self) -> Backlog:
        """Read the backlog now and keep it as `last`."""
        self.last = None
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError as error:
            if not is_missing_key(error):
                raise
            self.last = Backlog(0, 0)  # no stream yet: nothing waits
            return self.last
        length = int(await self.redis.xlen(self.stream))
        lag = next((group.get("lag") for group in groups if text(group["name"]) == self.group), None)
        self.last = Backlog(length, None if lag is None else int(lag))
        return self.last

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        """Read every `interval_s` until `stopping` is set."""
        await periodically(
            self.read, interval_s=interval_s, name="backlog_check", stopping=stopping, expected=(RedisError, OSError)
        )

    def over(self) -> str | None:
        """Why new records must wait (a sentence naming the threshold), or None."""
        last = self.last
        if last is None:
            return None
        if self.max_stream_length and last.length > self.max_stream_length:
            return (
                f"the stream {self.stream!r} holds {last.length} entries, over --max-stream-length "
                f"{self.max_stream_length}: the workers are behind; send again later"
            )
        if self.max_lag and last.lag is not None and last.lag > self.max_lag:
            return (
                f"the group {self.group!r} lags {last.lag} entries behind, over --max-lag {self.max_lag}: the "
                "workers are behind; send again later"
            )
        return None
