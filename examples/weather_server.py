"""A small MCP server instrumented with interactionlog: the two lines are marked.

.venv/bin/pip install -e '.[mcp]'     # scripts/setup installs it already
INTERACTIONLOG_REDIS_URL=redis://localhost:6379/0 .venv/bin/python examples/weather_server.py   # stdio
.venv/bin/python examples/weather_server.py http 8000          # streamable HTTP, http://127.0.0.1:8000/mcp

README, "Instrument your MCP server", has a client that calls it and says where the records show up.
"""

import sys

from mcp.server.mcpserver import MCPServer

from interactionlog.mcp import instrument  # line 1

server = MCPServer("weather", version="1.0.0")


@server.tool()
def get_forecast(city: str, days: int = 1) -> str:
    """A made-up forecast for `city`."""
    return f"{city}: sunny for {days} day(s), 21C"


@server.resource("weather://cities")
def cities() -> str:
    """The cities this server knows."""
    return "Oslo, Lisbon, Nairobi"


@server.prompt()
def plan_trip(city: str) -> str:
    """A prompt that asks for a trip plan."""
    return f"Plan a weekend in {city} around the weather forecast."


instrument(server)  # line 2: every tools/call, resources/read and prompts/get is now recorded

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
    else:
        server.run("stdio")
