"""Driving the instrumented test servers (`tests.mcp_servers`) with the SDK's own client, over stdio or HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.mcp_tools import LOG_VARIABLE
from tests.pipeline import wait_until
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
SERVERS = "tests.mcp_servers"


def server_env(redis_url: str, spool_dir: Path, **extra: str) -> dict[str, str]:
    """The environment an instrumented test server reads its settings from."""
    return {
        **os.environ,
        "INTERACTIONLOG_REDIS_URL": redis_url,
        "INTERACTIONLOG_SPOOL_DIR": str(spool_dir),
        "INTERACTIONLOG_MCP_ID": "test-mcp",
        **extra,
    }


def stdio_target(
    flavour: str, env: Mapping[str, str], log: Path, python: str = sys.executable, module: str = SERVERS
) -> StdioServerParameters:
    """Parameters that make the client start the flavour's server over stdio, its stderr going to `log`."""
    return StdioServerParameters(
        command=python,
        args=["-m", module, flavour, "stdio"],
        env={**env, LOG_VARIABLE: str(log)},
        cwd=str(REPO),
    )


@contextmanager
def http_server(
    flavour: str, env: Mapping[str, str], log: Path, python: str = sys.executable, module: str = SERVERS
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The flavour's server on streamable HTTP; yields its URL and process, and terminates it afterwards."""
    port = free_port()
    with log.open("ab") as output:
        process = subprocess.Popen([python, "-m", module, flavour, "http", str(port)], env=dict(env), cwd=REPO,
                                   stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: _listening(port) or process.poll() is not None, timeout_s=60, what="the MCP server")
        assert process.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@asynccontextmanager
async def connected(target: Any, mode: str = "legacy") -> AsyncIterator[Client]:
    """An initialized client of `target` (stdio parameters or an HTTP URL)."""
    async with Client(target, mode=mode) as client:
        yield client


async def timed_call(client: Client, name: str, arguments: dict[str, Any]) -> float:
    """Call a tool and return the round trip in milliseconds."""
    started = time.perf_counter()
    await client.call_tool(name, arguments)
    return (time.perf_counter() - started) * 1000
