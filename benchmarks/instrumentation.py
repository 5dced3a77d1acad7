"""What instrumentation costs an MCP server: the latency it adds to a trivial tool call, and `publish` per call.

    .venv/bin/python -m benchmarks.instrumentation [--calls 3000]

An official-SDK `MCPServer` with one trivial tool is called in-process by the SDK's own `Client` (no transport
framing, so the tool call itself is as cheap as the SDK allows and the instrumentation's share is as visible as
it gets; the event loop never idles, so the publisher's thread competes with every call for the GIL). Scenarios:
Redis up; Redis down (killed: connections refused); Redis frozen (SIGSTOP: connections hang).

Each scenario makes `--calls` calls, after a warm-up, to a plain and to an instrumented server, alternated (the
order swapped every call) so that the load of the machine weighs on both alike, and reports p50 and p99 of the
round trips; "added" is the instrumented server's percentile minus the plain one's. Then the middleware's own
time around a no-op handler (the request path's share alone), `BackgroundPublisher.publish` (a record dict:
validation and enqueue; a small record, then the suite's ~700-byte ones) and `publish_deferred` (what the
instrumentation calls) per call, below the queue's capacity (rounds of 1,000 calls, flushed between rounds), then
`publish_deferred` overloaded (10,000 calls in a tight loop into a 1,000-record queue: the caller spools what
overflows), and the worker's scrubbing pass per record. Redis is a throwaway server of the test suite's own kind
(`tests.servers.RedisServer`) on a loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from mcp import Client
from mcp.server.mcpserver import MCPServer

from benchmarks.records import encode, records
from interactionlog.client.background import BackgroundPublisher
from interactionlog.client.mcp.core import Recorder
from interactionlog.client.mcp.sdk_v2 import InteractionlogMiddleware
from interactionlog.mcp import instrument
from interactionlog.scrub import SCRUBBED_NOTE
from interactionlog.worker.decode import decode_entry
from tests.servers import RedisServer

WARMUP_CALLS = 300
ROUND = 1_000  # calls between flushes in the per-call measures: a tenth of the default queue


def _server() -> MCPServer:
    server = MCPServer("bench")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


def _percentiles(samples_us: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_us)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _paired_calls(plain: MCPServer, instrumented: MCPServer, count: int) -> tuple[list[float], list[float]]:
    """Alternate calls to the plain and the instrumented server (order swapped every call), so that whatever else
    the machine does weighs on both alike; returns each one's round trips in microseconds."""
    samples: tuple[list[float], list[float]] = ([], [])
    async with Client(plain) as first, Client(instrumented) as second:
        clients = (first, second)
        for i in range(WARMUP_CALLS + count):
            for which in (0, 1) if i % 2 == 0 else (1, 0):
                started = time.perf_counter_ns()
                await clients[which].call_tool("add", {"a": i, "b": 1})
                if i >= WARMUP_CALLS:
                    samples[which].append((time.perf_counter_ns() - started) / 1000)
    return samples


def _scenario(
    name: str, count: int, redis: RedisServer, spool: Path, before: Callable[[], None] = lambda: None
) -> tuple[str, list[float], list[float]]:
    instrumented = _server()
    handle = instrument(instrumented, url=redis.url, spool_dir=spool, mcp_id="bench")
    before()
    plain_samples, instrumented_samples = asyncio.run(_paired_calls(_server(), instrumented, count))
    handle.close(timeout_s=3)
    return name, plain_samples, instrumented_samples


async def _middleware_overhead(redis: RedisServer, spool: Path, count: int) -> None:
    """The instrumentation's own time in the request path: the 2.x middleware around a no-op `call_next`, with a
    stand-in request context holding what a real one holds for a stdio tools/call."""
    publisher = BackgroundPublisher.from_url(redis.url, spool_dir=spool)
    middleware = InteractionlogMiddleware(Recorder(publisher, mcp_id="bench", server_name="bench", server_version="1"))
    client = SimpleNamespace(name="mcp", version="2.3.0")
    session = SimpleNamespace(client_params=SimpleNamespace(client_info=client), _connection=SimpleNamespace())
    context = SimpleNamespace(method="tools/call", params={"name": "add", "arguments": {"a": 1, "b": 2}},
                              request_id=1, request=None, session=session, protocol_version="2026-07-28")  # fmt: skip
    result = {"content": [{"type": "text", "text": "3"}], "isError": False}

    async def call_next(context: object) -> dict[str, object]:
        return result

    samples = []
    for i in range(WARMUP_CALLS + count):
        started = time.perf_counter_ns()
        await middleware(context, call_next)
        if i >= WARMUP_CALLS:
            samples.append((time.perf_counter_ns() - started) / 1000)
        await asyncio.sleep(0)
    publisher.close()
    p50, p99 = _percentiles(samples)
    print(f"{'middleware around a no-op handler':<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us")


