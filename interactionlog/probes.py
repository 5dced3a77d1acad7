"""The HTTP server of a process's metrics port: /metrics, /livez and /readyz, served from a thread.

The thread is the point: /livez and /metrics still answer, for the post-mortem, while the process's event
loop is stuck, and /livez then says so. Any process can serve it: it needs a Prometheus registry and a
`HealthSource` that says how long its loop has been stalled and runs the readiness checks on that loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .errors import ConfigurationError

log = structlog.get_logger(__name__)

LIVENESS_STALE_S = 10.0  # the loop missed ten heartbeats: something blocks it
READY_TIMEOUT_S = 3.0  # per dependency; keep the readiness probe's timeoutSeconds above this


class HealthSource(Protocol):
    """What the server asks about the process it serves."""

    def stalled_s(self) -> float:
        """Seconds the process's event loop has gone without turning."""

    async def readiness(self) -> dict[str, str]:
        """Each readiness check's result, "ok" or what is wrong (never a secret); ready when all are "ok"."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: HealthSource
    loop: asyncio.AbstractEventLoop


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encode(self.server.registry), content_type)
        elif path == "/livez":
            stalled_s = self.server.health.stalled_s()
            if stalled_s < LIVENESS_STALE_S:
                self._reply(200, b"ok\n")
            else:
                self._reply(503, f"event loop stalled for {stalled_s:.0f}s\n".encode())
        elif path == "/readyz":
            checks = self._readiness()
            ready = all(state == "ok" for state in checks.values())
            body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
            self._reply(200 if ready else 503, body, "application/json")
        else:
            self._reply(404, b"not found: try /metrics, /livez or /readyz\n")

    def _readiness(self) -> dict[str, str]:
        """Run the checks on the worker's event loop, which also proves the loop answers."""
        try:
            future = asyncio.run_coroutine_threadsafe(self.server.health.readiness(), self.server.loop)
        except RuntimeError:  # the loop is closed: the worker is exiting
            return {"worker": "stopped"}
        try:
            return future.result(timeout=2 * READY_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            return {"worker": f"event loop did not answer within {2 * READY_TIMEOUT_S:.0f}s"}
        except Exception as error:  # the outer guard: a bug in a check must still produce an answer
            log.exception("readiness_check_crashed")
            return {"worker": f"readiness check crashed: {type(error).__name__}"}

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # `format` is the stdlib's parameter name
        """Silent: probes and scrapes arrive every few seconds and would drown the worker's own log lines."""


class MetricsServer:
    """The threaded HTTP server on the metrics port."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthSource) -> None:
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as error:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port} ({error}): choose another --metrics-port, or 0 to disable it"
            ) from None
        self._httpd.registry = registry
        self._httpd.health = health
        self._httpd.loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port; blocks up to half a second (serve_forever's poll interval)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
