"""Instrumented MCP servers of each SDK flavour, run as real processes by the tests.

    python -m tests.mcp_servers <flavour> stdio
    python -m tests.mcp_servers <flavour> http <port>

flavour: `mcpserver` (official SDK 2.x MCPServer), `lowlevel` (official SDK 2.x low-level Server), `fastmcp`
(the standalone package, 4.x). Every server offers the tools, resource and prompt of `tests.mcp_tools`, plus
`refuse`, which returns a result with isError. `instrument()` takes its settings from INTERACTIONLOG_* variables.
"""

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
from tests import mcp_tools
from tests.mcp_tools import REFUSAL, RESOURCE_URI, SERVER_NAME, SERVER_VERSION, TOOL_NAMES


def mcpserver() -> Any:
    """An MCPServer (official SDK 2.x, high level)."""
    server = MCPServer(SERVER_NAME, version=SERVER_VERSION)
    for tool in mcp_tools.PLAIN_TOOLS:
        server.tool()(tool)

    @server.tool()
    def refuse(city: str) -> CallToolResult:
        """Returns a tool error result."""
        return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)

    server.resource(RESOURCE_URI)(mcp_tools.config)
    server.prompt()(mcp_tools.greet)
    return server


def lowlevel() -> Any:
    """A low-level Server (official SDK 2.x) with hand-written handlers around the same functions."""

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "refuse":
            return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)
        tool = {tool.__name__: tool for tool in mcp_tools.PLAIN_TOOLS}[params.name]
        return CallToolResult(content=[TextContent(type="text", text=str(tool(**(params.arguments or {}))))])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        schema = {"type": "object"}
        return types.ListToolsResult(tools=[types.Tool(name=name, input_schema=schema) for name in TOOL_NAMES])

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        contents = types.TextResourceContents(uri=str(params.uri), text=mcp_tools.config())
        return types.ReadResourceResult(contents=[contents])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        text = mcp_tools.greet(**(params.arguments or {}))
        message = types.PromptMessage(role="user", content=TextContent(type="text", text=text))
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
    for tool in mcp_tools.PLAIN_TOOLS:
        server.tool(tool)

    @server.tool
    def refuse(city: str) -> ToolResult:
        """Returns a tool error result."""
        return ToolResult(content=[TextContent(type="text", text=REFUSAL)], is_error=True)

    server.resource(RESOURCE_URI)(mcp_tools.config)
    server.prompt(mcp_tools.greet)
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
    port = int(argv[2]) if len(argv) > 2 else 0
    mcp_tools.redirect_stderr()
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
