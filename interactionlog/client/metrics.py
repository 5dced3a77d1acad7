"""Prometheus metrics of a background publisher inside the MCP process, namespace `interactionlog_client_`.

Each publisher owns its registry (`BackgroundPublisher.registry`); `serve_metrics` exposes it on a port of the
MCP process's own. Units are base units (seconds, bytes); labels stay low-cardinality (a reason, a kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

NAMESPACE = "interactionlog_client"


@dataclass(frozen=True)
class ClientMetrics:
    """The counters and gauges a background publisher updates."""

    registry: CollectorRegistry
    published: Counter
    spooled: Counter
    replayed: Counter
    dropped: Counter
    redacted: Counter
    truncated: Counter
    queue_depth: Gauge
    spool_depth: Gauge
    spool_bytes: Gauge
    spool_oldest_age: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> ClientMetrics:
        """Register every metric on `registry` (a fresh one by default)."""
        registry = registry if registry is not None else CollectorRegistry()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, namespace=NAMESPACE, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, namespace=NAMESPACE, registry=registry)

        return cls(
            registry=registry,
            published=counter("records_published", "Records XADDed to Redis straight from the in-memory queue."),
            spooled=counter(
                "records_spooled",
                "Records written to the local spool, by reason (unavailable, overflow, backlog, exit).",
                ("reason",),
            ),
            replayed=counter("records_replayed", "Spooled records XADDed to Redis and removed from the spool."),
            dropped=counter(
                "records_dropped",
                "Records lost, by reason (spool_full, no_spool, spool_error): never silent, also logged.",
                ("reason",),
            ),
            redacted=counter("values_redacted", "Values replaced by a redaction marker, by kind.", ("kind",)),
            truncated=counter("records_truncated", "Oversize records whose payloads were truncated to fit."),
            queue_depth=gauge("queue_depth_records", "Records waiting in the in-memory queue."),
            spool_depth=gauge("spool_depth_records", "Records held in the spool for this stream."),
            spool_bytes=gauge("spool_depth_bytes", "Encoded bytes held in the spool for this stream."),
            spool_oldest_age=gauge("spool_oldest_age_seconds", "Age of the oldest spooled record (0 when empty)."),
        )

    def snapshot(self) -> dict[str, float]:
        """Every sample's value by name (labels folded into the name as `name{label=value}`), for logs and tests."""
        values: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return values


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> None:
    """Serve `registry` on http://host:port/metrics from a daemon thread (prometheus_client's own server)."""
    start_http_server(port, addr=host, registry=registry)
