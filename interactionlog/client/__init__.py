"""What runs inside the MCP process: the publishers (and, as they come, transports, spool and instrumentation).

Imports only the bottom modules (`record`, `settings`, `errors`, ...), never `worker`, `ops` or `gateway`.
"""
