"""An instrumented MCP server while Redis dies, and after the MCP process itself is SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
from pathlib import Path

import psycopg
import pytest

from interactionlog.client.spool import Spool
from tests.mcp_drive import connected, server_env, stdio_target, timed_call
from tests.pipeline import count_rows, migrate, running_worker, wait_until
from tests.servers import RedisServer

pytestmark = pytest.mark.fault

# What the benchmark promises the instrumentation adds, with room for a loaded 2-core machine: the client's
# round trip during the outage may not exceed the one before it by more than this.
LATENCY_SLACK_MS = 5.0


def _spooled(spool_dir: Path) -> int:
    spool = Spool(spool_dir)
    try:
        return spool.depth("interactions").entries
    finally:
        spool.close()


def _interaction_ids(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT interaction_id FROM interaction_logs")]


@pytest.mark.parametrize("own_redis", [{"appendonly": True}], indirect=True)
def test_tool_calls_stay_fast_while_redis_is_down_and_every_record_lands_once_after(
    own_redis: RedisServer, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis killed mid-session, tool calls keep their latency, records go to the spool, and once Redis is
    back every record is stored exactly once; the instrumentation's log lines go to stderr, never into the stdio
    protocol channel."""
    migrate(database_url)
    spool_dir = tmp_path / "spool"
    target = stdio_target("mcpserver", server_env(own_redis.url, spool_dir), tmp_path / "server.log")
    calls = {"before": 40, "during": 60, "after": 20}

    async def scenario() -> dict[str, list[float]]:
        latencies: dict[str, list[float]] = {}
        async with connected(target) as client:
            latencies["before"] = [await timed_call(client, "add", {"a": i, "b": 1}) for i in range(calls["before"])]
            own_redis.kill()
            latencies["during"] = [await timed_call(client, "add", {"a": i, "b": 2}) for i in range(calls["during"])]
            wait_until(lambda: _spooled(spool_dir) >= calls["during"], timeout_s=10,
                       what="the outage's records in the spool")  # fmt: skip
            own_redis.start()
            latencies["after"] = [await timed_call(client, "add", {"a": i, "b": 3}) for i in range(calls["after"])]
            # The server, still running, replays its spool once Redis answers again.
            wait_until(lambda: count_rows(database_url) >= total, timeout_s=60, what="every record stored")
        return latencies

    total = sum(calls.values())
    with running_worker(own_redis.url, database_url, tmp_path):
        latencies = asyncio.run(scenario())
    ids = _interaction_ids(database_url)
    assert len(ids) == total
    assert len(set(ids)) == total
    assert _spooled(spool_dir) == 0
    before, during = statistics.median(latencies["before"]), statistics.median(latencies["during"])
    assert during <= before + LATENCY_SLACK_MS, (before, during)
    assert max(latencies["during"]) < 250, max(latencies["during"])  # a synchronous publish would wait ~2 s
    assert "publish_unavailable_spooling" in (tmp_path / "server.log").read_text()
    assert "Failed to parse JSONRPC message" not in caplog.text


def test_records_spooled_before_a_sigkill_are_replayed_by_the_next_process(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """An MCP process SIGKILLed while Redis is down loses none of the records it had spooled: the next process
    on the same spool directory replays them once Redis is back."""
    migrate(database_url)
    spool_dir = tmp_path / "spool"
    env = server_env(own_redis.url, spool_dir)
    own_redis.kill()
    spooled = 25

    async def first_process() -> None:
        async with connected(stdio_target("mcpserver", env, tmp_path / "first.log")) as client:
            pid = int((await client.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
            for i in range(spooled - 1):
                await client.call_tool("add", {"a": i, "b": 0})
            wait_until(lambda: _spooled(spool_dir) >= spooled, timeout_s=10, what="the records in the spool")
            os.kill(pid, signal.SIGKILL)

    with contextlib.suppress(Exception):  # the client notices its server died; that is the point
        asyncio.run(first_process())
    own_redis.start()

    async def second_process() -> None:
        async with connected(stdio_target("mcpserver", env, tmp_path / "second.log")) as client:
            await client.call_tool("add", {"a": 100, "b": 0})
            wait_until(lambda: count_rows(database_url) >= spooled + 1, timeout_s=60, what="the replayed records")

    with running_worker(own_redis.url, database_url, tmp_path):
        asyncio.run(second_process())
    ids = _interaction_ids(database_url)
    assert len(ids) == spooled + 1 == len(set(ids))
    assert _spooled(spool_dir) == 0
