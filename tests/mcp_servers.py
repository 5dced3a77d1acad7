"""Instrumented MCP servers of each SDK flavour, run as real processes by the tests.

    python -m tests.mcp_servers <flavour> stdio
    python -m tests.mcp_servers <flavour> http <port>

flavour: `mcpserver` (official SDK 2.x MCPServer), `lowlevel` (official SDK 2.x low-level Server), `fastmcp`
(the standalone package). Every server offers the same things: tools `add`, `explode` (raises), `whoami` (its
pid), `refuse` (returns a result with isError), `echo` (returns its arguments; the secrets test plants values
in them), a
resource `config://app` and a prompt `greet`. `instrument()` takes its settings from INTERACTIONLOG_* variables.
"""

import json
import os
import sys
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from fastmcp import FastMCP
from fastmcp.tools import ToolResult
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp_types import CallToolResult, TextContent

from interactionlog.mcp import instrument

SERVER_NAME = "test-server"
SERVER_VERSION = "1.2.3"
RESOURCE_URI = "config://app"
RESOURCE_TEXT = '{"region": "eu-north-1"}'
REFUSAL = "the city is not known"
LOG_VARIABLE = "TEST_MCP_SERVER_LOG"  # where a stdio server's stderr goes (the SDK's client passes it through)


def _echo_text(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True)


def mcpserver() -> Any:
    """An MCPServer (official SDK 2.x, high level)."""

    server = MCPServer(SERVER_NAME, version=SERVER_VERSION)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def explode(reason: str) -> str:
        """Always raises."""
        raise ValueError(f"exploded: {reason}")

    @server.tool()
    def refuse(city: str) -> CallToolResult:
        """Returns a tool error result."""
        return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)

    @server.tool()
    def echo(payload: dict[str, Any]) -> str:
        """Returns its argument as JSON text."""
        return _echo_text(payload)

    @server.tool()
    def whoami() -> int:
        """The server's process id."""
        return os.getpid()

    @server.resource(RESOURCE_URI)
    def config() -> str:
        """A configuration document."""
        return RESOURCE_TEXT

    @server.prompt()
    def greet(name: str) -> str:
        """A greeting prompt."""
        return f"Say hello to {name}."

    return server


def lowlevel() -> Any:
    """A low-level Server (official SDK 2.x) with hand-written handlers."""

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        if params.name == "add":
            text = str(arguments["a"] + arguments["b"])
        elif params.name == "explode":
            raise ValueError(f"exploded: {arguments.get('reason')}")
        elif params.name == "whoami":
            text = str(os.getpid())
        elif params.name == "refuse":
            return types.CallToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)
        else:
            text = _echo_text(arguments.get("payload", {}))
        return CallToolResult(content=[TextContent(type="text", text=text)])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        schema = {"type": "object"}
        names = ("add", "explode", "refuse", "echo", "whoami")
        return types.ListToolsResult(tools=[types.Tool(name=name, input_schema=schema) for name in names])

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=str(params.uri), text=RESOURCE_TEXT)])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        name = (params.arguments or {}).get("name", "")
        message = types.PromptMessage(role="user", content=TextContent(type="text", text=f"Say hello to {name}."))
        return types.GetPromptResult(messages=[message])

    return Server(
        SERVER_NAME,
        version=SERVER_VERSION,
        on_call_tool=call_tool,
        on_list_tools=list_tools,
        on_read_resource=read_resource,
        on_get_prompt=get_prompt,
    )


def fastmcp() -> Any:
    """A FastMCP server of the standalone fastmcp package."""

    server = FastMCP(SERVER_NAME, version=SERVER_VERSION)

    @server.tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool
    def explode(reason: str) -> str:
        """Always raises."""
        raise ValueError(f"exploded: {reason}")

    @server.tool
    def refuse(city: str) -> ToolResult:
        """Returns a tool error result."""
        return ToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)

    @server.tool
    def echo(payload: dict[str, Any]) -> str:
        """Returns its argument as JSON text."""
        return _echo_text(payload)

    @server.tool
    def whoami() -> int:
        """The server's process id."""
        return os.getpid()

    @server.resource(RESOURCE_URI)
    def config() -> str:
        """A configuration document."""
        return RESOURCE_TEXT

    @server.prompt
    def greet(name: str) -> str:
        """A greeting prompt."""
        return f"Say hello to {name}."

    return server


FLAVOURS = {"mcpserver": mcpserver, "lowlevel": lowlevel, "fastmcp": fastmcp}


def _run_lowlevel(server: Any, transport: str, port: int) -> None:

    if transport == "stdio":

        async def main() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

        anyio.run(main)
    else:
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str]) -> None:
    """Build the flavour's server, instrument it, and serve it on the transport."""
    flavour, transport = argv[0], argv[1]
    if log := os.environ.get(LOG_VARIABLE):
        os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    port = int(argv[2]) if len(argv) > 2 else 0
    server = FLAVOURS[flavour]()
    handle = instrument(server)
    print(f"instrumented {handle.flavour} pid={os.getpid()}", file=sys.stderr, flush=True)
    if flavour == "lowlevel":
        _run_lowlevel(server, transport, port)
    elif transport == "stdio":
        server.run("stdio")
    elif flavour == "fastmcp":
        server.run("http", host="127.0.0.1", port=port, show_banner=False)
    else:
        server.run("streamable-http", host="127.0.0.1", port=port)


if __name__ == "__main__":
    main(sys.argv[1:])
