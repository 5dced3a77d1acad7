"""Instrumented MCP servers on the official SDK 1.x, run by the tests with the interpreter of `.venv-mcp1`.

    .venv-mcp1/bin/python -m tests.mcp_servers_v1 <flavour> stdio
    .venv-mcp1/bin/python -m tests.mcp_servers_v1 <flavour> http <port>

flavour: `lowlevel1` (1.x low-level Server, decorators), `fastmcp1` (1.x's own FastMCP), `fastmcp2` (the
standalone fastmcp 2.x, built on SDK 1.x). They offer what `tests.mcp_servers` offers, from `tests.mcp_tools`,
except that fastmcp 2.x has no way to return a tool error result: its `refuse` raises a ToolError instead.
This module is type-checked against no SDK (the main virtualenv holds 2.x): see the mypy override.
"""

import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from mcp import types
from mcp.server.fastmcp import FastMCP as MCPFastMCP
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.routing import Mount

from tests import mcp_tools
from tests.mcp_tools import REFUSAL, RESOURCE_URI, SERVER_NAME, SERVER_VERSION, TOOL_NAMES


def lowlevel1() -> Any:
    """A 1.x low-level Server with decorator-registered handlers around the same functions."""
    server: Any = Server(SERVER_NAME, version=SERVER_VERSION)

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name=name, inputSchema={"type": "object"}) for name in TOOL_NAMES]

    @server.call_tool()
    async def call_tool(name: str, arguments: dict[str, Any]) -> Any:
        if name == "refuse":
            return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], isError=True)
        tool = {tool.__name__: tool for tool in mcp_tools.PLAIN_TOOLS}[name]
        return [TextContent(type="text", text=str(tool(**arguments)))]

    @server.list_resources()
    async def list_resources() -> list[types.Resource]:
        return [types.Resource(uri=RESOURCE_URI, name="config")]

    @server.read_resource()
    async def read_resource(uri: Any) -> list[ReadResourceContents]:
        return [ReadResourceContents(content=mcp_tools.config(), mime_type="text/plain")]

    @server.list_prompts()
    async def list_prompts() -> list[types.Prompt]:
        return [types.Prompt(name="greet")]

    @server.get_prompt()
    async def get_prompt(name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        text = mcp_tools.greet(**(arguments or {}))
        message = types.PromptMessage(role="user", content=TextContent(type="text", text=text))
        return types.GetPromptResult(messages=[message])

    return server


def fastmcp1() -> Any:
    """The 1.x SDK's own FastMCP."""
    server = MCPFastMCP(SERVER_NAME)
    for tool in mcp_tools.PLAIN_TOOLS:
        server.tool()(tool)

    @server.tool()
    def refuse(city: str) -> CallToolResult:
        """Returns a tool error result."""
        return CallToolResult(content=[TextContent(type="text", text=REFUSAL)], isError=True)

    server.resource(RESOURCE_URI)(mcp_tools.config)
    server.prompt()(mcp_tools.greet)
    return server


def fastmcp2() -> Any:
    """The standalone fastmcp 2.x (on SDK 1.x)."""
    server = FastMCP(SERVER_NAME, version=SERVER_VERSION)
    for tool in mcp_tools.PLAIN_TOOLS:
        server.tool(tool)

    @server.tool
    def refuse(city: str) -> str:
        """Refuses (fastmcp 2.x reports a tool error only by raising)."""
        raise ToolError(REFUSAL)

    server.resource(RESOURCE_URI)(mcp_tools.config)
    server.prompt(mcp_tools.greet)
    return server


FLAVOURS = {"lowlevel1": lowlevel1, "fastmcp1": fastmcp1, "fastmcp2": fastmcp2}


def _serve_lowlevel_http(server: Any, port: int) -> None:
    manager = StreamableHTTPSessionManager(app=server)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Mount("/mcp", app=manager.handle_request)], lifespan=lifespan)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve(server: Any, flavour: str, transport: str, port: int) -> None:
    """Serve an instrumented server of this module on the transport."""
    if flavour == "lowlevel1" and transport == "stdio":
        mcp_tools.serve_lowlevel_stdio(server)
    elif flavour == "lowlevel1":
        _serve_lowlevel_http(server, port)
    elif transport == "stdio":
        server.run("stdio") if flavour == "fastmcp1" else server.run("stdio", show_banner=False)
    elif flavour == "fastmcp1":
        server.settings.host, server.settings.port = "127.0.0.1", port
        server.run("streamable-http")
    else:
        server.run("http", host="127.0.0.1", port=port, show_banner=False)


if __name__ == "__main__":
    mcp_tools.main(sys.argv[1:], FLAVOURS, serve)
