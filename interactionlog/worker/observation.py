"""Everything on one worker process's metrics port, started and stopped together by the daemon: the server
(`probes`), the stream gauges (`gauges`) and the health checks (`health`)."""

from __future__ import annotations

import asyncio

import structlog

from ..errors import ConfigurationError
from ..metrics import WorkerMetrics
from ..probes import MetricsServer
from ..settings import Settings
from .gauges import STALE_AFTER_INTERVALS, GaugeCollector, StreamGauges
from .health import Health
from .store import Store
from .streams import connect

log = structlog.get_logger(__name__)


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
            dead_letter_stream=settings.dead_letter_stream_key,
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
