"""The publish helpers' one-write round trip (`Publisher._xadd_all`, `AsyncPublisher._xadd_all`), both twins alike:
every reply is read before an error reply is raised, a stale pooled connection is retried once, and a Redis that
stops answering ends the wait in bounded time without leaving unread replies for the next publish."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from interactionlog import AsyncPublisher, Publisher, PublishError, PublishUnavailableError
from tests.pipeline import record, stream_entries
from tests.servers import RedisServer

TIMEOUT_S = 0.5

Publish = Callable[[Sequence[dict[str, Any]]], list[str]]


class Twin:
    """One publisher twin behind a synchronous face: `publish_many` and `close`."""

    def __init__(self, kind: str, url: str, **options: Any) -> None:
        self.kind = kind
        if kind == "sync":
            self._sync = Publisher.from_url(url, **options)
        else:
            self._loop = asyncio.new_event_loop()
            self._async = AsyncPublisher.from_url(url, **options)

    def publish_many(self, records: Sequence[dict[str, Any]]) -> list[str]:
        if self.kind == "sync":
            return self._sync.publish_many(records)
        return self._loop.run_until_complete(self._async.publish_many(records))

    def close(self) -> None:
        if self.kind == "sync":
            self._sync.close()
        else:
            self._loop.run_until_complete(self._async.close())
            self._loop.close()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_an_error_reply_is_raised_after_every_reply_is_read(redis_url: str, kind: str) -> None:
    """Redis refusing every XADD of a batch (the stream key holds a string) raises PublishError; the replies are
    all read, so the same publisher's next batch gets its own entry ids, not the refusals left on the wire, on the
    same connection (an error reply is Redis answering: nothing to reconnect for)."""
    client = redis.Redis.from_url(redis_url)
    client.set("interactions", "not a stream")
    twin = Twin(kind, redis_url, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(PublishError, match="WRONGTYPE") as caught:
            twin.publish_many([record(i) for i in range(300)])
        assert not isinstance(caught.value, PublishUnavailableError)
        assert len(caught.value.entries) == 300
        client.delete("interactions")
        connections = client.info("stats")["total_connections_received"]
        ids = twin.publish_many([record(i) for i in range(300, 310)])
        assert client.info("stats")["total_connections_received"] == connections
    finally:
        twin.close()
    assert [entry_id for entry_id, _ in stream_entries(client)] == ids


def test_a_stale_pooled_connection_is_retried_once_and_each_record_added_once(redis_url: str, kind: str) -> None:
    """The publisher's pooled connection killed by Redis (a restart, a CLIENT KILL) between two batches: the next
    batch is sent again on a fresh connection, and lands once."""
    client = redis.Redis.from_url(redis_url)
    twin = Twin(kind, redis_url, timeout_s=TIMEOUT_S)
    try:
        first = twin.publish_many([record(i) for i in range(5)])
        killed = client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        second = twin.publish_many([record(i) for i in range(5, 505)])
    finally:
        twin.close()
    assert [entry_id for entry_id, _ in stream_entries(client)] == first + second


def test_a_frozen_redis_ends_the_wait_and_leaves_no_reply_behind(own_redis: RedisServer, kind: str) -> None:
    """Redis frozen (SIGSTOP) while a batch waits for its replies: PublishUnavailableError within a few timeouts.
    Once Redis runs again, the same publisher's next batch returns its own ids: the frozen batch's replies, which
    Redis sends when it wakes, are never read as the next batch's."""
    pid = own_redis.pid
    assert pid is not None
    twin = Twin(kind, own_redis.url, timeout_s=TIMEOUT_S)
    try:
        twin.publish_many([record(0)])  # connected and pooled
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(PublishUnavailableError):
                twin.publish_many([record(i) for i in range(1, 201)])
            waited = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert waited < 6 * TIMEOUT_S + 2
        ids = twin.publish_many([record(i) for i in range(201, 211)])
    finally:
        twin.close()
    entries = stream_entries(redis.Redis.from_url(own_redis.url))
    assert [entry_id for entry_id, _ in entries][-10:] == ids
    assert len(set(ids)) == 10


