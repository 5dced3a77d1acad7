"""gRPC ingest against a real `interactionlog serve` on loopback: per-record answers in order, the unary batch,
authentication, health, and flow control when Redis is slow or the client stops reading."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from interactionlog.proto import ingest_pb2, ingest_pb2_grpc
from tests.gateway import GatewayProcess, migrated, new_token, running_gateway
from tests.pipeline import record, stream_entries, wait_until
from tests.servers import PostgresServer, RedisServer

Metadata = tuple[tuple[str, str], ...]


class Env:
    """A gateway shared by the module and a token of `weather`."""

    def __init__(self, gateway: GatewayProcess, token: str) -> None:
        self.gateway = gateway
        self.metadata: Metadata = (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """One gateway for the module's tests."""
    database_url = migrated(postgres_server.create_database("gateway_grpc"))
    with running_gateway(redis_server.url, database_url, tmp_path_factory.mktemp("gateway"), http_port="0") as gateway:
        yield Env(gateway, new_token(database_url))
    postgres_server.drop_database("gateway_grpc")


def data(index: int, mcp_id: str = "weather", **extra: object) -> ingest_pb2.InteractionData:
    """One record as its JSON text."""
    return ingest_pb2.InteractionData(data=json.dumps(record(index, mcp_id, **extra)))


async def stream(
    target: str, messages: Sequence[ingest_pb2.InteractionData], metadata: Metadata
) -> list[ingest_pb2.InteractionResponse]:
    """Send every message on one StreamInteractions call and collect the answers."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)

        async def requests() -> AsyncIterator[ingest_pb2.InteractionData]:
            for message in messages:
                yield message

        return [answer async for answer in stub.StreamInteractions(requests(), metadata=metadata)]


def test_every_record_of_a_stream_is_answered_in_order_after_its_xadd(env: Env, redis_url: str) -> None:
    """300 records, some invalid: one answer each, in order, indexed; accepted ones name the entry Redis added,
    refused ones the worker's reason, and only accepted ones are in the stream."""
    messages = [data(i) for i in range(300)]
    messages[7] = ingest_pb2.InteractionData(data='{"mcp_id": "weather", "duration_ms": "slow"}')
    messages[8] = ingest_pb2.InteractionData(data="not json")
    messages[9] = data(9, mcp_id="news")
    answers = asyncio.run(stream(env.gateway.grpc_target, messages, env.metadata))
    assert [answer.index for answer in answers] == list(range(300))
    assert [answer.error_type for answer in answers[7:10]] == ["invalid_record", "invalid_json", "forbidden"]
    assert "field 'duration_ms'" in answers[7].message
    accepted = [answer for answer in answers if answer.success]
    assert len(accepted) == 297
    entries = dict(stream_entries(redis.Redis.from_url(redis_url)))
    assert [answer.entry_id for answer in accepted] == list(entries)
    assert all(json.loads(entries[a.entry_id][b"data"])["interaction_id"] == a.interaction_id for a in accepted)


