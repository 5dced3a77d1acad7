"""Copies of one record stamped apart and stored at the same moment by different transactions (two consumers, two
workers, two direct publishers) are stored once: the MCPs' lock (`rows.LOCK_COPY_KEYS`) orders the dedupe
window's probes. And which records need that probe: the `identity exact` mark of publishers and gateways."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis

from interactionlog import BackgroundPublisher, Interaction, Publisher
from interactionlog.client.publisher import encode_fields
from interactionlog.gateway.admission import Admitted, admit
from interactionlog.record import EXACT_IDENTITY, IDENTITY_FIELD
from interactionlog.settings import DEFAULT_MAX_RECORD_BYTES, DEFAULT_STREAM
from interactionlog.worker.decode import decode_entry
from interactionlog.worker.store import Store, migrate
from tests.pipeline import count_rows, running_worker, stream_entries, wait_until

COPIES = 8  # batches, each holding one copy of every record, all storing at once
RECORDS = 150


def copy_rows(batch: int) -> list[Any]:
    """One copy of each record, published without a timestamp (so each copy is stamped anew)."""
    return [
        decode_entry(
            f"{batch * 1000 + number + 1}-0",
            encode_fields(
                {"mcp_id": f"mcp-{number % 3}", "interaction_id": f"copy-{number}"}, DEFAULT_MAX_RECORD_BYTES
            ),
            DEFAULT_MAX_RECORD_BYTES,
        )
        for number in range(RECORDS)
    ]


def test_copies_in_batches_storing_at_the_same_moment_are_stored_once(database_url: str) -> None:
    """Eight batches, each one copy of the same 150 records (three MCPs) with other timestamps, stored by eight
    connections at once: 150 rows, and every other copy counted as a duplicate."""

    async def run() -> list[Any]:
        await migrate(database_url)
        store = await Store.open(database_url, max_connections=COPIES)
        try:
            batches = [copy_rows(batch) for batch in range(COPIES)]
            return await asyncio.gather(*(store.persist_batch(rows) for rows in batches))
        finally:
            await store.close()

    results = asyncio.run(run())
    assert count_rows(database_url) == RECORDS
    assert sum(result.inserted for result in results) == RECORDS
    assert sum(result.duplicates for result in results) == RECORDS * (COPIES - 1)


def test_direct_publishers_storing_copies_at_the_same_moment_store_them_once(database_url: str) -> None:
    """postgresql://: four publishers in four threads publish the same 100 records (no timestamp) at once."""
    asyncio.run(migrate(database_url))
    records = [{"mcp_id": "weather", "interaction_id": f"direct-{number}"} for number in range(100)]
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            # A generous bound: the four wait on each other by design (the per-MCP lock), on a machine maybe loaded.
            with Publisher.from_url(database_url, timeout_s=5) as publisher:
                start.wait()
                publisher.publish_many(records)
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert count_rows(database_url) == 100


@pytest.mark.parametrize(
    ("record", "exact"),
    [
        ({"mcp_id": "m", "interaction_id": "i", "timestamp": "2026-01-01T00:00:00Z"}, True),
        ({"mcp_id": "m", "timestamp": "2026-01-01T00:00:00Z"}, True),
        ({"mcp_id": "m", "interaction_id": "i"}, False),  # published again, it is stamped again
        # The generated id is handed back for a retry (PublishUnavailableError.interaction_id), stamped again.
        ({"mcp_id": "m"}, False),
    ],
)
def test_publishers_mark_the_records_whose_author_wrote_the_timestamp(record: dict[str, Any], exact: bool) -> None:
    """`identity exact` on the entry exactly when the caller wrote the timestamp, so that every copy carries it:
    from a plain dict (the fast path), a dict subclass (the model's path) and an Interaction. A gateway marks only
    on its client's word (`record.IDENTITY_HEADER`, tests/test_gateway_identity.py): what reaches it may hold a
    timestamp a publisher stamped."""
    for form in (record, OrderedDict(record), Interaction(**record)):
        assert (encode_fields(form, DEFAULT_MAX_RECORD_BYTES).get(IDENTITY_FIELD) == EXACT_IDENTITY) is exact, form
    admitted = admit(encode_fields(record, 1 << 20)[b"data"], max_record_bytes=1 << 20, mcp_id=None)
    assert isinstance(admitted, Admitted)
    assert IDENTITY_FIELD not in admitted.fields


