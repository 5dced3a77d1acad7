"""Instrumented MCP servers of each SDK flavour, run as real processes by the tests.

    python -m tests.mcp_servers <flavour> stdio
    python -m tests.mcp_servers <flavour> http <port>

flavour: `mcpserver` (official SDK 2.x MCPServer), `lowlevel` (official SDK 2.x low-level Server), `fastmcp`
(the standalone package, 4.x). Every server offers the tools, resource and prompt of `tests.mcp_tools`, plus
`refuse`, which returns a result with isError. `instrument()` takes its settings from INTERACTIONLOG_* variables.
"""

import sys
from typing import Any

import mcp_types as types
import uvicorn
from fastmcp import FastMCP
from fastmcp.tools import ToolResult
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

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


def serve(server: Any, flavour: str, transport: str, port: int) -> None:
    """Serve an instrumented server of this module on the transport."""
    if flavour == "lowlevel" and transport == "stdio":
        mcp_tools.serve_lowlevel_stdio(server)
    elif flavour == "lowlevel":
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")
    elif transport == "stdio":
        server.run("stdio")
    elif flavour == "fastmcp":
        server.run("http", host="127.0.0.1", port=port, show_banner=False)
    else:
        server.run("streamable-http", host="127.0.0.1", port=port)


if __name__ == "__main__":
    mcp_tools.main(sys.argv[1:], FLAVOURS, serve)
