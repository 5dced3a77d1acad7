"""Load figures of the ingest gateway (`interactionlog serve`) over loopback, beside the Redis path's.

    python -m benchmarks.gateway [--quick]

Starts its own Redis and PostgreSQL (PostgreSQL only holds the token table: no worker runs, the figures are the
gateway's) and a real `interactionlog serve` process, then measures, each bounded in count and time:

- single-record POSTs at a steady rate, one keep-alive client: p50/p99 latency (and `Publisher.publish` straight
  to Redis, the same records, for comparison);
- batched POSTs (NDJSON, 1000 records each) from two clients: records/s, and the gateway's CPU per record;
- one gRPC stream, every record answered: StreamInteractions (one record per message) and
  StreamInteractionBatches (`BATCH_RECORDS` per message): records/s, and the gateway's and the client's CPU per
  record;
- a gRPC client that writes without ever reading its answers: the gateway's memory (RSS) over time, which must
  stay flat while the client is held back by flow control;
- the same two streams against a bare grpcio echo (`benchmarks.grpc_ceiling`): the ceiling grpcio sets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import httpx

from interactionlog.client.publisher import Publisher
from interactionlog.client.transports.http import SOCKET_OPTIONS
from interactionlog.gateway.tokens import create_token
from interactionlog.proto import ingest_pb2, ingest_pb2_grpc
from interactionlog.worker.store import migrate

from .grpc_ceiling import measure as echo_ceiling
from .servers import Servers, cpu_seconds, create_database, free_port, start_servers
from .streams import BATCH_RECORDS, MCP_ID, bench_records, one_stream

INGEST = "/api/v2/interactions"


@dataclass(frozen=True)
class Gateway:
    """A running gateway: its process and ports."""

    process: subprocess.Popen[bytes]
    http_url: str
    grpc_target: str


@contextmanager
def running_gateway(servers: Servers, database_url: str, log_dir: Path) -> Iterator[Gateway]:
    """`interactionlog serve` on free loopback ports, with a stream cap large enough for every run."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "interactionlog", "serve", "--redis-url", servers.redis_url,
        "--database-url", database_url, "--gateway-host", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--stream-maxlen", "10000000", "--max-stream-length", "0",
        "--log-format", "json", "--log-level", "warning", "--metrics-port", "0",
    ]  # fmt: skip
    with (log_dir / "gateway.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    gateway = Gateway(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{gateway.http_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start: {(log_dir / 'gateway.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=30)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def single_posts(gateway: Gateway, token: str, count: int, rate: float) -> tuple[float, float]:
    """p50 and p99 latency (ms) of `count` single-record POSTs sent at `rate` per second."""
    bodies = [json.dumps(item).encode() for item in bench_records(count, 11)]
    latencies = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    transport = httpx.HTTPTransport(socket_options=SOCKET_OPTIONS)  # as the http:// transport does: no Nagle delay
    with httpx.Client(headers=headers, timeout=10, transport=transport) as client:
        for body in bodies[:50]:  # warm-up: connection, validators
            client.post(gateway.http_url + INGEST, content=body)
        start = time.perf_counter()
        for index, body in enumerate(bodies):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            response = client.post(gateway.http_url + INGEST, content=body)
            latencies.append((time.perf_counter() - sent) * 1000)
            assert response.status_code == 202, response.text
    return statistics.median(latencies), percentile(latencies, 0.99)


def redis_publishes(redis_url: str, count: int, rate: float) -> tuple[float, float]:
    """p50 and p99 latency (ms) of `Publisher.publish` straight to Redis, at the same rate, for comparison."""
    items = bench_records(count, 12)
    latencies = []
    with Publisher.from_url(redis_url, stream="bench:direct") as publisher:
        for item in items[:50]:
            publisher.publish(item)
        start = time.perf_counter()
        for index, item in enumerate(items):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            publisher.publish(item)
            latencies.append((time.perf_counter() - sent) * 1000)
    return statistics.median(latencies), percentile(latencies, 0.99)


def batched_posts(gateway: Gateway, token: str, count: int, clients: int = 2) -> tuple[float, float]:
    """Records/s of NDJSON POSTs of 1000 records from `clients` threads, and the gateway's CPU µs per record."""
    lines = [json.dumps(item).encode() for item in bench_records(count, 13)]
    bodies = [b"\n".join(lines[start : start + 1000]) for start in range(0, count, 1000)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}

    def send(share: list[bytes]) -> None:
        transport = httpx.HTTPTransport(socket_options=SOCKET_OPTIONS)
        with httpx.Client(headers=headers, timeout=60, transport=transport) as client:
            for body in share:
                response = client.post(gateway.http_url + INGEST, content=body)
                assert response.status_code == 202, response.text[:500]

    threads = [threading.Thread(target=send, args=(bodies[index::clients],)) for index in range(clients)]
    cpu_before, started = cpu_seconds(gateway.process.pid), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return count / elapsed, (cpu_seconds(gateway.process.pid) - cpu_before) / count * 1e6


async def stalled_reader(gateway: Gateway, token: str, seconds: float) -> tuple[list[float], int]:
    """A client that writes records and never reads an answer, for `seconds`: the gateway's RSS every half second
    (MiB), and how many records the client managed to write."""
    item = bench_records(1, 15)[0]
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    samples = [rss_mib(gateway.process.pid)]
    written = 0
    async with grpc.aio.insecure_channel(gateway.grpc_target, options=options) as channel:
        call = ingest_pb2_grpc.InteractionIngestStub(channel).StreamInteractions(
            metadata=(("authorization", f"Bearer {token}"),)
        )

        async def write() -> None:
            nonlocal written
            while True:
                await call.write(ingest_pb2.InteractionData(data=json.dumps({**item, "interaction_id": str(written)})))
                written += 1

        writer = asyncio.create_task(write())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            samples.append(rss_mib(gateway.process.pid))
        writer.cancel()
        call.cancel()
    return samples, written


def main() -> None:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    quick = parser.parse_args().quick
    singles, batched, streamed, stall_s = (300, 5_000, 2_000, 4.0) if quick else (3_000, 60_000, 30_000, 20.0)
    with start_servers() as servers, tempfile.TemporaryDirectory() as log_dir:
        database_url = create_database(servers, "gateway_bench")
        asyncio.run(migrate(database_url))
        _, token = asyncio.run(create_token(database_url, MCP_ID, "benchmark"))
        print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
        with running_gateway(servers, database_url, Path(log_dir)) as gateway:
            p50, p99 = single_posts(gateway, token, singles, rate=200)
            print(f"single POST, {singles} at 200/s:        p50 {p50:.2f} ms   p99 {p99:.2f} ms")
            p50, p99 = redis_publishes(servers.redis_url, singles, rate=200)
            print(f"Publisher.publish to Redis, same:      p50 {p50:.2f} ms   p99 {p99:.2f} ms")
            rate, cpu = batched_posts(gateway, token, batched)
            print(f"batched POSTs, {batched} records:      {rate:,.0f} records/s   gateway CPU {cpu:.1f} us/record")
            metadata = (("authorization", f"Bearer {token}"),)
            pid = gateway.process.pid
            asyncio.run(one_stream(gateway.grpc_target, pid, metadata, min(streamed, 2000)))  # warm-up
            figures = asyncio.run(one_stream(gateway.grpc_target, pid, metadata, streamed))
            print(f"one gRPC stream, {streamed} records, one per message:   {figures}")
            figures = asyncio.run(one_stream(gateway.grpc_target, pid, metadata, streamed, batch=BATCH_RECORDS))
            print(f"one gRPC stream, {streamed} records, {BATCH_RECORDS} per message: {figures}")
            samples, written = asyncio.run(stalled_reader(gateway, token, stall_s))
            print(
                f"gRPC client not reading, {stall_s:g} s:    gateway RSS {samples[0]:.1f} -> max {max(samples):.1f} -> "
                f"{samples[-1]:.1f} MiB; the client could write {written} records before flow control held it"
            )
        for name, figures in echo_ceiling(streamed).items():
            print(f"grpcio echo (no admission, no Redis), {streamed} records, {name}: {figures}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share these cores)")


if __name__ == "__main__":
    main()
