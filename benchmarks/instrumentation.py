"""What instrumentation costs an MCP server: the latency it adds to a trivial tool call, and `publish` per call.

    .venv/bin/python -m benchmarks.instrumentation [--calls 3000]

An official-SDK `MCPServer` with one trivial tool is called in-process by the SDK's own `Client` (no transport
framing, so the tool call itself is as cheap as the SDK allows and the instrumentation's share is as visible as
it gets). Each scenario makes `--calls` sequential calls after a warm-up and reports the round trip's p50 and p99:

- baseline: the server not instrumented;
- Redis up; Redis down (killed: connections refused); Redis frozen (SIGSTOP: connections hang).

"added" is the scenario's percentile minus the baseline's. Then `BackgroundPublisher.publish` (a record dict:
validation and enqueue) and `publish_deferred` (what the instrumentation calls) are timed per call. Redis is a
throwaway server of the test suite's own kind (`tests.servers.RedisServer`) on a loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mcp import Client
from mcp.server.mcpserver import MCPServer

from interactionlog.client.background import BackgroundPublisher
from interactionlog.mcp import Instrumentation, instrument
from tests.servers import RedisServer

WARMUP_CALLS = 300


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


async def _calls(server: MCPServer, count: int) -> list[float]:
    async with Client(server) as client:
        for i in range(WARMUP_CALLS):
            await client.call_tool("add", {"a": i, "b": 1})
        samples = []
        for i in range(count):
            started = time.perf_counter_ns()
            await client.call_tool("add", {"a": i, "b": 1})
            samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


Result = tuple[str, list[float], Instrumentation | None]


def _scenario(
    name: str, count: int, redis: RedisServer | None, spool: Path, before: Callable[[], None] = lambda: None
) -> Result:
    server = _server()
    handle = instrument(server, url=redis.url, spool_dir=spool, mcp_id="bench") if redis is not None else None
    before()
    samples = asyncio.run(_calls(server, count))
    return name, samples, handle


def _per_call(label: str, call: Callable[[], object], count: int) -> None:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    p50, p99 = _percentiles(samples)
    print(f"{label:<44} p50 {p50:8.1f} us   p99 {p99:8.1f} us")


def main() -> None:
    """Run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="tool calls per scenario (after the warm-up)")
    count = parser.parse_args().calls
    with RedisServer() as redis, tempfile.TemporaryDirectory() as spool_root:
        spool = Path(spool_root)
        results = [_scenario("baseline (not instrumented)", count, None, spool)]
        results.append(_scenario("Redis up", count, redis, spool / "up"))
        results.append(_scenario("Redis down (killed)", count, redis, spool / "down", redis.kill))
        redis.start()
        results.append(_scenario("Redis frozen (SIGSTOP)", count, redis, spool / "frozen", redis.pause))
        redis.resume()
        base_p50, base_p99 = _percentiles(results[0][1])
        print(f"\ntool call round trip, {count} sequential calls per scenario (in-process MCPServer + Client)")
        print(f"{'scenario':<30} {'p50 us':>9} {'p99 us':>9} {'added p50':>10} {'added p99':>10}")
        for name, samples, handle in results:
            p50, p99 = _percentiles(samples)
            print(f"{name:<30} {p50:9.1f} {p99:9.1f} {p50 - base_p50:10.1f} {p99 - base_p99:10.1f}")
            if handle is not None:
                handle.close(timeout_s=3)

        publisher = BackgroundPublisher.from_url(redis.url, spool_dir=spool / "publish")
        record = {"mcp_id": "bench", "method": "tools/call", "tool": "add", "request": {"a": 1, "b": 2},
                  "response": {"content": [{"type": "text", "text": "3"}]}, "duration_ms": 0.05}  # fmt: skip
        print()
        _per_call("BackgroundPublisher.publish(record)", lambda: publisher.publish(record), 20_000)
        _per_call("BackgroundPublisher.publish_deferred(build)", lambda: publisher.publish_deferred(lambda: record),
                  20_000)  # fmt: skip
        publisher.close()


if __name__ == "__main__":
    main()