async def stream_batches(
    target: str, batches: Sequence[Sequence[ingest_pb2.InteractionData]], metadata: Metadata
) -> list[ingest_pb2.InteractionBatchResponse]:
    """Send each batch as one message of a StreamInteractionBatches call and collect the answers."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)

        async def requests() -> AsyncIterator[ingest_pb2.InteractionBatch]:
            for batch in batches:
                yield ingest_pb2.InteractionBatch(records=batch)

        return [answer async for answer in stub.StreamInteractionBatches(requests(), metadata=metadata)]


def test_every_batch_of_a_batch_stream_is_answered_in_order_after_its_xadds(env: Env, redis_url: str) -> None:
    """Batches of 1, 700 (over the 512-record window), 0 and 40 records: one answer per batch with one result per
    record, indexed across the whole stream; refusals carry the worker's reason and only accepted records are in
    the stream, as sent."""
    sizes = [1, 700, 0, 40]
    messages = [data(i) for i in range(sum(sizes))]
    messages[3] = ingest_pb2.InteractionData(data="not json")
    messages[705] = data(705, mcp_id="news")
    messages[720] = ingest_pb2.InteractionData(data='{"tool": "t", "request": {"n": 1.00000000000000001}}')
    starts = [sum(sizes[:position]) for position in range(len(sizes))]
    batches = [messages[start : start + size] for start, size in zip(starts, sizes, strict=True)]
    before = dict(stream_entries(redis.Redis.from_url(redis_url)))
    answers = asyncio.run(stream_batches(env.gateway.grpc_target, batches, env.metadata))
    assert [len(answer.results) for answer in answers] == sizes
    results = [result for answer in answers for result in answer.results]
    assert [result.index for result in results] == list(range(sum(sizes)))
    assert [(results[i].success, results[i].error_type) for i in (3, 705)] == [
        (False, "invalid_json"),
        (False, "forbidden"),
    ]
    accepted = [result for result in results if result.success]
    assert len(accepted) == sum(sizes) - 2
    entries = {key: value for key, value in stream_entries(redis.Redis.from_url(redis_url)) if key not in before}
    assert [result.entry_id for result in accepted] == list(entries)
    assert entries[results[720].entry_id][b"data"].endswith(b'"tool": "t", "request": {"n": 1.00000000000000001}}')


def test_envelope_fields_fill_what_data_lacks_and_must_agree_with_it(env: Env, redis_url: str) -> None:
    """mcp_id, interaction_id and timestamp beside `data` are written into a record lacking them; a record whose
    data says otherwise is refused as invalid_record; numbers in data arrive exactly as sent."""
    messages = [
        ingest_pb2.InteractionData(
            mcp_id="weather",
            interaction_id="env-1",
            timestamp="2024-05-01T12:00:00+02:00",
            data='{"tool": "t", "request": {"n": 1.00000000000000001, "e": 1e2}}',
        ),
        ingest_pb2.InteractionData(interaction_id="env-2", data='{"interaction_id": "other", "tool": "t"}'),
        ingest_pb2.InteractionData(timestamp="2024-05-01T12:00:00Z", data='{"timestamp": "2024-05-01T13:00:00Z"}'),
    ]
    first, second, third = asyncio.run(stream(env.gateway.grpc_target, messages, env.metadata))
    assert (first.success, first.interaction_id) == (True, "env-1")
    stored = dict(stream_entries(redis.Redis.from_url(redis_url)))[first.entry_id][b"data"]
    assert stored.endswith(b'"tool": "t", "request": {"n": 1.00000000000000001, "e": 1e2}}')
    assert json.loads(stored)["timestamp"] == "2024-05-01T12:00:00+02:00"
    assert (second.success, second.error_type) == (False, "invalid_record")
    assert "InteractionData.interaction_id" in second.message
    assert (third.success, third.error_type) == (False, "invalid_record")


def test_a_missing_or_wrong_token_is_unauthenticated(env: Env) -> None:
    """Both calls refuse a call without a valid bearer token with UNAUTHENTICATED, before reading a record."""

    async def status(metadata: Metadata) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(env.gateway.grpc_target) as channel:
            call = ingest_pb2_grpc.InteractionIngestStub(channel).StreamInteractions(metadata=metadata)
            return await call.code()

    for metadata in [(), (("authorization", "Bearer il_000000000000_" + "A" * 43),)]:
        assert asyncio.run(status(metadata)) == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(env.gateway.grpc_target) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)
        with pytest.raises(grpc.RpcError) as batch_refused:
            stub.PublishBatch(ingest_pb2.InteractionBatch(records=[data(1)]), timeout=10)
        assert batch_refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_publish_batch_answers_every_record(env: Env) -> None:
    """The unary call answers each record of the batch, refusals included, in order."""
    with grpc.insecure_channel(env.gateway.grpc_target) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)
        reply = stub.PublishBatch(
            ingest_pb2.InteractionBatch(records=[data(1), data(2, mcp_id="news"), data(3)]),
            metadata=env.metadata,
            timeout=10,
        )
    assert [(result.index, result.success, result.error_type) for result in reply.results] == [
        (0, True, ""), (1, False, "forbidden"), (2, True, ""),
    ]  # fmt: skip


def test_the_health_service_reports_serving(env: Env) -> None:
    """grpc.health.v1 answers SERVING for the server and for the ingest service."""
    with grpc.insecure_channel(env.gateway.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "interactionlog.v1.InteractionIngest"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where the gateways of one test write their logs."""
    return tmp_path


