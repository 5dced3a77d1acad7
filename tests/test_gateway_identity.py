"""`identity exact` through the gateways: a client says (`record.IDENTITY_HEADER`, an HTTP header or gRPC metadata)
that its records carry the timestamps their authors wrote, and the gateway marks those entries as the publishers
mark theirs, so the worker stores them without the dedupe window's probe (README "Idempotency"). Without the word,
or for a record whose timestamp the gateway fills in, entries stay unmarked (probed: safe)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import pytest
import redis

from interactionlog import Publisher
from interactionlog.proto import ingest_pb2, ingest_pb2_grpc
from interactionlog.record import EXACT_IDENTITY, IDENTITY_FIELD, IDENTITY_HEADER
from tests.gateway import GatewayProcess, migrated, new_token, post, running_gateway
from tests.pipeline import record, stream_entries

STAMPED = "2026-11-30T12:00:00.250Z"


@pytest.fixture
def gateway(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[tuple[GatewayProcess, str]]:
    """A running gateway and a token of MCP `weather`."""
    migrated(database_url)
    token = new_token(database_url)
    with running_gateway(redis_url, database_url, tmp_path) as process:
        yield process, token


def marks(redis_url: str) -> dict[str, bool]:
    """interaction_id -> whether its entry is marked `identity exact`, for every entry of the stream."""
    return {
        json.loads(fields[b"data"])["interaction_id"]: fields.get(IDENTITY_FIELD) == EXACT_IDENTITY
        for _, fields in stream_entries(redis.Redis.from_url(redis_url))
    }


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_transports_pass_the_mark_of_a_batch_whose_every_record_carries_its_authors_timestamp(
    gateway: tuple[GatewayProcess, str], redis_url: str, scheme: str
) -> None:
    """Through http:// and grpc://: a batch of records with their own timestamps is marked; records the publisher
    stamped are not, nor is a batch mixing both (sent unmarked as a whole: the worker probes it)."""
    process, token = gateway
    url = f"{process.http_url}/?token={token}" if scheme == "http" else f"grpc://{process.grpc_target}?token={token}"
    with Publisher.from_url(url) as publisher:
        publisher.publish_many([record(i, timestamp=STAMPED) for i in range(3)])
        publisher.publish_many([record(i) for i in range(3, 6)])
        publisher.publish_many([record(6, timestamp=STAMPED), record(7)])
    assert marks(redis_url) == {f"rec-{i:06d}": i < 3 for i in range(8)}


def test_an_http_client_marks_its_records_with_the_header_and_only_records_carrying_a_timestamp_are_marked(
    gateway: tuple[GatewayProcess, str], redis_url: str
) -> None:
    """Any client: the header marks the records of its request that carry a timestamp; one the gateway stamps is
    not marked, and without the header nothing is."""
    process, token = gateway
    with_time, without_time = record(1, timestamp=STAMPED), record(2)
    body = json.dumps([with_time, without_time])
    assert post(process, body, token=token, headers={IDENTITY_HEADER: "exact"}).status_code == 202
    assert post(process, json.dumps(record(3, timestamp=STAMPED)), token=token).status_code == 202
    unsaid = post(process, json.dumps(record(4, timestamp=STAMPED)), token=token, headers={IDENTITY_HEADER: "no"})
    assert unsaid.status_code == 202
    assert marks(redis_url) == {"rec-000001": True, "rec-000002": False, "rec-000003": False, "rec-000004": False}


def test_a_grpc_stream_with_the_metadata_marks_its_records_carrying_a_timestamp(
    gateway: tuple[GatewayProcess, str], redis_url: str
) -> None:
    """StreamInteractionBatches: the call's metadata applies to every batch of the stream."""
    process, token = gateway

    async def send(metadata: tuple[tuple[str, str], ...], records: list[dict[str, Any]]) -> None:
        async with grpc.aio.insecure_channel(process.grpc_target) as channel:
            stub = ingest_pb2_grpc.InteractionIngestStub(channel)

            async def requests() -> AsyncIterator[ingest_pb2.InteractionBatch]:
                for item in records:
                    data = json.dumps(item)
                    yield ingest_pb2.InteractionBatch(records=[ingest_pb2.InteractionData(data=data)])

            answers = [answer async for answer in stub.StreamInteractionBatches(requests(), metadata=metadata)]
            assert all(result.success for answer in answers for result in answer.results), answers

    auth = (("authorization", f"Bearer {token}"),)
    asyncio.run(send((*auth, (IDENTITY_HEADER.lower(), "exact")), [record(1, timestamp=STAMPED), record(2)]))
    asyncio.run(send(auth, [record(3, timestamp=STAMPED)]))
    assert marks(redis_url) == {"rec-000001": True, "rec-000002": False, "rec-000003": False}
