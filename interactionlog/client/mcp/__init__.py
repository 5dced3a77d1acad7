"""MCP SDK instrumentation: one module per SDK flavour over a shared `core` (facts, records, the recorder).

- `sdk_v2`: the official `mcp` SDK 2.x, through its `Server.middleware` chain (low-level `Server` and
  `MCPServer`);
- `sdk_v1`: the official `mcp` SDK 1.x, by wrapping the low-level `Server.request_handlers` (which its
  `FastMCP` uses too);
- `fastmcp`: the standalone `fastmcp` package, as one of its `Middleware`.

None of these modules imports an SDK at import time of `interactionlog`; `interactionlog.mcp.instrument`
picks the flavour from the server object it is given.
"""
