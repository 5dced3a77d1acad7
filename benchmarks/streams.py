"""One gRPC ingest stream driven as fast as it answers, shared by `benchmarks.gateway` and
`benchmarks.grpc_ceiling` so that the gateway and the bare-grpcio echo are measured with the same client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc.aio

from interactionlog.proto import ingest_pb2, ingest_pb2_grpc

from .records import records
from .servers import cpu_seconds

MCP_ID = "bench"  # the token's MCP: every record is published as it
BATCH_RECORDS = 100  # records per InteractionBatch on StreamInteractionBatches


def bench_records(count: int, seed: int) -> list[dict[str, Any]]:
    """The benchmark suite's realistic ~700-byte records, all of the token's MCP."""
    return [{**item, "mcp_id": MCP_ID} for item in records(count, seed=seed)]


@dataclass(frozen=True)
class StreamFigures:
    """One stream's rate, and CPU per record of the server's process and of the client (this process)."""

    rate: float  # records/s, every record answered
    server_us: float
    client_us: float

    def __str__(self) -> str:
        return f"{self.rate:,.0f} records/s   server CPU {self.server_us:.1f} us/record   client {self.client_us:.1f}"


async def one_stream(
    target: str, server_pid: int, metadata: Sequence[tuple[str, str]], count: int, *, batch: int = 0
) -> StreamFigures:
    """`count` records through one call: StreamInteractions (one record per message), or with `batch`,
    StreamInteractionBatches (`batch` records per message). Every record must be answered as accepted."""
    data = [ingest_pb2.InteractionData(data=json.dumps(item)) for item in bench_records(count, 14)]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.InteractionIngestStub(channel)
        server_before, client_before, started = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        answered = 0
        if batch:

            async def batches() -> AsyncIterator[ingest_pb2.InteractionBatch]:
                for start in range(0, count, batch):
                    yield ingest_pb2.InteractionBatch(records=data[start : start + batch])

            async for reply in stub.StreamInteractionBatches(batches(), metadata=metadata):
                assert all(result.success for result in reply.results), reply.results[0].message
                answered += len(reply.results)
        else:

            async def singles() -> AsyncIterator[ingest_pb2.InteractionData]:
                for message in data:
                    yield message

            async for answer in stub.StreamInteractions(singles(), metadata=metadata):
                assert answer.success, answer.message
                answered += 1
        elapsed = time.perf_counter() - started
    assert answered == count, (answered, count)
    server_us = (cpu_seconds(server_pid) - server_before) / count * 1e6
    return StreamFigures(count / elapsed, server_us, (time.process_time() - client_before) / count * 1e6)
