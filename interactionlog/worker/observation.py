"""Everything on one worker process's metrics port, started and stopped together by the daemon: the server
(`probes`), the stream gauges (`gauges`) and the health checks (`health`)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import structlog

from ..errors import ConfigurationError
from ..metrics import WorkerMetrics
from ..probes import MetricsServer
from ..settings import Settings
from .gauges import STALE_AFTER_INTERVALS, GaugeCollector, ShardGauges, StreamGauges
from .health import Health
from .store import Store
from .streams import connect

log = structlog.get_logger(__name__)


class Observer:
    """Everything on one worker process's metrics port, started and stopped together by the daemon."""

    def __init__(
        self, server: MetricsServer, collectors: list[GaugeCollector], health: Health, redis: aioredis.Redis
    ) -> None:
        self.server = server
        self.collectors = collectors
        self.health = health
        self.redis = redis
        self._tasks = [
            *(
                asyncio.create_task(collector.run(), name=f"stream-gauges-{collector.stream}")
                for collector in collectors
            ),
            asyncio.create_task(health.beat(), name="heartbeat"),
        ]

    @classmethod
    async def start(
        cls, settings: Settings, metrics: WorkerMetrics, store: Store, stopping: asyncio.Event, *, cluster: bool
    ) -> Observer:
        """Register the gauges on the daemon's registry, start collecting, and serve the metrics port."""
        # A client of its own: health checks and gauges never wait behind the consumers' blocking reads.
        redis = connect(
            settings.redis_url,
            socket_timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_timeout_s,
            max_connections=4,
            cluster=cluster,
        )
        shards = [shard for layout in settings.layouts for shard in layout.all()]
        gauges = [
            StreamGauges(
                shard.stream,
                active_idle_s=settings.claim_idle_ms / 1000,
                stale_after_s=STALE_AFTER_INTERVALS * settings.metrics_interval_s,
            )
            for shard in {shard.stream: shard for shard in shards}.values()
        ]
        collectors = [
            GaugeCollector(
                redis,
                gauge,
                stream=shard.stream,
                dead_letter_stream=shard.dead_letter_stream,
                owner=settings.consumer_prefix,
                interval_s=settings.metrics_interval_s,
            )
            for gauge, shard in zip(gauges, {shard.stream: shard for shard in shards}.values(), strict=True)
        ]
        # Readiness asks for the group on the first shard: every shard's group is created in one step.
        health = Health(redis, store, stream=shards[0].stream, group=settings.group, stopping=stopping)
        try:
            server = MetricsServer(settings.metrics_host, settings.metrics_port, metrics.registry, health)
        except ConfigurationError:
            await redis.aclose()
            raise
        metrics.registry.register(ShardGauges(gauges))
        log.info("metrics_serving", host=settings.metrics_host, port=server.port, paths="/metrics /livez /readyz")
        return cls(server, collectors, health, redis)

    async def stop(self) -> None:
        """Stop serving first (no scrape sees a half-closed worker), then the background tasks and the client."""
        await asyncio.to_thread(self.server.close)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