def test_redis_down_makes_records_unavailable_and_health_not_serving(
    own_redis: RedisServer, database_url: str, log_dir: Path
) -> None:
    """With Redis killed, stream answers say `unavailable`, PublishBatch fails with UNAVAILABLE, and the health
    service turns NOT_SERVING."""
    migrated(database_url)
    metadata: Metadata = (("authorization", f"Bearer {new_token(database_url)}"),)
    with running_gateway(own_redis.url, database_url, log_dir, http_port="0") as gateway:
        own_redis.kill()
        answers = asyncio.run(stream(gateway.grpc_target, [data(1), data(2)], metadata))
        assert [(answer.success, answer.error_type) for answer in answers] == [(False, "unavailable")] * 2
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as failed:
                ingest_pb2_grpc.InteractionIngestStub(channel).PublishBatch(
                    ingest_pb2.InteractionBatch(records=[data(3)]), metadata=metadata, timeout=10
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(channel)
            wait_until(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                ),
                what="NOT_SERVING",
            )


async def written_before_stalling(
    target: str, metadata: Metadata, total: int, stall_s: float, *, batch: int = 0
) -> tuple[int, bool]:
    """Write `total` records on a stream without reading any answer (one per message, or `batch` per message on
    StreamInteractionBatches); returns how many records were written when the writes stalled for `stall_s`, and
    whether all were (the call is then cancelled). The client's receive window is kept at 64 KiB (no BDP growth),
    so unread answers back up to the server soon."""
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)
        call: grpc.aio.StreamStreamCall[Any, Any] = (
            stub.StreamInteractionBatches(metadata=metadata) if batch else stub.StreamInteractions(metadata=metadata)
        )
        written = 0

        async def write() -> None:
            nonlocal written
            while written < total:
                records = [data(written + offset, request={"padding": "x" * 1000}) for offset in range(batch or 1)]
                await call.write(ingest_pb2.InteractionBatch(records=records) if batch else records[0])
                written += len(records)

        writer = asyncio.create_task(write())
        last = -1
        while written != last and not writer.done():
            last = written
            await asyncio.sleep(stall_s)
        finished = writer.done()
        writer.cancel()
        call.cancel()
        return written, finished


def test_a_client_that_stops_reading_is_slowed_down_not_buffered(env: Env, redis_url: str) -> None:
    """A client that never reads its answers can write only a bounded number of records: once the answers fill its
    HTTP/2 window the server stops reading, and the client's writes wait."""
    written, finished = asyncio.run(written_before_stalling(env.gateway.grpc_target, env.metadata, 20_000, 2.0))
    assert not finished
    assert written < 10_000, written
    assert redis.Redis.from_url(redis_url).xlen("interactions") <= written


def test_a_batch_stream_client_that_stops_reading_is_slowed_down_not_buffered(env: Env, redis_url: str) -> None:
    """The same bound holds with 50 records per message: the window counts records, not messages."""
    before = redis.Redis.from_url(redis_url).xlen("interactions")
    written, finished = asyncio.run(
        written_before_stalling(env.gateway.grpc_target, env.metadata, 40_000, 2.0, batch=50)
    )
    assert not finished
    assert written < 10_000, written
    assert redis.Redis.from_url(redis_url).xlen("interactions") - before <= written


def test_a_slow_redis_slows_the_client_and_nothing_is_lost_after(
    own_redis: RedisServer, database_url: str, log_dir: Path
) -> None:
    """With Redis frozen, the gateway's window fills and the client's writes stall after a bounded number; once
    Redis resumes, a new stream is answered again."""
    migrated(database_url)
    metadata: Metadata = (("authorization", f"Bearer {new_token(database_url)}"),)
    with running_gateway(own_redis.url, database_url, log_dir, http_port="0", grpc_window="16") as gateway:
        own_redis.pause()
        try:
            written, finished = asyncio.run(written_before_stalling(gateway.grpc_target, metadata, 20_000, 2.0))
        finally:
            own_redis.resume()
        assert not finished
        assert written < 10_000, written
        answers = asyncio.run(stream(gateway.grpc_target, [data(i) for i in range(50)], metadata))
        assert all(answer.success for answer in answers)
