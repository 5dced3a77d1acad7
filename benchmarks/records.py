"""The records every contender drains: realistic MCP `tools/call` interactions of about 700 bytes of JSON.

They are generated from a seeded random source, so every contender of a run sees the same bytes; only the
timestamps move with the clock (the newest is "now"), so the worker's end-to-end latency metric sees realistic ages.
The prefill keeps what the machine's bound needs, the same rows already encoded for COPY (text and binary), so the
bound does no parsing at all.
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

STREAM = "bench:interactions"
SEED = 20_240_601
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_SERVERS = ("github-mcp", "filesystem-mcp", "postgres-mcp", "slack-mcp", "jira-mcp", "search-mcp")
_TOOLS = ("search_issues", "read_file", "list_directory", "run_query", "post_message", "get_ticket", "web_search")
_CLIENTS = (("claude-desktop", "0.9.2"), ("cursor", "1.4.0"), ("vscode-copilot", "1.250.0"), ("zed", "0.190.1"))
_WORDS = (
    "repository", "issue", "pull", "request", "branch", "merge", "commit", "review", "label", "milestone",
    "assignee", "status", "open", "closed", "deploy", "pipeline", "failure", "timeout", "retry", "cache", "index",
    "query", "table", "schema", "migration", "latency", "error", "warning",
)  # fmt: skip

# COPY's text format: backslash, tab, newline and carriage return are the characters that must be escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def make_record(rng: random.Random, index: int, epoch: datetime) -> dict[str, Any]:
    """One MCP tool call as a publisher would pass it, with a unique interaction_id, `index` ms after `epoch`."""
    tool = rng.choice(_TOOLS)
    request_id = index % 100_000
    failed = rng.random() < 0.05
    client_name, client_version = rng.choice(_CLIENTS)
    record: dict[str, Any] = {
        "mcp_id": rng.choice(_SERVERS),
        "interaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": (epoch + timedelta(milliseconds=index)).isoformat(),
        "method": "tools/call",
        "tool": tool,
        "session_id": f"sess-{rng.getrandbits(64):016x}",
        "request_id": request_id,
        "request": {"name": tool, "arguments": {"query": _words(rng, 5), "limit": rng.choice((10, 20, 50))}},
        "response": {
            "content": [{"type": "text", "text": _words(rng, 12)}],
            "isError": failed,
        },
        "is_error": failed,
        "duration_ms": round(rng.uniform(0.5, 900.0), 3),
        "trace_id": f"{rng.getrandbits(128):032x}",
        "span_id": f"{rng.getrandbits(64):016x}",
        "client": {"name": client_name, "version": client_version},
        "metadata": {"region": rng.choice(("eu-west-1", "us-east-1")), "host": f"mcp-{rng.randrange(16)}"},
    }
    if failed:
        record["error"] = {"code": -32000, "message": "upstream timed out"}
    return record


def encode(record: dict[str, Any]) -> bytes:
    """The `data` field as a publisher writes it: compact JSON."""
    return json.dumps(record, separators=(",", ":")).encode()


def records(count: int, seed: int = SEED) -> Iterator[dict[str, Any]]:
    """`count` records, the same ones for the same seed but for timestamps: one per ms, the last one now."""
    rng = random.Random(seed)
    epoch = datetime.now(UTC) - timedelta(milliseconds=count)
    for index in range(count):
        yield make_record(rng, index, epoch)


def _copy_text(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


def copy_line(record: dict[str, Any], data: bytes, entry_id: str) -> bytes:
    """One row of `interaction_logs` (the worker's column list) in COPY text format."""
    fields = (
        record["mcp_id"],
        record["interaction_id"],
        record["timestamp"],
        record["method"],
        record["tool"],
        record["session_id"],
        "t" if record["is_error"] else "f",
        repr(record["duration_ms"]),
        record["trace_id"],
        data.decode(),
        entry_id,
    )
    return ("\t".join(_copy_text(value) for value in fields) + "\n").encode()


_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_BINARY_TRAILER = struct.pack("!h", -1)


def _binary_field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def binary_row(record: dict[str, Any], data: bytes, entry_id: str) -> bytes:
    """The same row in COPY's binary format: text as UTF-8, timestamptz as microseconds since 2000-01-01 UTC,
    float8 big-endian, jsonb as version byte 1 followed by the JSON text."""
    micros = (datetime.fromisoformat(record["timestamp"]) - _PG_EPOCH) // timedelta(microseconds=1)
    text = [record[name].encode() for name in ("mcp_id", "interaction_id")]
    more = [record[name].encode() for name in ("method", "tool", "session_id")]
    fields = [
        *text,
        struct.pack("!q", micros),
        *more,
        b"\x01" if record["is_error"] else b"\x00",
        struct.pack("!d", record["duration_ms"]),
        record["trace_id"].encode(),
        b"\x01" + data,
        entry_id.encode(),
    ]
    return struct.pack("!h", len(fields)) + b"".join(_binary_field(value) for value in fields)


@dataclass
class Prefilled:
    """What the prefill left behind: the stream, its entry ids in order, and the bound's COPY blocks (one COPY
    payload per block of rows, in text and in binary format)."""

    stream: str
    entry_ids: list[str]
    copy_blocks: dict[str, list[bytes]] = field(default_factory=lambda: {"text": [], "binary": []})
    mean_record_bytes: float = 0.0
    rows_per_block: int = 0

    @property
    def last_id(self) -> str:
        """The id of the newest entry: a group has drained everything once it delivered this one."""
        return self.entry_ids[-1]


def prefill(redis_url: str, count: int, *, copy_rows_per_block: int, chunk: int = 5000) -> Prefilled:
    """XADD `count` records (pipelined, `MAXLEN ~` well above `count` so nothing is trimmed) and keep the rows.

    Entries as this package's publishers write them: each record carries its timestamp, so `identity exact`
    (README "Idempotency"), and the worker stores it without the dedupe window's probe."""
    # Imported here: the rest of this module serves `publish_ab`, which runs under older checkouts too.
    from interactionlog.record import entry_fields  # noqa: PLC0415  # see above

    client = redis.Redis.from_url(redis_url)
    client.delete(STREAM)
    result = Prefilled(STREAM, [], rows_per_block=copy_rows_per_block)
    lines: list[bytes] = []
    binary: list[bytes] = []
    total_bytes = 0
    pending: list[tuple[dict[str, Any], bytes]] = []

    def cut_blocks() -> None:
        result.copy_blocks["text"].append(b"".join(lines))
        result.copy_blocks["binary"].append(b"".join([_BINARY_HEADER, *binary, _BINARY_TRAILER]))
        lines.clear()
        binary.clear()

    def flush() -> None:
        nonlocal total_bytes
        pipe = client.pipeline(transaction=False)
        for _, data in pending:
            fields: dict[Any, Any] = entry_fields(data, exact=True)  # redis-py types its fields loosely
            pipe.xadd(STREAM, fields, maxlen=2 * count + 10_000, approximate=True)
        ids = [raw.decode() for raw in pipe.execute()]
        result.entry_ids.extend(ids)
        for (record, data), entry_id in zip(pending, ids, strict=True):
            total_bytes += len(data)
            lines.append(copy_line(record, data, entry_id))
            binary.append(binary_row(record, data, entry_id))
            if len(lines) == copy_rows_per_block:
                cut_blocks()
        pending.clear()

    for record in records(count):
        pending.append((record, encode(record)))
        if len(pending) == chunk:
            flush()
    if pending:
        flush()
    if lines:
        cut_blocks()
    client.close()
    result.mean_record_bytes = total_bytes / max(count, 1)
    return result
