"""The worker's metrics port: stream gauges read from Redis on an interval, and /metrics, /livez and /readyz.

Gauges. Once per `metrics_interval_s`, whichever replica takes the lease `<stream>:interactionlog:metrics:lease`
(SET NX PX) reads XINFO, XPENDING and XLEN through `status.collect_status` and publishes the result as a
snapshot at `<stream>:interactionlog:metrics`; every other replica GETs that snapshot instead. So N replicas cost
Redis one XINFO round per interval plus two O(1) commands per replica, and every replica serves the same figures,
at most about one interval old. Prometheus scraping N pods therefore sees N identical series of each gauge, told
apart by `instance`/`pod` only: aggregate gauges with `max by (stream, group)`, never `sum`; counters with `sum`.
Serving the snapshot everywhere, rather than only on the lease holder, keeps each series continuous when the lease
moves, so alerts' `for:` clauses and `deriv()` never see the gaps that a hopping exporter would leave.
A snapshot older than three intervals (Redis unreachable) is not served: the gauges go absent rather than lie,
and only `..._stream_collected_timestamp_seconds` remains, for the staleness alert.

Lag unknown. Redis reports a group's lag as NULL when it cannot compute it (an entry after the group's last
delivered id was XDELed; it stays NULL until the group has read to the end of the stream). The `..._lag` sample
is then left out and `..._lag_known` is 0. A 0 would claim "caught up" when nobody knows, and a NaN would turn
every `sum` over it into NaN and make `> threshold` silently false; an absent sample plus an explicit 0/1 flag
keeps aggregations honest and lets one alert watch the flag.

Health. /livez answers 200 while the event loop turns (a heartbeat task ticks every second); /readyz answers
200 when Redis and PostgreSQL answer and the group exists, 503 with the failing checks as JSON otherwise, and
503 once the worker drains after SIGTERM. The HTTP server runs in a thread, so /metrics still answers, for the
post-mortem, while the loop is stuck.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError, ResponseError

from . import metrics as m
from .errors import ConfigurationError, DatabaseUnavailableError
from .housekeeping import recorded_losses
from .metrics import WorkerMetrics
from .settings import Settings
from .status import ConsumerStatus, GroupStatus, PipelineStatus, collect_status
from .store import Store
from .streams import connect

log = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0
LIVENESS_STALE_S = 10.0  # the loop missed ten heartbeats: something blocks it
READY_TIMEOUT_S = 3.0  # per dependency; keep the readiness probe's timeoutSeconds above this
STALE_AFTER_INTERVALS = 3


def snapshot_key(stream: str) -> str:
    """Where the lease holder publishes the latest snapshot of `stream`."""
    return f"{stream}:interactionlog:metrics"


def lease_key(stream: str) -> str:
    """The lease deciding which replica reads Redis for `stream` this interval."""
    return f"{stream}:interactionlog:metrics:lease"


@dataclass(frozen=True)
class Snapshot:
    """The pipeline as Redis showed it at `collected_at` (Unix seconds), with each group's recorded trim losses."""

    collected_at: float
    status: PipelineStatus
    lost: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """The form published in Redis for the other replicas."""
        return json.dumps({"collected_at": self.collected_at, "status": self.status.to_dict(), "lost": self.lost})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Snapshot:
        """Parse a published snapshot; raises ValueError, KeyError or TypeError when it is not one."""
        data = json.loads(raw)
        status = dict(data["status"])
        status["groups"] = [
            GroupStatus(**{**group, "consumers": [ConsumerStatus(**c) for c in group["consumers"]]})
            for group in status["groups"]
        ]
        lost = {str(group): int(count) for group, count in data.get("lost", {}).items()}
        return cls(float(data["collected_at"]), PipelineStatus(**status), lost)


