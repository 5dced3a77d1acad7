"""A snapshot of the pipeline as Redis sees it: stream length, each group's lag and pending entries, consumers,
and the dead-letter stream. Rendered by `interactionlog status` (`ops.status`) and served as the worker's gauges.

Field meanings follow Redis and redis_exporter: `lag` is entries not yet delivered to the group (None when
Redis cannot tell, e.g. after entries were deleted; never reported as 0 in that case), `pending` is delivered
but not acknowledged, `oldest_pending_age_s` is how long ago the oldest pending entry was added. A consumer is
`live` when a running worker announced it recently (`presence`), False when none did (its process is gone),
None when no worker announces consumers of that group at all (a group interactionlog does not run).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .. import entry_ids
from ..replies import is_missing_key, text
from .presence import live_until


@dataclass(frozen=True)
class ConsumerStatus:
    """One consumer of a group, as XINFO CONSUMERS reports it, and whether a running worker holds it."""

    name: str
    pending: int
    idle_s: float
    live: bool | None = None


@dataclass(frozen=True)
class GroupStatus:
    """One consumer group on the stream."""

    name: str
    lag: int | None
    pending: int
    oldest_pending_id: str | None
    oldest_pending_age_s: float | None
    last_delivered_id: str
    consumers: list[ConsumerStatus] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineStatus:
    """Everything `interactionlog status` shows."""

    stream: str
    stream_exists: bool
    length: int
    groups: list[GroupStatus]
    dead_letter_stream: str
    dead_letters: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


async def collect_status(redis: aioredis.Redis, stream: str, dead_letter_stream: str) -> PipelineStatus:
    """Read the pipeline's state with XINFO, XPENDING and XLEN (a handful of O(1)-ish commands per group)."""
    dead_letters = int(await redis.xlen(dead_letter_stream))
    try:
        groups_raw = await redis.xinfo_groups(stream)
    except ResponseError as error:
        if not is_missing_key(error):
            raise
        return PipelineStatus(stream, False, 0, [], dead_letter_stream, dead_letters)
    length = int(await redis.xlen(stream))
    groups = [await _group_status(redis, stream, raw) for raw in groups_raw]
    return PipelineStatus(stream, True, length, groups, dead_letter_stream, dead_letters)


async def _group_status(redis: aioredis.Redis, stream: str, raw: dict[str, Any]) -> GroupStatus:
    name = text(raw["name"])
    summary = await redis.xpending(stream, name)
    oldest = text(summary["min"]) if summary.get("min") else None
    announced = await live_until(redis, stream, name)
    now_ms = time.time() * 1000

    def live(consumer: str) -> bool | None:
        return None if announced is None else announced.get(consumer, 0) > now_ms

    consumers = [
        ConsumerStatus(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000, live(text(c["name"])))
        for c in await redis.xinfo_consumers(stream, name)
    ]
    lag = raw.get("lag")
    return GroupStatus(
        name=name,
        lag=None if lag is None else int(lag),
        pending=int(raw["pending"]),
        oldest_pending_id=oldest,
        oldest_pending_age_s=entry_ids.age_s(oldest) if oldest else None,
        last_delivered_id=text(raw["last-delivered-id"]),
        consumers=consumers,
    )
