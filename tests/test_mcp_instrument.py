"""Real instrumented MCP servers of each SDK flavour, driven by the SDK's own client over stdio and streamable HTTP,
recorded through Redis and a real worker into PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from mcp import Client
from mcp.shared.exceptions import MCPError

from interactionlog.mcp import detect_flavour, instrument
from interactionlog.record import EXACT_IDENTITY, IDENTITY_FIELD
from tests.mcp_drive import SERVERS, connected, http_server, server_env, stdio_target
from tests.mcp_servers import fastmcp, lowlevel, mcpserver
from tests.mcp_tools import REFUSAL, RESOURCE_TEXT, SERVER_NAME
from tests.pipeline import count_rows, migrate, running_worker, stream_entries, wait_until

# Planted in arguments and results: under sensitive keys, under innocent keys, and inside free text.
SECRETS = {
    "password": "hunter2-Pa55word",
    "api_key": "k-9f8e7d6c5b4a3921",
    "innocent_jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "innocent_card": "4111 1111 1111 1111",
    "innocent_aws": "AKIAIOSFODNN7EXAMPLE",
    "note": "call it with Authorization: Bearer sk-live-abcdefghijklmnopqrstuvwx please",
}
SECRET_VALUES = ["hunter2-Pa55word", "k-9f8e7d6c5b4a3921", "dozjgNryP4J3jVmNHl0w5N", "4111 1111 1111 1111",
                 "AKIAIOSFODNN7EXAMPLE", "abcdefghijklmnopqrstuvwx"]  # fmt: skip
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _exercise(target: Any, mode: str) -> dict[str, Any]:
    """Every kind of call the tests check; returns what the client saw."""
    seen: dict[str, Any] = {}
    async with connected(target, mode) as client:
        seen["add"] = await client.call_tool("add", {"a": 2, "b": 3}, meta={"traceparent": TRACEPARENT})  # type: ignore[arg-type]
        try:
            seen["explode"] = await client.call_tool("explode", {"reason": "boom"})
        except MCPError as error:  # the low-level server answers a raising handler with a JSON-RPC error
            seen["explode"] = error
        seen["refuse"] = await client.call_tool("refuse", {"city": "Atlantis"})
        seen["echo"] = await client.call_tool("echo", {"payload": SECRETS})
        seen["resource"] = await client.read_resource("config://app")
        seen["prompt"] = await client.get_prompt("greet", {"name": "Ann"})
    return seen


def _stored(database_url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        query = "SELECT tool, method, session_id, is_error, trace_id, data FROM interaction_logs"
        rows = conn.execute(query).fetchall()
    return {tool: {"method": method, "session_id": session, "is_error": is_error, "trace_id": trace, "data": data}
            for tool, method, session, is_error, trace, data in rows}  # fmt: skip


def exercise_and_check(
    flavour: str,
    transport: str,
    *,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
    python: str = sys.executable,
    module: str = SERVERS,
) -> None:
    """Drive every kind of call against the flavour's instrumented server through a real worker, and check what
    PostgreSQL holds (shared by the 2.x and the 1.x tests)."""
    migrate(database_url)
    env = server_env(redis_url, tmp_path / "spool")
    log = tmp_path / "server.log"
    with running_worker(redis_url, database_url, tmp_path) as worker:
        if transport == "stdio":
            # "auto": the 2026-07-28 protocol where the server speaks it (no handshake), else the handshake.
            seen = asyncio.run(_exercise(stdio_target(flavour, env, log, python, module), "auto"))
        else:
            # The handshake, so that the server hands out an Mcp-Session-Id (the 2026 protocol has none).
            with http_server(flavour, env, log, python, module) as (url, _):
                seen = asyncio.run(_exercise(url, "legacy"))
        wait_until(lambda: count_rows(database_url) >= 6, what="six stored interactions")
    stored = _stored(database_url)
    assert count_rows(database_url) == 6
    assert {(row["method"], tool) for tool, row in stored.items()} == {
        ("tools/call", "add"), ("tools/call", "explode"), ("tools/call", "refuse"), ("tools/call", "echo"),
        ("resources/read", "config://app"), ("prompts/get", "greet"),
    }  # fmt: skip
    # The request's own time is the record's timestamp, which makes its identity exact: no probe for copies.
    entries = stream_entries(redis.Redis.from_url(redis_url))
    assert [fields.get(IDENTITY_FIELD) for _, fields in entries] == [EXACT_IDENTITY] * 6
    add = stored["add"]["data"]
    started = datetime.fromisoformat(add["timestamp"])
    assert timedelta(0) < datetime.now(UTC) - started < timedelta(minutes=5)
    assert add["request"]["arguments"] == {"a": 2, "b": 3}
    assert add["response"]["content"][0]["text"] == "5"
    assert add["is_error"] is False
    assert add["duration_ms"] > 0
    assert add["request_id"] not in (None, "")
    assert add["client"]["name"] == "mcp"
    assert add["metadata"]["mcp.server.name"] == SERVER_NAME
    assert add["metadata"]["mcp.protocol.version"]
    assert add["metadata"]["network.transport"] == ("pipe" if transport == "stdio" else "tcp")
    assert stored["add"]["trace_id"] == TRACE_ID
    assert add["mcp_id"] == "test-mcp"

    explode = stored["explode"]
    assert explode["is_error"] is True
    if isinstance(seen["explode"], MCPError):
        assert explode["data"]["error"] == {"type": "ValueError", "message": "exploded: boom"}
    else:
        assert seen["explode"].is_error
    assert "exploded: boom" in json.dumps(explode["data"]) or "Error executing tool explode" in json.dumps(
        explode["data"]
    )
    refuse = stored["refuse"]["data"]
    assert refuse["is_error"] is True
    assert seen["refuse"].is_error
    if "error" in refuse:  # fastmcp 2.x can only raise a ToolError to report a tool error
        assert refuse["error"] == {"type": "ToolError", "message": REFUSAL}
    else:
        assert refuse["response"]["content"][0]["text"] == REFUSAL
        assert refuse["metadata"]["error.type"] == "tool_error"
    assert stored["config://app"]["data"]["response"]["contents"][0]["text"] == RESOURCE_TEXT
    assert stored["greet"]["data"]["request"]["arguments"] == {"name": "Ann"}
    assert "Ann" in json.dumps(stored["greet"]["data"]["response"])

    sessions = {row["session_id"] for row in stored.values()}
    assert len(sessions) == 1, sessions
    assert None not in sessions

    # The client saw the secrets echoed back unchanged: the instrumentation never changes a result.
    echoed = json.loads(seen["echo"].content[0].text)
    assert echoed == SECRETS
    table = json.dumps([row["data"] for row in stored.values()])
    for secret in SECRET_VALUES:
        assert secret not in table, f"{secret!r} reached the table"
        assert secret not in log.read_text(errors="replace"), f"{secret!r} reached the server's log"
        assert secret not in worker.log_text(), f"{secret!r} reached the worker's log"
    echo = stored["echo"]["data"]
    assert echo["request"]["arguments"]["payload"]["password"] == "[redacted:key]"
    assert echo["request"]["arguments"]["payload"]["innocent_card"] == "[redacted:card_number]"
    assert echo["metadata"]["interactionlog.redacted"]["key"] >= 2


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("flavour", ["mcpserver", "lowlevel", "fastmcp"])
def test_every_call_of_an_instrumented_server_is_stored_with_its_facts_and_without_secrets(
    flavour: str, transport: str, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Tool calls (ok, raising, isError), resource reads and prompt gets land in PostgreSQL once each, with the
    method, target, arguments, result or error, session, client, protocol, server, trace and duration; no planted
    secret reaches the table or the server's log (official SDK 2.x and fastmcp 4.x)."""
    exercise_and_check(flavour, transport, redis_url=redis_url, database_url=database_url, tmp_path=tmp_path)