def test_the_worker_probes_only_records_that_may_have_been_stamped_again(
    redis_url: str, database_url: str, tmp_path: Any
) -> None:
    """Through a real worker: the same id published twice without a timestamp is one row; with two timestamps of
    its author's, it is two records (the unique index decides, no probe); an entry without the mark (another
    language's XADD) is probed."""
    asyncio.run(migrate(database_url))
    with Publisher.from_url(redis_url) as publisher, running_worker(redis_url, database_url, tmp_path):
        publisher.publish({"mcp_id": "weather", "interaction_id": "stamped"})
        publisher.publish({"mcp_id": "weather", "interaction_id": "stamped"})
        publisher.publish({"mcp_id": "weather", "interaction_id": "own", "timestamp": "2026-11-30T10:00:00Z"})
        publisher.publish({"mcp_id": "weather", "interaction_id": "own", "timestamp": "2026-11-30T10:00:05Z"})
        raw = b'{"mcp_id": "weather", "interaction_id": "raw", "timestamp": "2026-11-30T10:00:00Z"}'
        with redis.Redis.from_url(redis_url) as client:
            client.xadd(DEFAULT_STREAM, {"v": "1", "data": raw})
            client.xadd(DEFAULT_STREAM, {"v": "1", "data": raw.replace(b":00Z", b":09Z")})
        wait_until(lambda: count_rows(database_url) >= 4, what="4 rows")
        wait_until(lambda: pending(redis_url) == 0, what="every entry acknowledged")
    with psycopg.connect(database_url) as conn:
        counts: dict[str, int] = dict(
            conn.execute("SELECT interaction_id, count(*) FROM interaction_logs GROUP BY 1").fetchall()
        )
    assert counts == {"stamped": 1, "own": 2, "raw": 1}


def pending(redis_url: str) -> int:
    """Entries of the default stream not yet acknowledged by the workers' group."""
    with redis.Redis.from_url(redis_url) as client:
        groups = client.xinfo_groups(DEFAULT_STREAM)
        return sum(int(group["pending"]) + int(group.get("lag") or 0) for group in groups)


def test_a_copy_dropped_in_favour_of_a_row_postgresql_refuses_is_stored_in_its_place(database_url: str) -> None:
    """A batch holding a record twice, stamped apart, whose first copy PostgreSQL refuses (an operator's CHECK):
    the first is refused alone and the second is stored, not counted as a copy of a row that was never stored."""

    async def run() -> Any:
        await migrate(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool <> 'forbidden')")
        rows = [
            decode_entry(
                f"{number + 1}-0",
                encode_fields({"mcp_id": "weather", "interaction_id": "twice", "tool": tool}, 1 << 20),
                1 << 20,
            )
            for number, tool in enumerate(["forbidden", "allowed"])
        ]
        store = await Store.open(database_url, max_connections=1)
        try:
            return await store.persist_batch(rows)
        finally:
            await store.close()

    result = asyncio.run(run())
    assert (result.inserted, result.duplicates) == (1, 0)
    assert [row.tool for row, _ in result.refused] == ["forbidden"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT tool FROM interaction_logs").fetchall() == [("allowed",)]


def test_the_background_publisher_marks_only_records_whose_author_wrote_the_timestamp(
    redis_url: str, tmp_path: Any
) -> None:
    """Through the background thread too, whichever path a record takes (a plain dict checked without the
    model, a dict subclass, an Interaction): only a timestamp the caller wrote marks the entry."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=tmp_path)
    try:
        publisher.publish({"mcp_id": "m", "interaction_id": "plain"})
        publisher.publish({"mcp_id": "m", "interaction_id": "own", "timestamp": "2026-01-01T00:00:00Z"})
        publisher.publish(OrderedDict(mcp_id="m", interaction_id="subclass"))
        publisher.publish(Interaction(mcp_id="m", interaction_id="model"))
        publisher.publish(
            Interaction(mcp_id="m", interaction_id="model-own", timestamp=datetime(2026, 1, 1, tzinfo=UTC))
        )
        assert publisher.flush(10)
    finally:
        publisher.close()
    with redis.Redis.from_url(redis_url) as client:
        entries = stream_entries(client)
    marks = {json.loads(fields[b"data"])["interaction_id"]: fields.get(IDENTITY_FIELD) for _, fields in entries}
    assert marks == {
        "plain": None,
        "own": EXACT_IDENTITY,
        "subclass": None,
        "model": None,
        "model-own": EXACT_IDENTITY,
    }
