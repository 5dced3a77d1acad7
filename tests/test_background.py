"""The background publisher against a real Redis: it never waits on it, spools what it cannot send, replays it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from interactionlog import BackgroundPublisher, InvalidRecordError, Publisher
from interactionlog.client.spool import Spool
from tests.pipeline import stream_entries
from tests.servers import RedisServer


def _record(index: int, **extra: Any) -> dict[str, Any]:
    return {"mcp_id": "bg", "interaction_id": f"r{index:04d}", "method": "tools/call", "tool": "t",
            "request": {"i": index}, **extra}  # fmt: skip


def _stored_ids(url: str) -> list[str]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"data"])["interaction_id"] for _, fields in stream_entries(client)]
    finally:
        client.close()


def test_published_records_reach_the_stream_scrubbed_and_in_order(redis_url: str, tmp_path: Path) -> None:
    """publish() returns the id at once; the thread XADDs the records, scrubbed, in the order published."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=tmp_path)
    try:
        ids = [publisher.publish(_record(i, request={"password": "hunter2", "i": i})) for i in range(50)]
        assert ids == [f"r{i:04d}" for i in range(50)]
        assert publisher.publish({"mcp_id": "bg"})  # an id is made when the record has none
        assert publisher.flush(10)
    finally:
        publisher.close()
    assert _stored_ids(redis_url)[:50] == ids
    client = redis.Redis.from_url(redis_url)
    first = json.loads(stream_entries(client)[0][1][b"data"])
    assert first["request"] == {"password": "[redacted:key]", "i": 0}
    assert first["metadata"] == {"interactionlog.scrubbed": True, "interactionlog.redacted": {"key": 1}}


