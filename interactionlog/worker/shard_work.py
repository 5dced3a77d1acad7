"""One shard's share of a worker: its stream group, its metrics (labelled with the shard's stream) and its
housekeeper. The daemon builds one per stream it consumes (`shards.Layout`) and runs the same consumers, claim
sweeps and housekeeping rounds over each; nothing below the daemon knows there is more than one stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from .. import clusters
from ..metrics import WorkerMetrics
from ..settings import Settings
from ..shards import Shard
from .housekeeping import Housekeeper
from .streams import StreamGroup


@dataclass(frozen=True)
class ShardWork:
    """What consuming one shard takes; `metrics` share the daemon's registry, with this shard's `stream` label."""

    shard: Shard
    streams: StreamGroup
    metrics: WorkerMetrics
    housekeeper: Housekeeper

    @classmethod
    def build(
        cls,
        redis: aioredis.Redis,
        shard: Shard,
        settings: Settings,
        metrics: WorkerMetrics,
        masters: clusters.NodeClients | None = None,
    ) -> ShardWork:
        """The shard's parts over the worker's one Redis client (a cluster client routes each shard's slot;
        `masters` serve the MULTI/EXEC on a cluster)."""
        own = metrics.for_stream(shard.stream)  # its zero series exported by the daemon, before serving /metrics
        streams = StreamGroup(
            redis,
            stream=shard.stream,
            group=settings.group,
            dead_letter_stream=shard.dead_letter_stream,
            on_recreated=lambda stream_existed: own.groups_recreated.labels(
                **own.labels(), stream_vanished=str(not stream_existed).lower()
            ).inc(),
            dead_letter_maxlen=settings.dead_letter_maxlen,
            identity_prefix=shard.identity_prefix,
            masters=masters,
        )
        housekeeper = Housekeeper(
            redis,
            stream=shard.stream,
            group=settings.group,
            consumer_idle_ms=settings.consumer_idle_timeout_ms,
            own_prefix=settings.consumer_prefix,
            presence_ttl_ms=3 * settings.housekeeping_interval_ms,
        )
        return cls(shard, streams, own, housekeeper)