class StreamGauges:
    """A Prometheus collector rendering the latest snapshot as the gauges of `metrics.STREAM_GAUGES`."""

    def __init__(self, stream: str, *, active_idle_s: float, stale_after_s: float) -> None:
        self.stream = stream
        self.active_idle_s = active_idle_s
        self.stale_after_s = stale_after_s
        self.snapshot: Snapshot | None = None  # replaced whole by the collector task; read by scrape threads

    def describe(self) -> list[Metric]:
        """The gauge families without samples, so the registry knows the names before the first snapshot."""
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        """The gauges of the latest snapshot; only its timestamp once it is too old to trust."""
        snapshot = self.snapshot
        families = self._families()
        if snapshot is not None:
            families[m.COLLECTED_AT].add_metric([self.stream], snapshot.collected_at)
            if time.time() - snapshot.collected_at <= self.stale_after_s:
                self._add_samples(families, snapshot)
        return iter(families.values())

    @staticmethod
    def _families() -> dict[m.GaugeSpec, GaugeMetricFamily]:
        return {
            spec: GaugeMetricFamily(spec.full_name, spec.documentation, labels=spec.labels) for spec in m.STREAM_GAUGES
        }

    def _add_samples(self, families: dict[m.GaugeSpec, GaugeMetricFamily], snapshot: Snapshot) -> None:
        status = snapshot.status
        stream = status.stream
        families[m.STREAM_LENGTH].add_metric([stream], status.length)
        families[m.DEAD_LETTER_LENGTH].add_metric([stream], status.dead_letters)
        for group in status.groups:
            labels = [stream, group.name]
            families[m.GROUP_LAG_KNOWN].add_metric(labels, 0 if group.lag is None else 1)
            if group.lag is not None:
                families[m.GROUP_LAG].add_metric(labels, group.lag)
            families[m.GROUP_PENDING].add_metric(labels, group.pending)
            families[m.GROUP_OLDEST_PENDING_AGE].add_metric(labels, group.oldest_pending_age_s or 0.0)
            families[m.GROUP_CONSUMERS].add_metric(labels, len(group.consumers))
            # 0 until a loss is recorded, so the first loss is a step that delta() sees, not a new series.
            families[m.GROUP_LOST_TO_TRIMMING].add_metric(labels, snapshot.lost.get(group.name, 0))
            active = sum(consumer.idle_s < self.active_idle_s for consumer in group.consumers)
            families[m.GROUP_ACTIVE_CONSUMERS].add_metric(labels, active)
            for consumer in group.consumers:
                families[m.CONSUMER_IDLE].add_metric([*labels, consumer.name], consumer.idle_s)
                families[m.CONSUMER_PENDING].add_metric([*labels, consumer.name], consumer.pending)


