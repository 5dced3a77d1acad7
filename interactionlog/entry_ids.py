"""Stream entry ids (``<milliseconds>-<sequence>``) as numbers and as times.

Redis orders entry ids by the millisecond part, then the sequence; an id given without a sequence means
sequence 0 where Redis accepts that (XTRIM MINID, XRANGE). The housekeeping Lua script carries its own copy of
`parse` and `greater`, since Lua cannot call Python; keep them in step.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def parse(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; a missing sequence is 0. Raises ValueError otherwise."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(entry_id: str) -> str:
    """The smallest id greater than `entry_id`."""
    ms, seq = parse(entry_id)
    return f"{ms}-{seq + 1}"


def lowest(*entry_ids: str) -> str:
    """The lowest of the ids, compared as Redis compares them (not as strings)."""
    return min(entry_ids, key=parse)


def added_at(entry_id: str) -> datetime:
    """When Redis added the entry: the millisecond part of its id, as an aware UTC datetime."""
    return datetime.fromtimestamp(parse(entry_id)[0] / 1000, UTC)


def age_s(entry_id: str, now_s: float | None = None) -> float:
    """Seconds since Redis added the entry with this id (never negative, whatever the clocks say)."""
    now_s = time.time() if now_s is None else now_s
    return max(now_s - parse(entry_id)[0] / 1000, 0.0)