def test_replies_spread_over_many_socket_reads_come_back_in_order(redis_url: str, kind: str) -> None:
    """A batch whose replies fill several reads of the socket (4,000 entry ids, about 100 KiB against 64 KiB a
    read), entries of both shapes (with and without a written timestamp) mixed: every id returned is the id of the
    entry added for that record, in order, and each entry holds the fields it was sent with."""
    records = [record(i, **({"timestamp": "2026-12-01T00:00:00Z"} if i % 3 == 0 else {})) for i in range(4000)]
    twin = Twin(kind, redis_url, timeout_s=TIMEOUT_S)
    try:
        ids = twin.publish_many(records)
    finally:
        twin.close()
    entries = stream_entries(redis.Redis.from_url(redis_url))
    assert [entry_id for entry_id, _ in entries] == ids
    assert [json.loads(fields[b"data"])["interaction_id"] for _, fields in entries] == [
        f"rec-{i:06d}" for i in range(4000)
    ]
    assert [fields.get(b"identity") for _, fields in entries] == [b"exact" if i % 3 == 0 else None for i in range(4000)]


class _Interrupted(Exception):
    """Raised by a signal handler in the middle of a blocking read."""


def test_a_publish_cancelled_or_interrupted_while_waiting_leaves_no_reply_behind(
    own_redis: RedisServer, kind: str
) -> None:
    """A publish abandoned while it waits for its replies (the asyncio one cancelled by a caller's own bound, as
    the gateways abandon a publish; the sync one interrupted by a signal handler's exception), Redis frozen: once
    Redis answers again, the same publisher's next batch returns its own ids, never the abandoned batch's replies,
    which Redis sends when it wakes."""
    pid = own_redis.pid
    assert pid is not None

    def interrupt(_signum: int, _frame: object) -> None:
        raise _Interrupted

    twin = Twin(kind, own_redis.url, timeout_s=5.0)
    try:
        twin.publish_many([record(0)])  # connected and pooled
        os.kill(pid, signal.SIGSTOP)
        try:
            batch = [record(i) for i in range(1, 201)]
            if kind == "sync":
                previous = signal.signal(signal.SIGALRM, interrupt)
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                try:
                    with pytest.raises(_Interrupted):
                        twin.publish_many(batch)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    signal.signal(signal.SIGALRM, previous)
            else:
                with pytest.raises(TimeoutError):
                    twin._loop.run_until_complete(asyncio.wait_for(twin._async.publish_many(batch), 0.3))
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.3)  # the abandoned batch's replies reach the socket, if it is still open
        ids = twin.publish_many([record(i) for i in range(201, 211)])
    finally:
        twin.close()
    entries = stream_entries(redis.Redis.from_url(own_redis.url))
    assert [entry_id for entry_id, _ in entries][-10:] == ids


def test_a_redis_loading_its_data_refuses_and_its_refusal_is_never_taken_for_an_entry_id(kind: str) -> None:
    """Redis restarted from its append-only file answers `-LOADING` until its data is in memory (slowed here by
    its `key-load-delay`): a publish then raises PublishUnavailableError saying so, and every id a publish
    returned, before and after, is an entry of the stream once loading ends."""
    slow_loading = ["--key-load-delay", "50", "--loading-process-events-interval-bytes", "1024"]  # answers meanwhile
    server = RedisServer(appendonly=True, extra_args=["--enable-debug-command", "yes", *slow_loading])
    with server:
        client = redis.Redis.from_url(server.url)
        client.execute_command("DEBUG", "POPULATE", 15000)  # type: ignore[no-untyped-call]  # about 2 s to load
        client.bgrewriteaof()
        deadline = time.monotonic() + 30
        while (
            client.info("persistence")["aof_rewrite_in_progress"] or client.info("persistence")["aof_rewrite_scheduled"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.close()
        server.kill()
        starting = threading.Thread(target=server.start)  # returns once Redis answers PING, loading done
        starting.start()
        twin = Twin(kind, server.url, timeout_s=TIMEOUT_S)
        returned: list[str] = []
        refusals: list[str] = []
        try:
            index = 0
            while starting.is_alive() or index < 5:
                index += 1
                try:
                    returned.extend(twin.publish_many([record(index)]))
                except PublishUnavailableError as error:
                    refusals.append(str(error))
                time.sleep(0.02)
        finally:
            starting.join()
            twin.close()
        stored = {entry_id for entry_id, _ in stream_entries(redis.Redis.from_url(server.url))}
    assert any("is loading the dataset" in refusal for refusal in refusals), refusals[:3]  # redis-py drops "LOADING"
    assert returned, "no publish succeeded after loading: the test proved nothing"
    assert set(returned) <= stored
