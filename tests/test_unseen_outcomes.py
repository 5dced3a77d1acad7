"""Commands whose outcome the sender does not see whole. Settling a batch (dead letters and XACK in one MULTI/EXEC):
a reply lost after Redis ran the EXEC, and a dead-letter key that stopped being a stream while the worker ran; each
entry gets exactly one dead letter, none is acknowledged without it, and a trim whose count was lost is said.
Publishing: an XADD's reply lost after Redis added the entries; each record is stored once."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, cast

import httpx
import redis

from interactionlog import BackgroundPublisher, Publisher

from .gateway import INGEST, running_gateway
from .pipeline import (
    WorkerProcess,
    count_rows,
    group_pending,
    migrate,
    record,
    running_worker,
    stored_rows,
    wait_until,
)
from .proxy import ReplyDroppingProxy, wait_for_drop
from .servers import RedisServer

STREAM, GROUP, DEAD_LETTERS = "interactions", "interactionlog", "interactions:dlq"

# One MULTI/EXEC, as redis-py's pipeline sends it (packed by hiredis): its last command.
EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of `event`."""
    return [json.loads(line) for line in worker.log_text().splitlines() if f'"{event}"' in line]


def add_entries(client: redis.Redis, bad: int, good: int) -> list[str]:
    """XADD `bad` records the worker must dead-letter (a duration that is not a number), then `good` valid ones;
    returns the bad entries' ids."""
    pipe = client.pipeline(transaction=False)
    for index in range(bad):
        pipe.xadd(STREAM, {"v": "1", "data": f'{{"mcp_id":"m","interaction_id":"b{index}","duration_ms":"slow"}}'})
    for index in range(good):
        pipe.xadd(STREAM, {"v": "1", "data": f'{{"mcp_id":"m","interaction_id":"g{index}"}}'})
    return [entry_id.decode() for entry_id in pipe.execute()[:bad]]


def dead_letter_sources(client: redis.Redis) -> list[str]:
    """The source entry id of every dead letter, in the dead-letter stream's order."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTERS))
    return [fields[b"source_id"].decode() for _, fields in entries]


def drained(client: redis.Redis) -> bool:
    """Nothing pending and nothing left to read in the group."""
    groups = client.xinfo_groups(STREAM)
    return bool(groups) and group_pending(client) == 0 and groups[0]["lag"] == 0


def test_a_settle_whose_reply_is_lost_writes_each_dead_letter_once(
    redis_server: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The connection drops after Redis ran the settling EXEC (three dead letters and the XACK of five entries):
    the worker retries, finds the entries no longer pending, and does not write the dead letters again. Before,
    the retry wrote all three a second time."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    bad = add_entries(client, bad=3, good=2)
    with ReplyDroppingProxy(redis_server.port) as proxy:
        proxy.drop_reply_to(EXEC)
        with running_worker(proxy.url, database_url, tmp_path) as worker:
            wait_for_drop(proxy)
            # The lost EXEC ran, so the group is drained at once: wait for the retry to have happened too.
            wait_until(lambda: events(worker, "dependency_recovered"), what="the settle retried")
            wait_until(lambda: drained(client) and count_rows(database_url) == 2, what="drained")
    assert dead_letter_sources(client) == bad


def test_a_trim_whose_count_was_lost_is_said_at_error(
    redis_server: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """With --dead-letter-maxlen 100 and 300 dead letters already there, the settle that trims them loses its
    reply: how many it removed is unknown, and the worker says so at error level (the counter cannot be exact),
    while writing each new dead letter once."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for index in range(300):
        pipe.xadd(DEAD_LETTERS, {"source_id": f"0-{index + 1}", "error_type": "old"})
    pipe.execute()
    bad = add_entries(client, bad=3, good=0)
    with ReplyDroppingProxy(redis_server.port) as proxy:
        proxy.drop_reply_to(EXEC)
        with running_worker(proxy.url, database_url, tmp_path, dead_letter_maxlen="100") as worker:
            wait_for_drop(proxy)
            wait_until(lambda: events(worker, "dependency_recovered"), what="the settle retried")
            wait_until(lambda: drained(client), what="drained")
            [said] = wait_until(lambda: events(worker, "dead_letters_trim_uncounted"), what="the uncounted trim")
    assert said["level"] == "error"
    assert said["dead_letter_stream"] == DEAD_LETTERS
    new = [source for source in dead_letter_sources(client) if not source.startswith("0-")]
    assert new == bad
    assert 100 <= client.xlen(DEAD_LETTERS) < 300, "the trim itself ran"


