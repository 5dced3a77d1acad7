"""Prometheus metrics of the gateways, namespace `interactionlog_gateway_`, labelled by `stream` and `transport`
(`http` or `grpc`); served on the HTTP port's /metrics (or the metrics port when HTTP is off)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..metrics import NAMESPACE

LABELS = ("stream", "transport")
HTTP, GRPC = "http", "grpc"  # the `transport` label of each gateway
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class GatewayMetrics:
    """Requests, records accepted and rejected (by reason), and request latency."""

    registry: CollectorRegistry
    requests: Counter
    accepted: Counter
    rejected: Counter
    duration: Histogram
    stream: str

    @classmethod
    def create(cls, stream: str, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        """Register the gateway's metrics on `registry` (a fresh one by default)."""
        registry = registry if registry is not None else CollectorRegistry()
        metrics = cls(
            registry=registry,
            requests=Counter(
                "gateway_requests",
                "Ingest requests answered, by status (HTTP code, or gRPC status name).",
                (*LABELS, "status"),
                namespace=NAMESPACE,
                registry=registry,
            ),
            accepted=Counter(
                "gateway_records_accepted",
                "Records whose XADD Redis confirmed.",
                LABELS,
                namespace=NAMESPACE,
                registry=registry,
            ),
            rejected=Counter(
                "gateway_records_rejected",
                "Records not accepted, by reason (the worker's error_type, or forbidden, unavailable, backlog).",
                (*LABELS, "reason"),
                namespace=NAMESPACE,
                registry=registry,
            ),
            duration=Histogram(
                "gateway_request_duration_seconds",
                "Time to answer one ingest request (one gRPC batch of a stream counts as one).",
                LABELS,
                namespace=NAMESPACE,
                registry=registry,
                buckets=_LATENCY_BUCKETS,
            ),
            stream=stream,
        )
        # At 0 from the first scrape: the denominator of the refusal-share alert exists before any record is
        # accepted (a gateway that refuses everything), and increase() sees the first accepted records.
        for transport in (HTTP, GRPC):
            metrics.accepted.labels(stream, transport)
        return metrics

    def answered(self, transport: str, status: str, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(self.stream, transport, status).inc()
        self.duration.labels(self.stream, transport).observe(seconds)

    def counted(self, transport: str, accepted: int, rejected_reasons: list[str]) -> None:
        """Count the records of one request."""
        if accepted:
            self.accepted.labels(self.stream, transport).inc(accepted)
        for reason in rejected_reasons:
            self.rejected.labels(self.stream, transport, reason).inc()
