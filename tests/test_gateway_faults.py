"""Redis killed under the gateways and under a hybrid publisher: no accepted record is lost, every record that
was not accepted was told so, and the hybrid stores everything exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import httpx
import pytest

from interactionlog import Publisher, PublishUnavailableError
from interactionlog.client.transports.hybrid import HybridTransport
from interactionlog.proto import ingest_pb2, ingest_pb2_grpc
from tests.gateway import INGEST, migrated, new_token, running_gateway
from tests.pipeline import record, running_worker, stored_rows, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.fault

DURABLE_REDIS = {"appendonly": True, "extra_args": ["--appendfsync", "always"]}


class Ledger:
    """What each record was told: accepted, or refused/unanswered (thread-safe)."""

    def __init__(self) -> None:
        self.accepted: set[str] = set()
        self.told: set[str] = set()
        self.sent: set[str] = set()
        self._lock = threading.Lock()

    def note(self, sent: list[str], accepted: list[str]) -> None:
        """Record one call: everything sent, and which of it was accepted (the rest was told it was not)."""
        with self._lock:
            self.sent.update(sent)
            self.accepted.update(accepted)
            self.told.update(set(sent) - set(accepted))


def check(ledger: Ledger, database_url: str) -> None:
    """Every accepted record is stored once; nothing stored was never sent; every record got an answer."""
    wait_until(
        lambda: ledger.accepted <= {interaction_id for _, interaction_id in stored_rows(database_url)},
        timeout_s=60,
        what="every accepted record in the table",
    )
    rows = [interaction_id for _, interaction_id in stored_rows(database_url)]
    assert len(rows) == len(set(rows)), "a record is stored twice"
    assert set(rows) <= ledger.sent
    assert ledger.accepted | ledger.told == ledger.sent
    assert ledger.accepted, "nothing was accepted: the test proved nothing"
    assert ledger.told, "Redis was never seen down: the test proved nothing"
    print(f"records sent {len(ledger.sent)}, accepted {len(ledger.accepted)} (all stored), told not {len(ledger.told)}")


def kill_and_restart(redis_server: RedisServer, *, after_s: float, down_s: float) -> threading.Thread:
    """In the background: wait, SIGKILL Redis, wait, start it again (its append-only file replayed)."""

    def run() -> None:
        time.sleep(after_s)
        redis_server.kill()
        time.sleep(down_s)
        redis_server.start()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("own_redis", [DURABLE_REDIS], indirect=True)
def test_redis_killed_during_http_ingest_loses_no_accepted_record(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """Four clients POST batches while Redis is SIGKILLed and restarted: each record is answered accepted or not,
    and every accepted one reaches the table."""
    migrated(database_url)
    token = new_token(database_url)
    ledger = Ledger()
    with (
        running_gateway(own_redis.url, database_url, tmp_path, grpc_port="0") as gateway,
        running_worker(own_redis.url, database_url, tmp_path),
    ):
        deadline = time.monotonic() + 6

        def client(number: int) -> None:
            with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
                batch = 0
                while time.monotonic() < deadline:
                    ids = [f"h{number}-{batch}-{i}" for i in range(20)]
                    body = json.dumps([{**record(0), "interaction_id": ident} for ident in ids])
                    batch += 1
                    try:
                        response = http.post(gateway.http_url + INGEST, content=body)
                    except httpx.HTTPError:
                        ledger.note(ids, [])  # no answer: the client knows it was not accepted
                        continue
                    results = response.json().get("results", [])
                    assert response.status_code != 202 or len(results) == len(ids)
                    ledger.note(ids, [item["interaction_id"] for item in results if item["outcome"] == "accepted"])

        fault = kill_and_restart(own_redis, after_s=1.5, down_s=1.5)
        clients = [threading.Thread(target=client, args=(number,)) for number in range(4)]
        for thread in [*clients]:
            thread.start()
        for thread in [*clients, fault]:
            thread.join()
        check(ledger, database_url)


@pytest.mark.parametrize("own_redis", [DURABLE_REDIS], indirect=True)
def test_redis_killed_during_a_grpc_stream_loses_no_accepted_record(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """One stream keeps sending while Redis is SIGKILLed and restarted: every record gets its own answer, and every
    one answered `success` reaches the table."""
    migrated(database_url)
    metadata = (("authorization", f"Bearer {new_token(database_url)}"),)
    ledger = Ledger()

    async def send(target: str) -> None:
        deadline = time.monotonic() + 6
        sent: list[str] = []

        async def requests() -> AsyncIterator[ingest_pb2.InteractionData]:
            index = 0
            while time.monotonic() < deadline:
                ident = f"g-{index}"
                sent.append(ident)
                yield ingest_pb2.InteractionData(data=json.dumps({**record(0), "interaction_id": ident}))
                index += 1
                if index % 50 == 0:
                    await asyncio.sleep(0.01)

        async with grpc.aio.insecure_channel(target) as channel:
            call = ingest_pb2_grpc.InteractionIngestStub(channel).StreamInteractions(requests(), metadata=metadata)
            answers = [answer async for answer in call]
        assert [answer.interaction_id for answer in answers] == sent
        ledger.note(sent, [answer.interaction_id for answer in answers if answer.success])

    with (
        running_gateway(own_redis.url, database_url, tmp_path, http_port="0") as gateway,
        running_worker(own_redis.url, database_url, tmp_path),
    ):
        fault = kill_and_restart(own_redis, after_s=1.5, down_s=1.5)
        asyncio.run(send(gateway.grpc_target))
        fault.join()
        check(ledger, database_url)


@pytest.mark.parametrize("own_redis", [DURABLE_REDIS], indirect=True)
def test_a_hybrid_publisher_rides_out_redis_going_away_and_stores_everything_once(
    own_redis: RedisServer, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Redis first, then the HTTP gateway (in front of another Redis): while the first Redis is killed and
    restarted, a publisher keeps publishing; records go through the gateway meanwhile and back to Redis after,
    and every record is stored exactly once."""
    migrated(database_url)
    token = new_token(database_url)
    with (
        running_gateway(redis_url, database_url, tmp_path, grpc_port="0") as gateway,
        running_worker(own_redis.url, database_url, tmp_path),
        running_worker(redis_url, database_url, tmp_path),
    ):
        publisher = Publisher.from_urls(
            [own_redis.url, f"{gateway.http_url}/?token={token}"], timeout_s=0.3, reset_timeout_s=0.5
        )
        fault = kill_and_restart(own_redis, after_s=1.0, down_s=2.0)
        published = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            batch = [record(index) for index in range(published, published + 10)]
            try:
                publisher.publish_many(batch)
            except PublishUnavailableError:
                continue  # the same ids again: a careful caller's retry
            published += 10
        fault.join()
        assert isinstance(publisher.transport, HybridTransport)
        counts = publisher.transport.counts()
        publisher.close()
        wait_until(lambda: len(stored_rows(database_url)) >= published, timeout_s=60, what="every record stored")
        rows = [interaction_id for _, interaction_id in stored_rows(database_url)]
        assert sorted(rows) == [f"rec-{index:06d}" for index in range(published)]
        assert all(count > 0 for count in counts.values()), counts
        print(f"hybrid: {published} records stored once each; by transport {counts}")
