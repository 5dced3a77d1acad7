"""Shards: the N streams a pipeline's records are spread over, their key names, and which shard a record goes to.

Key layout. With one shard (the default) every key keeps the name it always had: the stream `<stream>`, its
dead-letter stream `<stream>:dlq` (or `--dead-letter-stream`), and the bookkeeping keys the worker derives from the
stream's name (`<stream>:interactionlog:...`). An existing install is untouched.

With N > 1 shards, shard i's stream is `<stream>:{<tag_i>}` and its dead-letter stream `<dead letters>:{<tag_i>}`;
bookkeeping keys are derived from the shard's stream name as before, so they carry the same hash tag. Redis Cluster
hashes only the text between the braces, so everything one shard's commands touch together (its stream, its
dead-letter stream, its loss hash, its presence hash, its gauge snapshot) lives in one slot, and every MULTI and
Lua script of the worker stays in one slot.

Tags. `tag_i` is the first of `s<i>`, `s<i>.1`, `s<i>.2`, ... whose slot (CRC16 mod 16384, redis-py's
`key_slot`) falls in the i-th of N equal slot ranges. A cluster whose masters split the slots evenly (what
`redis-cli --cluster create` does) therefore gets its shards spread evenly over every master, whatever N; the
search is deterministic, so every publisher and worker computes the same names without talking to each other.

Routing. A record goes to shard `crc32(mcp_id) mod N` (zlib's CRC-32, stable across processes and Python versions,
unlike the salted `hash()`), so all records of one MCP go through one stream and keep their order.

A single-shard layout on Redis Cluster needs its keys in one slot too: give the stream a hash tag
(`--stream '{interactions}'`); `check_one_slot` says so when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .errors import ConfigurationError
from .record import DATA_FIELD

_SHARD_STREAM = re.compile(r":\{(s\d+(?:\.\d+)?)\}$")

SHARDS_VARIABLE = "INTERACTIONLOG_SHARDS"  # the worker's `--shards` reads the same variable

MAX_SHARDS = 256  # 64 slots per shard at least: the tag search stays short, shards stay movable apart

# How many candidate tags the search tries per shard before giving up (never reached for N <= MAX_SHARDS:
# a range of 64 slots is hit by a uniform hash within a few thousand tries with overwhelming probability).
_MAX_CANDIDATES = 1_000_000


@cache
def shard_tag(index: int, shards: int) -> str:
    """The hash tag of shard `index` of `shards`: the first candidate whose slot lies in that shard's range."""
    low = index * REDIS_CLUSTER_HASH_SLOTS // shards
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    for attempt in range(_MAX_CANDIDATES):
        tag = f"s{index}" if attempt == 0 else f"s{index}.{attempt}"
        if low <= key_slot(tag.encode()) < high:
            return tag
    raise AssertionError(f"no hash tag found for shard {index} of {shards}")  # pragma: no cover


@dataclass(frozen=True)
class Shard:
    """One shard's keys: `stream` and `dead_letter_stream` share a hash slot when `index` is of a sharded layout."""

    index: int
    stream: str
    dead_letter_stream: str
    tag: str = ""  # empty in a single-stream layout

    @property
    def identity_prefix(self) -> str:
        """What a record without `interaction_id` gets before the entry id that stands in for it: nothing in a
        single-stream layout (records stored before sharding keep their identity), the shard's tag and a slash
        otherwise (`s3.12/1700000000000-0`), since two shards can hand out the same entry id."""
        return identity_prefix(self.stream)


@dataclass(frozen=True)
class Layout:
    """The shards of one pipeline: `shards` streams named after `stream` (see the module docstring)."""

    stream: str
    shards: int = 1
    dead_letter_stream: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigurationError(f"shards must be between 1 and {MAX_SHARDS}, got {self.shards}")
        if self.shards > 1 and ("{" in self.stream or "{" in self.dead_letter_stream):
            raise ConfigurationError(
                f"stream {self.stream!r} carries a hash tag; with --shards > 1 the shards add their own, so "
                "name the stream without braces"
            )

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream's base name: `dead_letter_stream`, or `<stream>:dlq`."""
        return self.dead_letter_stream or f"{self.stream}:dlq"

    def shard(self, index: int) -> Shard:
        """Shard `index` (0-based)."""
        if self.shards == 1:
            return Shard(0, self.stream, self.dead_letters)
        tag = shard_tag(index, self.shards)
        return Shard(index, f"{self.stream}:{{{tag}}}", f"{self.dead_letters}:{{{tag}}}", tag)

    def all(self) -> list[Shard]:
        """Every shard, in index order."""
        return [self.shard(index) for index in range(self.shards)]

    def route(self, mcp_id: str) -> int:
        """The shard index of a record of `mcp_id`."""
        return shard_index(mcp_id, self.shards)


def default_shards() -> int:
    """The publishers' default shard count: $INTERACTIONLOG_SHARDS, else 1. Raises ConfigurationError."""
    raw = os.environ.get(SHARDS_VARIABLE, "").strip() or "1"
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{SHARDS_VARIABLE} must be a whole number of shards, got {raw!r}") from None


def shard_index(mcp_id: str, shards: int) -> int:
    """`crc32(mcp_id) mod shards`: stable everywhere, so one MCP's records always take the same stream."""
    return 0 if shards == 1 else zlib.crc32(mcp_id.encode("utf-8", "surrogatepass")) % shards


def identity_prefix(stream: str) -> str:
    """`s<i>[.<k>]/` for a shard stream (`<stream>:{s<i>[.<k>]}`), "" for any other stream: what goes before an
    entry id standing in for a missing `interaction_id` (the worker's, and `dlq replay`'s from a dead letter's
    `stream` field)."""
    found = _SHARD_STREAM.search(stream)
    return f"{found.group(1)}/" if found else ""


def entry_mcp_id(fields: Mapping[bytes, bytes]) -> str:
    """The `mcp_id` inside an encoded entry (its `data` JSON); "" when it has none (such an entry is routed like
    any other and dead-lettered by the worker of its shard)."""
    try:
        value = json.loads(fields[DATA_FIELD])
    except (KeyError, ValueError):
        return ""
    mcp_id = value.get("mcp_id") if isinstance(value, dict) else None
    return mcp_id if isinstance(mcp_id, str) else ""


def layouts(stream: str, shards: int, dead_letter_stream: str, drain_shards: Iterable[int] = ()) -> list[Layout]:
    """The layout publishers write to (first), then the older layouts workers still drain (`--drain-shards`),
    each once."""
    found = [Layout(stream, shards, dead_letter_stream)]
    for count in drain_shards:
        if count not in (layout.shards for layout in found):
            found.append(Layout(stream, count, dead_letter_stream))
    return found


def check_one_slot(shard: Shard) -> None:
    """Raise ConfigurationError when a shard's keys would land in different cluster slots (a single-stream layout
    whose stream name carries no hash tag): its MULTI/EXEC and scripts would be refused with CROSSSLOT."""
    if key_slot(shard.stream.encode()) != key_slot(shard.dead_letter_stream.encode()):
        raise ConfigurationError(
            f"on Redis Cluster the stream {shard.stream!r} and its dead-letter stream {shard.dead_letter_stream!r} "
            "must share a hash slot: use --shards 2 or more, or name the stream with a hash tag, e.g. "
            "--stream '{interactions}'"
        )