def test_instrument_recognises_each_flavour_and_is_safe_to_call_twice(redis_url: str, tmp_path: Path) -> None:
    """Each SDK flavour is detected, a second instrument() returns the first handle, and close() unhooks it."""
    for factory, flavour in ((mcpserver, "mcp-v2"), (lowlevel, "mcp-v2"), (fastmcp, "fastmcp")):
        server = factory()
        assert detect_flavour(server) == flavour
        handle = instrument(server, url=redis_url, spool_dir=tmp_path / flavour)
        assert instrument(server) is handle
        assert handle.recorder.mcp_id == SERVER_NAME
        handle.close()
        assert instrument(server, url=redis_url, spool_dir=False) is not handle
        instrument(server).close()
    with pytest.raises(TypeError, match=r"does not know a builtins\.object"):
        detect_flavour(object())


def test_a_non_python_publishers_secrets_are_scrubbed_by_the_worker(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A record XADDed by hand with a password and a bearer token is stored with both replaced by markers."""
    migrate(database_url)
    data = ('{"mcp_id":"go-mcp","interaction_id":"x1","request":{"user":"ann","password":"s3cret-value",'
            '"n":1.50},"response":{"text":"use Bearer abcdefghijklmnop1234"}}')  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    client.xadd("interactions", {"v": "1", "data": data})
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: count_rows(database_url) == 1, what="the stored row")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT data::text FROM interaction_logs").fetchone()
    assert row is not None
    assert "s3cret-value" not in row[0]
    assert "abcdefghijklmnop1234" not in row[0]
    stored = json.loads(row[0])
    assert stored["request"] == {"user": "ann", "password": "[redacted:key]", "n": 1.50}
    assert stored["response"] == {"text": "use [redacted:bearer_token]"}
    assert stored["metadata"]["interactionlog.redacted"] == {"key": 1, "bearer_token": 1}


def test_a_failing_instrumentation_never_changes_a_tools_result_or_error(redis_url: str) -> None:
    """With the publisher closed under it (every record fails), tool results and tool errors are what they are
    without instrumentation."""

    async def outcomes(server: Any) -> tuple[Any, Any]:
        async with Client(server) as client:
            added = await client.call_tool("add", {"a": 2, "b": 3})
            exploded = await client.call_tool("explode", {"reason": "boom"})
        return added.model_dump(exclude={"meta"}), exploded.model_dump(exclude={"meta"})

    expected = asyncio.run(outcomes(mcpserver()))
    server = mcpserver()
    handle = instrument(server, url=redis_url, spool_dir=False)
    handle.publisher.close()
    try:
        assert asyncio.run(outcomes(server)) == expected
    finally:
        handle.close()


def test_record_all_requests_adds_the_other_requests(redis_url: str, tmp_path: Path) -> None:
    """With record_all_requests, tools/list is recorded besides tools/call; without it, only tools/call is."""

    async def list_and_call(server: Any) -> None:
        async with Client(server) as client:
            await client.list_tools()
            await client.call_tool("add", {"a": 1, "b": 1})

    for record_all, expected in ((True, {"tools/list", "tools/call"}), (False, {"tools/call"})):
        redis.Redis.from_url(redis_url).delete("interactions")
        server = mcpserver()
        handle = instrument(server, url=redis_url, spool_dir=tmp_path, record_all_requests=record_all)
        asyncio.run(list_and_call(server))
        assert handle.flush(10)
        handle.close()
        entries = stream_entries(redis.Redis.from_url(redis_url))
        assert {json.loads(fields[b"data"])["method"] for _, fields in entries} == expected
