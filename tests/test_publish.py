"""The publish helpers: what lands in the stream, what is refused before sending, and bounded failure."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import redis

from interactionlog import (
    AsyncPublisher,
    Interaction,
    InvalidRecordError,
    Publisher,
    PublishUnavailableError,
    RecordTooLargeError,
)

from .pipeline import record, stream_entries


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_publish_writes_the_documented_wire_format(redis_url: str) -> None:
    """publish() XADDs `v 1 data <JSON object>` and returns the new entry id."""
    with Publisher.from_url(redis_url) as publisher:
        entry_id = publisher.publish(record(1))
    [(stored_id, fields)] = stream_entries(redis.Redis.from_url(redis_url))
    assert stored_id == entry_id
    assert set(fields) == {b"v", b"data"}
    assert fields[b"v"] == b"1"
    data = json.loads(fields[b"data"])
    assert data["interaction_id"] == "rec-000001"
    assert Interaction.model_validate_json(fields[b"data"]).tool == "get_forecast"


def test_publish_many_sends_all_records_in_order(redis_url: str) -> None:
    """publish_many() adds every record, in order, and returns their ids."""
    with Publisher.from_url(redis_url, stream="s") as publisher:
        ids = publisher.publish_many(record(i) for i in range(250))
    entries = stream_entries(redis.Redis.from_url(redis_url), "s")
    assert [entry_id for entry_id, _ in entries] == ids
    assert [json.loads(fields[b"data"])["interaction_id"] for _, fields in entries] == [
        f"rec-{i:06d}" for i in range(250)
    ]


def test_publish_many_sends_nothing_when_one_record_is_invalid(redis_url: str) -> None:
    """Validation is all-or-nothing: an invalid record in a batch means nothing is sent."""
    with Publisher.from_url(redis_url) as publisher, pytest.raises(InvalidRecordError, match="field 'mcp_id'"):
        publisher.publish_many([record(1), {"tool": "no mcp_id"}, record(2)])
    assert redis.Redis.from_url(redis_url).xlen("interactions") == 0


def test_oversized_record_is_refused_before_sending(redis_url: str) -> None:
    """A record over max_record_bytes raises RecordTooLargeError and is not published."""
    with (
        Publisher.from_url(redis_url, max_record_bytes=4096) as publisher,
        pytest.raises(RecordTooLargeError, match="4096-byte cap"),
    ):
        publisher.publish(record(1, response={"text": "x" * 5000}))
    assert redis.Redis.from_url(redis_url).xlen("interactions") == 0


def test_stream_is_capped_approximately(redis_url: str) -> None:
    """Every XADD carries MAXLEN ~ cap, so the stream stays near the cap instead of growing without bound."""
    with Publisher.from_url(redis_url, maxlen=100) as publisher:
        for start in range(0, 3000, 500):
            publisher.publish_many(record(i) for i in range(start, start + 500))
    length = redis.Redis.from_url(redis_url).xlen("interactions")
    assert 100 <= length < 1000


def test_unreachable_redis_raises_one_documented_error_quickly() -> None:
    """With Redis down, publish raises PublishUnavailableError within the bounded wait instead of hanging."""
    publisher = Publisher.from_url(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(PublishUnavailableError, match="not confirmed"):
        publisher.publish(record(1))
    with pytest.raises(PublishUnavailableError):
        publisher.publish_many([record(2)])
    assert time.monotonic() - started < 5


def test_async_publisher_matches_the_sync_one(redis_url: str) -> None:
    """AsyncPublisher validates and writes exactly like Publisher, and fails the same way."""

    async def scenario() -> tuple[str, list[str]]:
        async with AsyncPublisher.from_url(redis_url) as publisher:
            first = await publisher.publish(record(1))
            rest = await publisher.publish_many([record(2), record(3)])
            with pytest.raises(InvalidRecordError, match="field 'duration_ms'"):
                await publisher.publish(record(4, duration_ms="slow"))
        down = AsyncPublisher.from_url(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5)
        with pytest.raises(PublishUnavailableError):
            await down.publish(record(5))
        await down.close()
        return first, rest

    first, rest = asyncio.run(scenario())
    entries = stream_entries(redis.Redis.from_url(redis_url))
    assert [entry_id for entry_id, _ in entries] == [first, *rest]