def _per_call(label: str, call: Callable[[], object], count: int, settle: Callable[[], object] | None = None) -> None:
    """Time `count` calls; with `settle`, in rounds of `ROUND` calls with `settle()` (a flush) between rounds, so
    the queue never fills: the cost of a call below capacity, the thread's work on earlier rounds competing."""
    samples = []
    for index in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
        if settle is not None and index % ROUND == ROUND - 1:
            settle()
    p50, p99 = _percentiles(samples)
    print(f"{label:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us")


def _worker_pass(count: int) -> None:
    """The worker's scrubbing pass: `decode_entry` per record with it off and on, for the suite's ~700-byte
    records as a non-Python publisher sends them (unstamped) and as a BackgroundPublisher sends them (stamped)."""
    unstamped = [{b"v": b"1", b"data": encode(record)} for record in records(count)]
    stamped = []
    for fields in unstamped:
        record = json.loads(fields[b"data"])
        record["metadata"] = {**record.get("metadata", {}), SCRUBBED_NOTE: True}
        stamped.append({b"v": b"1", b"data": json.dumps(record, separators=(",", ":")).encode()})
    runs = (("records, pass off", unstamped, False), ("unstamped records, pass on", unstamped, True),
            ("stamped records, pass on", stamped, True))  # fmt: skip
    for label, entries, scrub in runs:
        started = time.perf_counter_ns()
        for index, fields in enumerate(entries):
            decode_entry(f"{index + 1}-0", fields, 262_144, scrub=scrub)
        per_record = (time.perf_counter_ns() - started) / 1000 / len(entries)
        print(f"{'decode_entry, ' + label:<44} mean {per_record:7.1f} us per record")


def main() -> None:
    """Run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="tool calls per scenario (after the warm-up)")
    count = parser.parse_args().calls
    with RedisServer() as redis, tempfile.TemporaryDirectory() as spool_root:
        spool = Path(spool_root)
        results = [_scenario("Redis up", count, redis, spool / "up")]
        results.append(_scenario("Redis down (killed)", count, redis, spool / "down", redis.kill))
        redis.start()
        results.append(_scenario("Redis frozen (SIGSTOP)", count, redis, spool / "frozen", redis.pause))
        redis.resume()
        print(f"\ntool call round trip, {count} calls to each of a plain and an instrumented MCPServer, alternated")
        print(f"{'scenario':<24} {'plain p50':>10} {'instr. p50':>11} {'added p50':>10} "
              f"{'plain p99':>10} {'instr. p99':>11} {'added p99':>10}")  # fmt: skip
        for name, plain, instrumented in results:
            (plain_p50, plain_p99), (p50, p99) = _percentiles(plain), _percentiles(instrumented)
            print(f"{name:<24} {plain_p50:10.1f} {p50:11.1f} {p50 - plain_p50:10.1f} "
                  f"{plain_p99:10.1f} {p99:11.1f} {p99 - plain_p99:10.1f}")  # fmt: skip

        print()
        asyncio.run(_middleware_overhead(redis, spool / "middleware", count * 5))
        publisher = BackgroundPublisher.from_url(redis.url, spool_dir=spool / "publish")
        record = {"mcp_id": "bench", "method": "tools/call", "tool": "add", "request": {"a": 1, "b": 2},
                  "response": {"content": [{"type": "text", "text": "3"}]}, "duration_ms": 0.05}  # fmt: skip
        settle = lambda: publisher.flush(30)  # noqa: E731
        _per_call("BackgroundPublisher.publish(record)", lambda: publisher.publish(record), 20_000, settle)
        realistic = iter(list(records(20_000, seed=7)))  # the suite's ~700-byte tool calls, made before timing
        _per_call("BackgroundPublisher.publish(700 B record)", lambda: publisher.publish(next(realistic)), 20_000,
                  settle)  # fmt: skip
        _per_call("BackgroundPublisher.publish_deferred(build)", lambda: publisher.publish_deferred(lambda: record),
                  20_000, settle)  # fmt: skip
        publisher.close()
        # Overload: calls faster than the thread drains, 10x the queue, so most records are spooled by the caller.
        overloaded = BackgroundPublisher.from_url(redis.url, spool_dir=spool / "overflow", queue_max=1_000)
        _per_call("publish_deferred, queue full (caller spools)",
                  lambda: overloaded.publish_deferred(lambda: record), 10_000)  # fmt: skip
        overloaded.close()
    print()
    _worker_pass(20_000)


if __name__ == "__main__":
    main()
