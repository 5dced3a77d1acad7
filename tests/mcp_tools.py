"""The tools, resource and prompt every test MCP server offers, as plain functions each SDK registers.

No SDK is imported at module level, so the servers on SDK 2.x (`tests.mcp_servers`) and on SDK 1.x
(`tests.mcp_servers_v1`) share them, and their `main`. `refuse`, which returns an SDK type, is written per SDK.
"""

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from interactionlog.mcp import instrument

SERVER_NAME = "test-server"
SERVER_VERSION = "1.2.3"
RESOURCE_URI = "config://app"
RESOURCE_TEXT = '{"region": "eu-north-1"}'
REFUSAL = "the city is not known"
LOG_VARIABLE = "TEST_MCP_SERVER_LOG"  # where a stdio server's stderr goes (the SDK's client passes it through)
TOOL_NAMES = ("add", "explode", "refuse", "echo", "whoami")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def explode(reason: str) -> str:
    """Always raises."""
    raise ValueError(f"exploded: {reason}")


def echo(payload: dict[str, Any]) -> str:
    """Returns its argument as JSON text."""
    return json.dumps(payload, sort_keys=True)


def whoami() -> int:
    """The server's process id."""
    return os.getpid()


def config() -> str:
    """A configuration document."""
    return RESOURCE_TEXT


def greet(name: str) -> str:
    """A greeting prompt."""
    return f"Say hello to {name}."


PLAIN_TOOLS = (add, explode, echo, whoami)


def redirect_stderr() -> None:
    """Send this process's stderr to the file named by LOG_VARIABLE, if set."""
    if log := os.environ.get(LOG_VARIABLE):
        os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)


def serve_lowlevel_stdio(server: Any) -> None:
    """Run a low-level Server (1.x or 2.x: the same API) over stdio."""
    from mcp.server.stdio import stdio_server  # noqa: PLC0415 - from whichever SDK this interpreter has

    async def main() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(main)


Serve = Callable[[Any, str, str, int], None]  # (server, flavour, transport, port)


def main(argv: list[str], flavours: Mapping[str, Callable[[], Any]], serve: Serve) -> None:
    """`<flavour> stdio` or `<flavour> http <port>`: build the flavour's server, instrument it, serve it."""
    flavour, transport = argv[0], argv[1]
    port = int(argv[2]) if len(argv) > 2 else 0
    redirect_stderr()
    server = flavours[flavour]()
    handle = instrument(server)
    print(f"instrumented {handle.flavour} pid={os.getpid()}", file=sys.stderr, flush=True)
    serve(server, flavour, transport, port)
