"""The peer contender: what a Python user would write with FastStream instead of running interactionlog.

FastStream's Redis `StreamSub` reads batches of 500 in a consumer group and acknowledges each batch after the
handler returns; the handler validates every entry with the same model as interactionlog (so both do the same
work per entry) and stores the batch with one psycopg 3 `executemany` INSERT ... ON CONFLICT DO NOTHING.

Run: python -m benchmarks.faststream_consumer REDIS_URL DATABASE_URL STREAM GROUP CONSUMER [BATCH]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import psycopg
from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from psycopg import sql

from interactionlog.worker.decode import StoredRow, decode_entry

MAX_RECORD_BYTES = 256 * 1024

INSERT = sql.SQL("INSERT INTO interaction_logs ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(sql.Identifier(name) for name in StoredRow._fields),
    sql.SQL(", ").join(sql.Placeholder() * len(StoredRow._fields)),
)


def build_app(redis_url: str, database_url: str, *, stream: str, group: str, consumer: str, batch: int) -> FastStream:
    """A FastStream app whose one batch subscriber stores every entry of `stream` read through `group`."""
    broker = RedisBroker(redis_url)
    app = FastStream(broker, logger=None)
    state: dict[str, psycopg.AsyncConnection[Any]] = {}

    @app.on_startup
    async def connect() -> None:
        state["conn"] = await psycopg.AsyncConnection.connect(database_url)

    @app.after_shutdown
    async def disconnect() -> None:
        await state["conn"].close()

    @broker.subscriber(
        stream=StreamSub(stream, group=group, consumer=consumer, batch=True, max_records=batch, polling_interval=1000)
    )
    async def store(body: list[Any], message: RedisBatchStreamMessage) -> None:
        # The entries were XADDed by interactionlog publishers (fields v and data), not by FastStream, so the
        # raw fields are read from the message rather than from FastStream's decoded body.
        raw = message.raw_message
        rows = [
            decode_entry(entry_id.decode(), fields, MAX_RECORD_BYTES)
            for entry_id, fields in zip(raw["message_ids"], raw["data"], strict=True)
        ]
        conn = state["conn"]
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(INSERT, rows)

    return app


def main(argv: list[str]) -> None:
    """Run until SIGTERM or SIGINT, which FastStream turns into a graceful stop."""
    redis_url, database_url, stream, group, consumer, *rest = argv
    batch = int(rest[0]) if rest else 500
    app = build_app(redis_url, database_url, stream=stream, group=group, consumer=consumer, batch=batch)
    asyncio.run(app.run())


if __name__ == "__main__":
    main(sys.argv[1:])
