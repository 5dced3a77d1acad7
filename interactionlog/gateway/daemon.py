"""Builds `interactionlog serve` from settings, runs the HTTP and gRPC servers, and owns start-up and shutdown.

Lifecycle (read top to bottom in `run_gateway`): open the publisher, the Redis client of the backlog guard and
the token checker (all lazily: Redis or PostgreSQL may still be starting), start the servers asked for, wait
for SIGTERM/SIGINT, then shut down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass

import structlog
import uvicorn

from ..client.publisher import AsyncPublisher
from ..probes import MetricsServer
from ..redact import redact_url
from ..settings import Settings
from ..shards import Layout
from ..worker.daemon import stop_on_signals
from ..worker.streams import connect
from .backlog import BacklogGuard
from .config import GatewaySettings
from .grpc import GrpcServer, server_credentials
from .health import GatewayHealth
from .http import create_app
from .ingest import Ingest
from .metrics import GatewayMetrics
from .protocol import HeaderDeadlineProtocol
from .tokens import TokenVerifier

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_SHUTDOWN_TIMED_OUT = 1


@dataclass(frozen=True)
class Listening:
    """The ports actually bound (0 when that server is off); for tests that ask for port 0."""

    http_port: int
    grpc_port: int


class _Uvicorn(uvicorn.Server):
    """uvicorn, minus its signal handling: the daemon owns SIGTERM and stops both servers in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Gateway:
    """The parts of one `serve` process: built (without connecting) in `__init__`, then `start`, `drain`, `close`."""

    def __init__(
        self, settings: Settings, gateway: GatewaySettings, *, authenticate: bool, stopping: asyncio.Event
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.publisher = AsyncPublisher.from_url(
            settings.redis_url,
            stream=settings.stream,
            maxlen=settings.stream_maxlen,
            max_record_bytes=settings.max_record_bytes,
            timeout_s=gateway.publish_timeout_s,
            shards=settings.shards,  # routed by mcp_id, like every publisher (shards.Layout)
            wait_replicas=settings.wait_replicas,
            wait_timeout_ms=settings.wait_timeout_ms,
        )
        self.redis = connect(
            settings.redis_url,
            socket_timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_timeout_s,
            max_connections=4,
        )
        self.tokens = TokenVerifier(settings.database_url, cache_s=gateway.token_cache_s) if authenticate else None
        self.metrics = GatewayMetrics.create(settings.stream)
        self.guard = BacklogGuard(
            self.redis,
            streams=[shard.stream for shard in Layout(settings.stream, settings.shards).all()],
            group=settings.group,
            max_stream_length=gateway.max_stream_length,
            max_lag=gateway.max_lag,
        )
        self.ingest = Ingest(
            self.publisher,
            self.guard,
            self.metrics,
            max_record_bytes=settings.max_record_bytes,
            retry_after_s=gateway.retry_after_s,
        )
        self.health = GatewayHealth(self.redis, stopping)
        self.stopping = stopping
        self.chores: list[asyncio.Task[None]] = []
        self.http: _Uvicorn | None = None
        self.http_task: asyncio.Task[None] | None = None
        self.grpc: GrpcServer | None = None
        self.probes: MetricsServer | None = None

    async def start(self) -> Listening:
        """Start the chores and the servers asked for; returns the ports bound."""
        settings, gateway = self.settings, self.gateway
        if self.tokens is not None:
            await self.tokens.open()
        self.chores = [
            asyncio.create_task(self.health.beat()),
            asyncio.create_task(self.guard.run(gateway.backlog_interval_s, self.stopping)),
        ]
        http_port = grpc_port = 0
        if gateway.http_port:
            app = create_app(
                self.ingest,
                self.tokens,
                self.health,
                max_body_bytes=gateway.max_body_bytes,
                request_timeout_s=gateway.request_timeout_s,
            )
            self.http, self.http_task, http_port = await _start_http(app, gateway, settings.shutdown_timeout_s)
        elif settings.metrics_port:  # no HTTP server to carry /metrics, /livez, /readyz: the metrics port does
            registry = self.metrics.registry
            self.probes = MetricsServer(settings.metrics_host, settings.metrics_port, registry, self.health)
        if gateway.grpc_port:
            self.grpc = GrpcServer(
                self.ingest,
                self.tokens,
                self.health,
                window=gateway.grpc_window,
                max_message_bytes=max(gateway.max_body_bytes, settings.max_record_bytes + 65536),
            )
            credentials = server_credentials(gateway.tls_cert, gateway.tls_key) if gateway.tls_cert else None
            grpc_port = self.grpc.listen(gateway.gateway_host, gateway.grpc_port, credentials)
            await self.grpc.start()
        return Listening(http_port, grpc_port)

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting and let requests and streams in flight finish; False if they did not in `timeout_s`.

        The servers stop while Redis is still open: requests in flight must still have their XADDs confirmed
        and answered. uvicorn stops accepting, lets requests finish and closes idle connections; gRPC refuses
        new calls and gives the calls in flight the same time.
        """
        waits: list[asyncio.Task[None]] = []
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            waits.append(self.http_task)
        if self.grpc is not None:
            waits.append(asyncio.create_task(self.grpc.stop(timeout_s)))
        if not waits:
            return True
        _, unfinished = await asyncio.wait(waits, timeout=timeout_s + 1)
        return not unfinished

    async def close(self) -> None:
        """Then the sinks, in reverse order of need: servers still running are stopped at once, then the
        publisher's Redis, PostgreSQL, the guard's Redis, and last the metrics port (so a scrape during the
        drain still sees the final counts)."""
        self.stopping.set()
        for chore in self.chores:
            chore.cancel()
        if self.http is not None and self.http_task is not None and not self.http_task.done():
            self.http.should_exit = self.http.force_exit = True
            await asyncio.gather(self.http_task, return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(0)
        await self.publisher.close()
        if self.tokens is not None:
            await self.tokens.close()
        await self.redis.aclose()
        if self.probes is not None:
            await asyncio.to_thread(self.probes.close)


async def run_gateway(
    settings: Settings,
    gateway: GatewaySettings,
    *,
    authenticate: bool = True,
    stopping: asyncio.Event | None = None,
    on_started: Callable[[Listening], None] | None = None,
) -> int:
    """Serve until `stopping` is set (by SIGTERM/SIGINT when not given); returns the exit code."""
    stopping = stopping or stop_on_signals()
    log.info(
        "gateway_starting",
        redis_url=redact_url(settings.redis_url),
        database_url=redact_url(settings.database_url) if authenticate else None,
        stream=settings.stream,
        http_port=gateway.http_port,
        grpc_port=gateway.grpc_port,
        tls=bool(gateway.tls_cert),
    )
    if not authenticate:
        log.warning(
            "authentication_disabled",
            warning="UNAUTHENTICATED INGEST (--no-auth): anyone who can reach these ports can publish records as "
            "any MCP. Use it only behind a proxy that authenticates, or on a trusted network.",
        )
    parts = Gateway(settings, gateway, authenticate=authenticate, stopping=stopping)
    exit_code = EXIT_OK
    try:
        listening = await parts.start()
        log.info("gateway_started", http_port=listening.http_port, grpc_port=listening.grpc_port)
        if on_started:
            on_started(listening)
        await stopping.wait()
        log.info("gateway_draining", timeout_s=settings.shutdown_timeout_s)
        if not await parts.drain(settings.shutdown_timeout_s):
            exit_code = EXIT_SHUTDOWN_TIMED_OUT
            log.error("shutdown_timed_out", timeout_s=settings.shutdown_timeout_s)
    finally:
        await parts.close()
    log.info("gateway_stopped", exit_code=exit_code)
    return exit_code


async def _start_http(
    app: object, gateway: GatewaySettings, shutdown_timeout_s: float
) -> tuple[_Uvicorn, asyncio.Task[None], int]:
    """Bind the HTTP port ourselves (so port 0 works and a taken port fails here), then serve it."""
    family = socket.AF_INET6 if ":" in gateway.gateway_host else socket.AF_INET
    # IPPROTO_TCP said explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # a response's headers and body (two writes) wait on the client's delayed ACK, about 40 ms each.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((gateway.gateway_host, gateway.http_port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]  # a FastAPI application is an ASGI application
        log_config=None,  # uvicorn's loggers go through the root logger, hence our structured format
        access_log=False,  # one line per request would drown everything; the metrics count requests
        lifespan="off",
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=int(shutdown_timeout_s),
        limit_concurrency=2000,  # beyond this many connections and requests at once: 503, not exhaustion
        http=HeaderDeadlineProtocol.with_timeout(gateway.request_timeout_s),  # a slow-loris guard
        ssl_certfile=gateway.tls_cert or None,
        ssl_keyfile=gateway.tls_key or None,
    )
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise OSError("the HTTP server stopped while starting")
        await asyncio.sleep(0.01)
    return server, task, int(sock.getsockname()[1])
