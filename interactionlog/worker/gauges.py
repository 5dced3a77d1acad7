"""The stream gauges: the pipeline's state read from Redis on an interval and served by every replica.

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
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.exceptions import RedisClusterException, RedisError

from .. import metrics as m
from ..retry import periodically
from .housekeeping import recorded_losses
from .state import ConsumerStatus, GroupStatus, PipelineStatus, collect_status

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
        return list(self.families().values())

    def collect(self) -> Iterator[Metric]:
        """The gauges of the latest snapshot; only its timestamp once it is too old to trust."""
        families = self.families()
        self.fill(families)
        return iter(families.values())

    def fill(self, families: dict[m.GaugeSpec, GaugeMetricFamily]) -> None:
        """Add this stream's samples to `families` (shared by every shard's gauges in `ShardGauges`)."""
        snapshot = self.snapshot
        if snapshot is not None:
            families[m.COLLECTED_AT].add_metric([self.stream], snapshot.collected_at)
            if time.time() - snapshot.collected_at <= self.stale_after_s:
                self._add_samples(families, snapshot)

    @staticmethod
    def families() -> dict[m.GaugeSpec, GaugeMetricFamily]:
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


class ShardGauges:
    """One Prometheus collector for the gauges of several streams (a worker's shards): the same families, one
    series per shard's `stream` label (a registry refuses two collectors exporting the same names)."""

    def __init__(self, parts: list[StreamGauges]) -> None:
        self.parts = parts

    def describe(self) -> list[Metric]:
        """The gauge families without samples."""
        return list(StreamGauges.families().values())

    def collect(self) -> Iterator[Metric]:
        """Every shard's samples of the latest snapshots."""
        families = StreamGauges.families()
        for part in self.parts:
            part.fill(families)
        return iter(families.values())


class GaugeCollector:
    """Refreshes `gauges` every `interval_s`, reading Redis itself only when it holds the lease."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gauges: StreamGauges,
        *,
        stream: str,
        dead_letter_stream: str,
        owner: str,
        interval_s: float,
    ) -> None:
        self.redis = redis
        self.gauges = gauges
        self.stream = stream
        self.dead_letter_stream = dead_letter_stream
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
        """Refresh until cancelled; while Redis is away the last snapshot is kept, and goes stale. The
        consumers log the outage itself; one line here says the gauges are frozen meanwhile."""

        async def refresh_gauges() -> None:
            self.gauges.snapshot = await self.refresh()

        await periodically(
            refresh_gauges,
            interval_s=self.interval_s,
            name="stream_gauges",
            expected=(RedisError, RedisClusterException),
        )

    async def _collect_and_publish(self) -> Snapshot:
        collected_at = time.time()
        status = await collect_status(self.redis, self.stream, self.dead_letter_stream)
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
