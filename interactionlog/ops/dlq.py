"""Operating on the dead-letter stream: listing dead letters and replaying them onto the main stream.

Replay puts back the fields the publisher sent (see `worker.dead_letters.replay_fields`: a record that relied on
its entry id for `interaction_id` or `timestamp` gets the ones of the entry it was first published as) and removes
the dead letter in the same Lua script, which moves a dead letter only if it is still there: an entry is never both
replayed and still dead, nor gone from both, nor replayed twice by two operators replaying at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from .. import entry_ids
from ..replies import text
from ..worker.dead_letters import ERROR_TYPE, replay_fields

# Moves one dead letter back onto the stream if, and only if, it is still in the dead-letter stream. The XADD
# comes first: if it fails (a key of the wrong type), nothing has changed.
_MOVE = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


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


@dataclass
class ReplayOutcome:
    """What a replay did: (dead letter id, new stream entry id) per replayed dead letter, the ids asked for that
    are not in the dead-letter stream, and dead letters another replay moved first (not replayed twice)."""

    replayed: list[tuple[str, str]] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    taken_by_another: list[str] = field(default_factory=list)


async def replay_dead_letters(
    redis: aioredis.Redis,
    *,
    dead_letter_stream: str,
    stream: str,
    maxlen: int,
    count: int | None = None,
    ids: Sequence[str] = (),
    reason: str | None = None,
) -> ReplayOutcome:
    """Re-add dead letters to `stream` and delete them from the dead-letter stream, each atomically.

    Picks the given `ids`, else the oldest `count` (all when None), optionally only those of `reason`. Raises
    ValueError for an id that is not an entry id.
    """
    outcome = ReplayOutcome()
    chosen: list[RawEntry] = []
    if ids:
        for entry_id in ids:
            try:
                ms, seq = entry_ids.parse(entry_id)
            except ValueError:
                raise ValueError(f"{entry_id!r} is not an entry id (<milliseconds>-<sequence>)") from None
            # Exactly that id: XRANGE reads a bare <milliseconds> as a range (every sequence of that millisecond).
            exact = f"{ms}-{seq}"
            found = cast(list[RawEntry], await redis.xrange(dead_letter_stream, min=exact, max=exact))
            if not found:
                outcome.not_found.append(entry_id)
            chosen.extend(found)
    else:
        chosen = await _scan(redis, dead_letter_stream, count if count is not None else 2**62, reason)
    move = redis.register_script(_MOVE)
    for raw_id, fields in chosen:
        flat = [part for name, value in replay_fields(fields).items() for part in (name, value)]
        new_id = await move(keys=[dead_letter_stream, stream], args=[raw_id, maxlen, *flat])
        if new_id is None:
            outcome.taken_by_another.append(text(raw_id))
        else:
            outcome.replayed.append((text(raw_id), text(new_id)))
    return outcome
