"""Operating on the dead-letter stream: listing dead letters and replaying them onto the main stream.

Replay puts back exactly the fields the publisher sent (see `worker.dead_letters.original_fields`) and removes the dead
letter in the same MULTI/EXEC, so an entry is never both replayed and still dead, nor gone from both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from ..replies import text
from ..worker.dead_letters import ERROR_TYPE, original_fields


@dataclass(frozen=True)
class DeadLetterView:
    """One dead letter, decoded for people and JSON."""

    id: str
    fields: dict[str, str]


RawEntry = tuple[bytes, dict[bytes, bytes]]


async def _scan(redis: aioredis.Redis, dead_letter_stream: str, count: int, reason: str | None) -> list[RawEntry]:
    """The oldest `count` dead letters, of `reason` only when given, paging through with XRANGE."""
    found: list[RawEntry] = []
    start = "-"
    while len(found) < count:
        page = cast(
            list[RawEntry],
            await redis.xrange(dead_letter_stream, min=start, max="+", count=min(max(count, 100), 1000)),
        )
        if not page:
            break
        for entry_id, fields in page:
            if reason is None or fields.get(ERROR_TYPE) == reason.encode():
                found.append((entry_id, fields))
                if len(found) == count:
                    break
        start = "(" + text(page[-1][0])
    return found


async def list_dead_letters(
    redis: aioredis.Redis, dead_letter_stream: str, *, count: int, reason: str | None = None
) -> list[DeadLetterView]:
    """The oldest `count` dead letters (of `reason` only, when given)."""
    return [
        DeadLetterView(text(entry_id), {text(k): text(v) for k, v in fields.items()})
        for entry_id, fields in await _scan(redis, dead_letter_stream, count, reason)
    ]


async def replay_dead_letters(
    redis: aioredis.Redis,
    *,
    dead_letter_stream: str,
    stream: str,
    maxlen: int,
    count: int | None = None,
    ids: Sequence[str] = (),
    reason: str | None = None,
) -> list[tuple[str, str]]:
    """Re-add dead letters to `stream` and delete them from the dead-letter stream.

    Picks the given `ids`, else the oldest `count` (all when None), optionally only those of `reason`.
    Returns (dead letter id, new stream entry id) pairs; ids that are not in the dead-letter stream are skipped.
    """
    chosen: list[RawEntry] = []
    if ids:
        for entry_id in ids:
            chosen.extend(cast(list[RawEntry], await redis.xrange(dead_letter_stream, min=entry_id, max=entry_id)))
    else:
        chosen = await _scan(redis, dead_letter_stream, count if count is not None else 2**62, reason)
    replayed: list[tuple[str, str]] = []
    for raw_id, fields in chosen:
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(stream, cast(dict[Any, Any], original_fields(fields)), maxlen=maxlen, approximate=True)
        pipe.xdel(dead_letter_stream, raw_id)
        new_id, _ = await pipe.execute()
        replayed.append((text(raw_id), text(new_id)))
    return replayed
