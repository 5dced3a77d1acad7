"""The backlog guard: each shard's stream length and its group's lag, read every `backlog_interval_s`, so that the
gateways answer 429 (gRPC RESOURCE_EXHAUSTED) before the MAXLEN cap would trim entries no worker has read.

With several shards (`shards.Layout`) every shard's stream is read, and the worst one decides: the cap trims
each shard's stream on its own, so one shard over the threshold is enough to lose entries (a hot MCP routes all
its records to one shard). Refusing every record then, not only that shard's, keeps the answer a property of the
gateway's state rather than of each record, as the HTTP status of a whole request must be.

Read on an interval rather than per request: two cheap commands a second whatever the request rate. While Redis
does not answer, the last reading is dropped (the XADD itself will say 503), never taken as "no backlog" or
"full".
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
    """Reads the backlog of every stream in `streams` (one per shard) periodically and says whether one is over
    the thresholds (0 disables one)."""

    def __init__(
        self, redis: aioredis.Redis, *, streams: Sequence[str], group: str, max_stream_length: int, max_lag: int
    ) -> None:
        if not streams:
            raise ValueError("the backlog guard needs at least one stream")
        self.redis = redis
        self.streams = tuple(streams)
        self.group = group
        self.max_stream_length = max_stream_length
        self.max_lag = max_lag
        self.last: dict[str, Backlog] | None = None

    async def read(self) -> dict[str, Backlog]:
        """Read every stream's backlog now and keep them as `last` (stream name -> reading)."""
        self.last = None
        readings = {stream: await self._read(stream) for stream in self.streams}
        self.last = readings
        return readings

    async def _read(self, stream: str) -> Backlog:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError as error:
            if not is_missing_key(error):
                raise
            return Backlog(0, 0)  # no stream yet: nothing waits
        length = int(await self.redis.xlen(stream))
        lag = next((group.get("lag") for group in groups if text(group["name"]) == self.group), None)
        return Backlog(length, None if lag is None else int(lag))

    async def run(self, interval_s: float, stopping: asyncio.Event) -> None:
        """Read every `interval_s` until `stopping` is set."""
        await periodically(
            self.read, interval_s=interval_s, name="backlog_check", stopping=stopping, expected=(RedisError, OSError)
        )

    def over(self) -> str | None:
        """Why new records must wait (a sentence naming the stream and the threshold), or None."""
        for stream, last in (self.last or {}).items():
            if self.max_stream_length and last.length > self.max_stream_length:
                return (
                    f"the stream {stream!r} holds {last.length} entries, over --max-stream-length "
                    f"{self.max_stream_length}: the workers are behind; send again later"
                )
            if self.max_lag and last.lag is not None and last.lag > self.max_lag:
                return (
                    f"the group {self.group!r} lags {last.lag} entries behind on {stream!r}, over --max-lag "
                    f"{self.max_lag}: the workers are behind; send again later"
                )
        return None