class GaugeCollector:
    """Refreshes `gauges` every `interval_s`, reading Redis itself only when it holds the lease."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gauges: StreamGauges,
        *,
        stream: str,
        dead_letters: str,
        owner: str,
        interval_s: float,
    ) -> None:
        self.redis = redis
        self.gauges = gauges
        self.stream = stream
        self.dead_letters = dead_letters
        self.owner = owner
        self.interval_s = interval_s
        self.collected = 0  # rounds that read Redis (lease held, or no fresh snapshot to share)
        self.shared = 0  # rounds that reused the lease holder's snapshot

    async def refresh(self) -> Snapshot:
        """One round: take the lease and read Redis, or reuse the snapshot published this interval."""
        interval_ms = max(int(self.interval_s * 1000), 1)
        if await self.redis.set(lease_key(self.stream), self.owner, nx=True, px=interval_ms):
            return await self._collect_and_publish()
        shared = await self._published()
        # Fresh means from this interval or the last (the holder may not have published yet). Otherwise the
        # holder died between lease and publish, publishes a format this release cannot read, or its clock is
        # far off ours: read Redis ourselves, which costs load but never correctness.
        if shared is not None and time.time() - shared.collected_at <= 2 * self.interval_s:
            self.shared += 1
            return shared
        return await self._collect_and_publish()

    async def run(self) -> None:
        """Refresh until cancelled; while Redis is away the last snapshot is kept, and goes stale."""
        failing = False
        while True:
            try:
                self.gauges.snapshot = await self.refresh()
            except RedisError as error:
                # The consumers log the outage itself; one line here says the gauges are frozen meanwhile.
                if not failing:
                    log.warning("stream_gauges_unavailable", error=str(error))
                failing = True
            except Exception:
                log.exception("stream_gauges_crashed")
            else:
                if failing:
                    log.info("stream_gauges_recovered")
                failing = False
            await asyncio.sleep(self.interval_s)

    async def _collect_and_publish(self) -> Snapshot:
        collected_at = time.time()
        status = await collect_status(self.redis, self.stream, self.dead_letters)
        snapshot = Snapshot(collected_at, status, await recorded_losses(self.redis, self.stream))
        ttl_ms = max(int(STALE_AFTER_INTERVALS * self.interval_s * 1000), 1)
        await self.redis.set(snapshot_key(self.stream), snapshot.to_json(), px=ttl_ms)
        self.collected += 1
        return snapshot

    async def _published(self) -> Snapshot | None:
        raw = await self.redis.get(snapshot_key(self.stream))
        if raw is None:
            return None
        try:
            return Snapshot.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None


class Health:
    """Liveness (the event loop turns) and readiness (Redis and PostgreSQL answer, the group exists)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: Store,
        *,
        stream: str,
        group: str,
        stopping: asyncio.Event,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.redis = redis
        self.store = store
        self.stream = stream
        self.group = group
        self.stopping = stopping
        self.timeout_s = timeout_s
        self.last_beat = time.monotonic()

    async def beat(self) -> None:
        """Tick until cancelled; a stale tick means something blocks the event loop."""
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def stalled_s(self) -> float:
        """Seconds since the last tick, less the tick period."""
        return max(time.monotonic() - self.last_beat - HEARTBEAT_S, 0.0)

    async def readiness(self) -> dict[str, str]:
        """Each check's result, "ok" or what is wrong (never a secret); ready when all are "ok"."""
        if self.stopping.is_set():
            return {"worker": "draining after a stop signal"}
        (redis_state, group_state), postgres_state = await asyncio.gather(self._check_redis(), self._check_postgres())
        return {"redis": redis_state, "postgres": postgres_state, "group": group_state}

    async def _check_redis(self) -> tuple[str, str]:
        try:
            groups = await asyncio.wait_for(self.redis.xinfo_groups(self.stream), self.timeout_s)
        except ResponseError as error:
            if "no such key" in str(error).lower():
                return "ok", f"missing: stream {self.stream} does not exist yet"
            return f"failed: {error}", "unknown"
        except (RedisError, OSError, TimeoutError) as error:
            return f"unreachable: {str(error) or type(error).__name__}", "unknown"
        names = {_text(group["name"]) for group in groups}
        return "ok", "ok" if self.group in names else f"missing: no group {self.group} on stream {self.stream}"

    async def _check_postgres(self) -> str:
        try:
            await asyncio.wait_for(self.store.ping(), self.timeout_s)
        except DatabaseUnavailableError as error:
            return str(error)
        except TimeoutError:
            return f"unreachable: no answer within {self.timeout_s}s"
        return "ok"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: Health
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

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
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


class Observer:
    """Everything on one worker process's metrics port, started and stopped together by the daemon."""

    def __init__(self, server: MetricsServer, collector: GaugeCollector, health: Health) -> None:
        self.server = server
        self.collector = collector
        self.health = health
        self._tasks = [
            asyncio.create_task(collector.run(), name="stream-gauges"),
            asyncio.create_task(health.beat(), name="heartbeat"),
        ]

    @classmethod
    async def start(cls, settings: Settings, metrics: WorkerMetrics, store: Store, stopping: asyncio.Event) -> Observer:
        """Register the gauges on the daemon's registry, start collecting, and serve the metrics port."""
        # A client of its own: health checks and gauges never wait behind the consumers' blocking reads.
        redis = connect(
            settings.redis_url,
            socket_timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_timeout_s,
            max_connections=4,
        )
        gauges = StreamGauges(
            settings.stream,
            active_idle_s=settings.claim_idle_ms / 1000,
            stale_after_s=STALE_AFTER_INTERVALS * settings.metrics_interval_s,
        )
        collector = GaugeCollector(
            redis,
            gauges,
            stream=settings.stream,
            dead_letters=settings.dead_letters,
            owner=settings.consumer_prefix,
            interval_s=settings.metrics_interval_s,
        )
        health = Health(redis, store, stream=settings.stream, group=settings.group, stopping=stopping)
        try:
            server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        except ConfigurationError:
            await redis.aclose()
            raise
        metrics.registry.register(gauges)
        log.info("metrics_serving", host=settings.metrics_host, port=server.port, paths="/metrics /livez /readyz")
        return cls(server, collector, health)

    async def stop(self) -> None:
        """Stop serving first (no scrape sees a half-closed worker), then the background tasks and the client."""
        await asyncio.to_thread(self.server.close)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.collector.redis.aclose()
