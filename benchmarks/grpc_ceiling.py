"""The ceiling grpcio sets on one stream, on this machine: an echo servicer on the gateway's own proto.

    python -m benchmarks.grpc_ceiling [--quick]

The echo answers every record as the gateway does (one `InteractionResponse` each, on `StreamInteractions`; one
`InteractionBatchResponse` per message, on `StreamInteractionBatches`) but admits nothing and XADDs nothing, so
its rate is what grpcio itself allows through one stream, with the client of `benchmarks.gateway` and both
processes sharing the machine's cores as they do there. The gateway's own rate can only be lower; the gap is the
gateway's work per record (admission and the XADD).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.aio

from interactionlog.proto import ingest_pb2, ingest_pb2_grpc

from .servers import free_port
from .streams import BATCH_RECORDS, StreamFigures, one_stream


def accepted(index: int) -> ingest_pb2.InteractionResponse:
    """An answer as large as the gateway's for an accepted record."""
    return ingest_pb2.InteractionResponse(
        interaction_id="00000000-0000-0000-0000-000000000000", success=True, entry_id="1764528000000-0", index=index
    )


class EchoServicer(ingest_pb2_grpc.InteractionIngestServicer):
    """Answers every record at once, as accepted, without looking at it."""

    async def StreamInteractions(
        self, request_iterator: AsyncIterator[ingest_pb2.InteractionData], context: Any
    ) -> AsyncIterator[ingest_pb2.InteractionResponse]:
        """One answer per record."""
        index = 0
        async for _ in request_iterator:
            yield accepted(index)
            index += 1

    async def StreamInteractionBatches(
        self, request_iterator: AsyncIterator[ingest_pb2.InteractionBatch], context: Any
    ) -> AsyncIterator[ingest_pb2.InteractionBatchResponse]:
        """One answer per batch, one result per record."""
        index = 0
        async for batch in request_iterator:
            count = len(batch.records)
            results = [accepted(index + offset) for offset in range(count)]
            index += count
            yield ingest_pb2.InteractionBatchResponse(results=results)

    async def PublishBatch(
        self, request: ingest_pb2.InteractionBatch, context: Any
    ) -> ingest_pb2.InteractionBatchResponse:
        """All records of the batch, answered."""
        return ingest_pb2.InteractionBatchResponse(results=[accepted(index) for index in range(len(request.records))])


async def serve(port: int) -> None:
    """Serve the echo on loopback until killed."""
    server = grpc.aio.server()
    ingest_pb2_grpc.add_InteractionIngestServicer_to_server(EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextmanager
def running_echo() -> Iterator[tuple[str, int]]:
    """The echo server in a process of its own: its target and pid."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc_ceiling", "--serve", str(port)])
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield target, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(count: int) -> dict[str, StreamFigures]:
    """The echo's figures, one record per message and `BATCH_RECORDS` per message."""
    with running_echo() as (target, pid):
        asyncio.run(one_stream(target, pid, (), min(count, 2000)))  # warm-up: connection, code paths
        return {
            "per message": asyncio.run(one_stream(target, pid, (), count)),
            f"{BATCH_RECORDS} per message": asyncio.run(one_stream(target, pid, (), count, batch=BATCH_RECORDS)),
        }


def main() -> None:
    """Print the echo's figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the echo's own process
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(serve(arguments.serve))
        return
    count = 2_000 if arguments.quick else 30_000
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    started = time.monotonic()
    for name, figures in measure(count).items():
        print(f"grpcio echo, one stream, {count} records, {name}: {figures}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
