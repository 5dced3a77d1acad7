"""The original design's consumer: XREADGROUP COUNT 100, then for each entry one INSERT and one XACK.

Each INSERT commits on its own (autocommit), so every entry costs a durable commit and two round trips. Entries
are validated with the same model as interactionlog's worker, so only the write path differs.

Run: python -m benchmarks.per_message REDIS_URL DATABASE_URL STREAM GROUP CONSUMER
"""

from __future__ import annotations

import contextlib
import signal
import sys
from types import FrameType
from typing import Any

import psycopg
import redis
from psycopg import sql

from interactionlog.errors import PermanentEntryError
from interactionlog.worker.decode import StoredRow, decode_entry

MAX_RECORD_BYTES = 256 * 1024
COUNT = 100
BLOCK_MS = 1000

INSERT = sql.SQL("INSERT INTO interaction_logs ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(sql.Identifier(name) for name in StoredRow._fields),
    sql.SQL(", ").join(sql.Placeholder() * len(StoredRow._fields)),
)


def run(redis_url: str, database_url: str, stream: str, group: str, consumer: str) -> None:
    """Consume until SIGTERM or SIGINT; the entry in hand is finished first."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client = redis.Redis.from_url(redis_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        while not stopping:
            reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=COUNT, block=BLOCK_MS)
            if not reply:
                continue
            for raw_id, fields in reply[0][1]:
                entry_id = raw_id.decode()
                # The original design logged and dropped invalid entries; the benchmark's records are all valid.
                with contextlib.suppress(PermanentEntryError):
                    conn.execute(INSERT, decode_entry(entry_id, fields, MAX_RECORD_BYTES))
                client.xack(stream, group, entry_id)
    client.close()


if __name__ == "__main__":
    run(*sys.argv[1:6])
