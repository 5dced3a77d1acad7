"""The HTTP server of a process's metrics port: /metrics, /livez and /readyz, served from a thread.

The thread is the point: /livez and /metrics still answer, for the post-mortem, while the process's event
loop is stuck, and /livez then says so. Any process can serve it: it needs a Prometheus registry and a
`HealthSource` that says how long its loop has been stalled and runs the readiness checks on that loop.

The thread runs an event loop of its own, so an idle connection costs a socket, not a thread, and h11 (the
HTTP/1.1 parser under httpx and uvicorn) reads requests. Every connection gets `REQUEST_TIMEOUT_S` to send its
request and is closed after the answer; at `MAX_CONNECTIONS` open at once, a new one makes room by closing the
oldest connection still waiting for its request.
So a thousand idle or slow clients can neither exhaust threads nor keep /livez from answering. A client that
resets mid-request is logged at debug level, as one structured line like every other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .errors import ConfigurationError

log = structlog.get_logger(__name__)

LIVENESS_STALE_S = 10.0  # the loop missed ten heartbeats: something blocks it
READY_TIMEOUT_S = 3.0  # per dependency; keep the readiness probe's timeoutSeconds above this
REQUEST_TIMEOUT_S = 5.0  # to send a whole request head; Prometheus and kubelet need a few milliseconds
MAX_CONNECTIONS = 512
MAX_REQUEST_HEAD_BYTES = 8 * 1024

Reply = tuple[int, bytes, str]
TEXT = "text/plain; charset=utf-8"


HEARTBEAT_S = 1.0


class LoopHeartbeat:
    """The liveness half of a `HealthSource`: `beat()` ticks on the process's event loop, and `stalled_s()` says
    how long ago it last did; a stale tick means something blocks that loop."""

    def __init__(self) -> None:
        self.last_beat = time.monotonic()

    async def beat(self) -> None:
        """Tick until cancelled."""
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def stalled_s(self) -> float:
        """Seconds since the last tick, less the tick period."""
        return max(time.monotonic() - self.last_beat - HEARTBEAT_S, 0.0)


class HealthSource(Protocol):
    """What the server asks about the process it serves."""

    def stalled_s(self) -> float:
        """Seconds the process's event loop has gone without turning."""

    async def readiness(self) -> dict[str, str]:
        """Each readiness check's result, "ok" or what is wrong (never a secret); ready when all are "ok"."""


class MetricsServer:
    """/metrics, /livez and /readyz on `host:port`, from a thread with its own event loop.

    Raises `ConfigurationError` when the address cannot be bound. Must be created on the event loop that
    `health.readiness()` runs on (the process's main loop).
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthSource) -> None:
        self.registry = registry
        self.health = health
        self._main_loop = asyncio.get_running_loop()
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.create_server((host, port), family=family, backlog=128)
        except OSError as error:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port} ({error}): choose another --metrics-port, or 0 to disable it"
            ) from None
        self._open = 0
        self._idle: dict[asyncio.Task[None], None] = {}  # connections without a whole request yet, oldest first
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="metrics-http", daemon=True)
        self._thread.start()
        started.wait()

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._socket.getsockname()[1])

    def close(self) -> None:
        """Stop serving and release the port; blocks until the server's thread has ended."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._socket.close()

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, sock=self._socket, limit=MAX_REQUEST_HEAD_BYTES)
        )
        started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection in a task of its own
        if self._open >= MAX_CONNECTIONS and not self._evict_oldest_idle():
            await _close(writer)
            return
        self._open += 1
        self._idle[task] = None
        try:
            await self._exchange(reader, writer, task)
        except (ConnectionError, TimeoutError, h11.RemoteProtocolError) as error:
            log.debug("metrics_connection_dropped", error=type(error).__name__)
        except asyncio.CancelledError:
            log.debug("metrics_connection_evicted")
        except Exception:  # the outer guard: a bug must not end the server
            log.exception("metrics_request_crashed")
        finally:
            self._open -= 1
            self._idle.pop(task, None)
            await _close(writer)

    def _evict_oldest_idle(self) -> bool:
        """Make room by closing the connection that has waited longest without sending a request: a flood of
        idle connections then keeps pushing out its own oldest, never the probe that just arrived."""
        if not self._idle:
            return False
        oldest = next(iter(self._idle))
        del self._idle[oldest]
        oldest.cancel()
        return True

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            request = await _next_request(connection, reader)
        self._idle.pop(task, None)
        if request is None:
            return
        accept = dict(request.headers).get(b"accept", b"").decode("latin-1")
        if request.method not in (b"GET", b"HEAD"):
            code, body, content_type = 405, b"method not allowed: use GET\n", TEXT
        else:
            code, body, content_type = await self._route(urlsplit(request.target.decode("latin-1")).path, accept)
        headers = [("content-type", content_type), ("content-length", str(len(body))), ("connection", "close")]
        writer.write(connection.send(h11.Response(status_code=code, headers=headers)) or b"")
        if request.method != b"HEAD":
            writer.write(connection.send(h11.Data(data=body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await writer.drain()

    async def _route(self, path: str, accept: str) -> Reply:
        if path == "/metrics":
            encode, content_type = choose_encoder(accept)
            return 200, encode(self.registry), content_type
        if path == "/livez":
            stalled_s = self.health.stalled_s()
            if stalled_s < LIVENESS_STALE_S:
                return 200, b"ok\n", TEXT
            return 503, f"event loop stalled for {stalled_s:.0f}s\n".encode(), TEXT
        if path == "/readyz":
            checks = await self._readiness()
            ready = all(state == "ok" for state in checks.values())
            body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
            return 200 if ready else 503, body, "application/json"
        return 404, b"not found: try /metrics, /livez or /readyz\n", TEXT

    async def _readiness(self) -> dict[str, str]:
        """Run the checks on the process's own event loop, which also proves that loop answers."""
        return await run_on_loop(self.health.readiness, self._main_loop, timeout_s=2 * READY_TIMEOUT_S)


async def run_on_loop(
    check: Callable[[], Coroutine[Any, Any, dict[str, str]]], loop: asyncio.AbstractEventLoop, *, timeout_s: float
) -> dict[str, str]:
    """Await `check()` on `loop` (another thread's) from this one; a stuck or closed loop is reported as the
    `worker` check failing, never raised."""
    try:
        future = asyncio.run_coroutine_threadsafe(check(), loop)
    except RuntimeError:  # the loop is closed: the process is exiting
        return {"worker": "stopped"}
    try:
        # Shielded: the checks bound their own time, and cancelling them from here (on a timeout, or when this
        # server closes) would cancel redis-py mid-command, which can leave its client unusable for the
        # process's other tasks.
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)
    except TimeoutError:
        return {"worker": f"event loop did not answer within {timeout_s:.0f}s"}
    except Exception as error:  # the outer guard: a bug in a check must still produce an answer
        log.exception("readiness_check_crashed")
        return {"worker": f"readiness check crashed: {type(error).__name__}"}


async def _next_request(connection: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """Read until h11 has a whole request head; None when the client closed first."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            connection.receive_data(data)
            if not data and connection.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        return None


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection and collect how it ended: a reset left unread in its closing future would be logged
    by asyncio as "Future exception was never retrieved", with a traceback, outside the log format."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()
