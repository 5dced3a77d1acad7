"""What runs inside the MCP process: the publishers (sync, asyncio, background), the spool, and the MCP SDK
instrumentation (`mcp/`, one module per SDK flavour).

Imports only the bottom modules (`record`, `settings`, `errors`, ...), never `worker`, `ops` or `gateway`.
"""