def test_a_dead_letter_key_that_stops_being_a_stream_acknowledges_nothing(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The dead-letter key is overwritten with a string while the worker runs, and the worker is stopped before
    anyone fixes it. Inside EXEC, Redis runs the other commands of a MULTI when one fails (WRONGTYPE), so the
    XACK went through without the XADD of its dead letter, and the entry was gone for good. Now the worker checks
    the key under WATCH first and acknowledges nothing: once the key is fixed, another worker dead-letters it."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    worker = WorkerProcess(redis_url, database_url, tmp_path)
    try:
        wait_until(lambda: events(worker, "consumer_started"), what="the worker started")
        client.set(DEAD_LETTERS, "not a stream")
        [bad] = add_entries(client, bad=1, good=0)
        wait_until(lambda: events(worker, "dependency_refusing"), what="the refused settle")
        worker.signal(signal.SIGTERM)
        worker.wait(timeout_s=60)
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
    assert group_pending(client) == 1, "still pending: not acknowledged without its dead letter"
    client.delete(DEAD_LETTERS)
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: dead_letter_sources(client) == [bad] and group_pending(client) == 0, what="dead-lettered")


# --- the same fault on the publishing side ------------------------------------------------------------------------

# An XADD as hiredis packs it: the command's name as the first bulk string of an array.
XADD = b"$4\r\nXADD\r\n"


def test_a_publish_whose_reply_is_lost_is_stored_once(
    redis_server: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """`Publisher.publish` loses the reply to its XADD after Redis added the entry: its one retry on a fresh
    connection adds the same record again (same interaction_id and timestamp), and the worker stores it once."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    with ReplyDroppingProxy(redis_server.port) as proxy:
        publisher = Publisher.from_url(proxy.url, stream=STREAM)
        try:
            proxy.drop_reply_to(XADD)
            publisher.publish(record(1))
        finally:
            publisher.close()
        assert proxy.dropped == 1
    assert client.xlen(STREAM) == 2, "the lost XADD ran, and the retry added the record again"
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: drained(client), what="drained")
    assert stored_rows(database_url) == [("weather", record(1)["interaction_id"])]


def test_a_background_publish_whose_reply_is_lost_is_stored_once(
    redis_server: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """`BackgroundPublisher`'s thread loses the reply to a batch of 20 XADDs after Redis added them: whatever it
    does next (retry, spool and replay), every record is stored once."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    with ReplyDroppingProxy(redis_server.port) as proxy:
        publisher = BackgroundPublisher.from_url(proxy.url, stream=STREAM, spool_dir=tmp_path / "spool")
        try:
            proxy.drop_reply_to(XADD)
            ids = [publisher.publish(record(index)) for index in range(20)]
            assert publisher.flush(timeout_s=30), "everything sent or spooled and replayed"
        finally:
            publisher.close()
        assert proxy.dropped == 1
    assert client.xlen(STREAM) > 20, "the lost XADDs ran, and were sent again"
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: drained(client), what="drained")
    assert sorted(stored_rows(database_url)) == sorted(("weather", interaction_id) for interaction_id in ids)


def test_a_gateway_whose_xadd_reply_is_lost_stores_the_record_once(
    redis_server: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The HTTP gateway loses the reply to its XADD after Redis added the record: whatever it answers, the client
    sends the same record (same interaction_id) until it gets 202, and the worker stores it once."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    body = json.dumps({"mcp_id": "weather", "interaction_id": "lost-reply-1", "tool": "get_forecast"})
    answers: list[int] = []
    with (
        ReplyDroppingProxy(redis_server.port) as proxy,
        running_gateway(proxy.url, database_url, tmp_path, no_auth=True) as gateway,
    ):
        proxy.drop_reply_to(XADD)
        while not answers or answers[-1] != 202:
            assert len(answers) < 20, answers
            answers.append(httpx.post(f"{gateway.http_url}{INGEST}", content=body, timeout=30).status_code)
        assert proxy.dropped == 1
    assert client.xlen(STREAM) >= 2, f"the lost XADD ran, and the record was added again (answers {answers})"
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: drained(client), what="drained")
    assert stored_rows(database_url) == [("weather", "lost-reply-1")]
