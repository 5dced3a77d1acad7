"""Ingest services for MCP servers that cannot reach Redis: HTTP and gRPC, behind per-MCP bearer tokens.

They feed the same stream as the publish helpers, through `client.AsyncPublisher`, with the same guarantee: a
record is accepted only once its XADD is confirmed. `config` (the `serve` settings) and `tokens` need only the
core dependencies; the servers need the `gateway` extra. Imports `worker` and `client`, never `ops` or `cli`.
"""