def test_an_invalid_record_is_refused_in_the_callers_thread(redis_url: str, tmp_path: Path) -> None:
    """A record that fails validation raises InvalidRecordError from publish() and nothing is queued."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=False)
    try:
        with pytest.raises(InvalidRecordError, match="duration_ms"):
            publisher.publish({"mcp_id": "bg", "duration_ms": "slow"})
        assert publisher.flush(5)
        assert publisher.metrics.snapshot()["interactionlog_client_records_published_total"] == 0
    finally:
        publisher.close()


def test_records_published_while_redis_is_down_are_spooled_then_replayed_in_order(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """With Redis killed, publish stays fast and records go to the spool; after Redis returns they are replayed
    oldest first and the spool empties."""
    publisher = BackgroundPublisher.from_url(own_redis.url, spool_dir=tmp_path)
    try:
        own_redis.kill()
        started = time.perf_counter()
        ids = [publisher.publish(_record(i)) for i in range(200)]
        assert time.perf_counter() - started < 1.0  # 200 publishes; a synchronous publish would wait ~2 s each
        assert publisher.flush(10)
        assert publisher.spool is not None
        assert publisher.spool.depth("interactions").entries == 200
        own_redis.start()
        assert publisher.drain_spool(30)
        snapshot = publisher.metrics.snapshot()
    finally:
        publisher.close()
    assert _stored_ids(own_redis.url) == ids
    assert snapshot["interactionlog_client_records_replayed_total"] == 200


def test_records_left_unsent_at_close_are_replayed_by_the_next_publisher(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """close() with Redis down spools what is queued; a new publisher on the same directory replays it."""
    own_redis.kill()
    first = BackgroundPublisher.from_url(own_redis.url, spool_dir=tmp_path)
    ids = [first.publish(_record(i)) for i in range(30)]
    first.close()
    own_redis.start()
    second = BackgroundPublisher.from_url(own_redis.url, spool_dir=tmp_path)
    try:
        assert second.drain_spool(30)
    finally:
        second.close()
    assert _stored_ids(own_redis.url) == ids


def test_a_full_queue_spools_from_the_caller_and_nothing_is_lost(own_redis: RedisServer, tmp_path: Path) -> None:
    """While the thread is stuck on a frozen Redis, records beyond queue_max are spooled by publish() itself, and
    every record reaches the stream once Redis thaws."""
    publisher = BackgroundPublisher(Publisher.from_url(own_redis.url), spool=Spool(tmp_path), queue_max=20)
    try:
        own_redis.pause()
        publisher.publish(_record(0))
        time.sleep(0.2)  # the thread is now waiting on the frozen Redis
        ids = ["r0000"] + [publisher.publish(_record(i)) for i in range(1, 100)]
        assert publisher.metrics.snapshot()["interactionlog_client_records_spooled_total{reason=overflow}"] > 0
        own_redis.resume()
        assert publisher.drain_spool(30)
    finally:
        publisher.close()
    assert set(_stored_ids(own_redis.url)) == set(ids)  # a timed-out batch may be XADDed twice: stored once


def test_oversize_records_are_truncated_with_a_marker_and_bad_deferred_ones_counted_without_values(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An oversize record lands with its payload replaced by a truncation marker holding the original size; a
    deferred record that is invalid is dropped, counted and logged by field name, never by value."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=False, max_record_bytes=4096)
    try:
        publisher.publish(_record(1, response={"text": "x" * 10_000}))
        publisher.publish_deferred(lambda: {"mcp_id": "bg", "tool": "hunter2-secret" * 30})
        assert publisher.flush(10)
        dropped = publisher.metrics.snapshot()["interactionlog_client_records_dropped_total{reason=invalid}"]
    finally:
        publisher.close()
    stored = json.loads(stream_entries(redis.Redis.from_url(redis_url))[0][1][b"data"])
    assert stored["response"]["interactionlog.truncated"] is True
    assert stored["response"]["original_bytes"] > 10_000
    assert stored["metadata"]["interactionlog.truncated"]["fields"] == ["response"]
    assert dropped == 1
    assert "record_dropped_invalid" in caplog.text
    assert "hunter2" not in caplog.text


def _hold_spool_lock(spool: Spool) -> sqlite3.Connection:
    """Take the spool database's write lock from another connection, as a second process spooling would."""
    holder = sqlite3.connect(spool.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_spool_write_that_fails_keeps_the_batch_and_writes_it_later(own_redis: RedisServer, tmp_path: Path) -> None:
    """With Redis down and the spool's database locked past its timeout, the thread's spool write fails: the batch
    stays in memory (not lost), flush says it is not yet safe, and once the lock goes it is spooled, then replayed."""
    spool = Spool(tmp_path, busy_timeout_s=0.05)
    publisher = BackgroundPublisher(Publisher.from_url(own_redis.url), spool=spool, queue_max=100)
    try:
        own_redis.kill()
        holder = _hold_spool_lock(spool)
        ids = [publisher.publish(_record(i)) for i in range(50)]
        assert not publisher.flush(1.5)  # nothing could be sent or spooled yet
        holder.execute("ROLLBACK")
        holder.close()
        assert publisher.flush(10)
        assert spool.depth("interactions").entries == 50
        own_redis.start()
        assert publisher.drain_spool(30)
        dropped = publisher.metrics.snapshot().get("interactionlog_client_records_dropped_total{reason=spool_error}")
    finally:
        publisher.close()
    assert _stored_ids(own_redis.url) == ids
    assert not dropped


def test_an_overflow_the_spool_cannot_take_never_raises_into_publish(own_redis: RedisServer, tmp_path: Path) -> None:
    """With the thread stuck on a frozen Redis, a full queue and the spool locked, publish() still returns the id
    (the caller's spool write failed and the record waits in memory); every record is stored once Redis thaws."""
    spool = Spool(tmp_path, busy_timeout_s=0.05)
    publisher = BackgroundPublisher(Publisher.from_url(own_redis.url), spool=spool, queue_max=10)
    try:
        own_redis.pause()
        ids = [publisher.publish(_record(0))]
        time.sleep(0.2)  # the thread is now waiting on the frozen Redis
        holder = _hold_spool_lock(spool)
        ids += [publisher.publish(_record(i)) for i in range(1, 18)]  # 10 queued, 7 overflow into memory
        holder.execute("ROLLBACK")
        holder.close()
        own_redis.resume()
        assert publisher.drain_spool(30)
        assert publisher.flush(10)
        dropped = publisher.metrics.snapshot().get("interactionlog_client_records_dropped_total{reason=spool_error}")
    finally:
        publisher.close()
    assert set(_stored_ids(own_redis.url)) == set(ids)
    assert not dropped


def test_a_record_nested_deeper_than_the_worker_reads_is_dropped_and_counted_not_sent(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nesting the worker's JSON parser refuses (200 levels) passes the model's validation of Python values, so
    `publish` accepts it; the thread's encoding refuses it (`record.ensure_readable`): dropped, counted and logged
    by field name, never sent to be dead-lettered. A record within the limit is sent."""
    deep: object = 1
    for _ in range(220):
        deep = [deep]
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=False)
    try:
        publisher.publish({"mcp_id": "bg", "interaction_id": "too-deep", "response": deep})
        publisher.publish({"mcp_id": "bg", "interaction_id": "shallow", "response": [[[1]]]})
        assert publisher.flush(10)
        dropped = publisher.metrics.snapshot()["interactionlog_client_records_dropped_total{reason=invalid}"]
    finally:
        publisher.close()
    sent = [
        json.loads(fields[b"data"])["interaction_id"] for _, fields in stream_entries(redis.Redis.from_url(redis_url))
    ]
    assert sent == ["shallow"]
    assert dropped == 1
    assert "record_dropped_invalid" in caplog.text
    assert '"fields": ["response"]' in caplog.text  # where to look, without the values
