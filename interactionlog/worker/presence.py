"""Which consumers of a group belong to a running worker: each worker process announces its consumers in a Redis
hash, `<stream>:interactionlog:consumers:<group>` (consumer name -> until when it counts as live, Unix ms), on
every housekeeping round, and removes them when it stops.

Redis itself cannot tell a live consumer from a departed one: XINFO CONSUMERS keeps every consumer until it is
deleted, and before Redis 7.2 a consumer's idle time resets only when it receives entries, so a live consumer of
a quiet stream looks exactly like one whose process is gone. `interactionlog status` reads this hash instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

import redis.asyncio as aioredis

from ..replies import text


def presence_key(stream: str, group: str) -> str:
    """The hash of `group`'s announced consumers."""
    return f"{stream}:interactionlog:consumers:{group}"


async def announce(redis: aioredis.Redis, stream: str, group: str, consumers: Iterable[str], ttl_ms: int) -> None:
    """Mark `consumers` live for the next `ttl_ms` milliseconds."""
    until = int(time.time() * 1000) + ttl_ms
    mapping = dict.fromkeys(consumers, until)
    if mapping:
        await redis.hset(presence_key(stream, group), mapping=cast(Any, mapping))


async def depart(redis: aioredis.Redis, stream: str, group: str, consumers: Iterable[str]) -> None:
    """Mark `consumers` departed now: their process is stopping. (Kept rather than removed, so the hash still
    says that interactionlog runs this group; housekeeping forgets them with the consumers themselves.)"""
    await announce(redis, stream, group, consumers, 0)


async def forget_departed(
    redis: aioredis.Redis, stream: str, group: str, in_group: set[str], older_than_ms: int
) -> None:
    """Drop entries of consumers no longer in the group, or not announced for `older_than_ms`."""
    announced = await live_until(redis, stream, group)
    cutoff = time.time() * 1000 - older_than_ms
    stale = [name for name, until in (announced or {}).items() if name not in in_group or until < cutoff]
    if stale:
        await redis.hdel(presence_key(stream, group), *stale)


async def live_until(redis: aioredis.Redis, stream: str, group: str) -> dict[str, int] | None:
    """Consumer name -> until when it counts as live (Unix ms); None when no worker ever announced any."""
    raw = await redis.hgetall(presence_key(stream, group))
    if not raw:
        return None
    return {text(name): int(value) for name, value in raw.items()}
