"""Prometheus metrics of the worker, namespace `interactionlog_`, labelled by `stream` and `group`.

Each daemon owns its own registry, so tests and several pipelines in one process never share counters.
Units are base units (seconds); label values stay low-cardinality (no entry or consumer ids on counters).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

NAMESPACE = "interactionlog"
LABELS = ("stream", "group")

_PERSIST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


@dataclass(frozen=True)
class WorkerMetrics:
    """The counters and histograms a worker updates, already bound to its stream and group."""

    registry: CollectorRegistry
    persisted: Counter
    duplicates: Counter
    dead_lettered: Counter
    reclaimed: Counter
    acked_after_deletion: Counter
    transient_errors: Counter
    lost_to_trimming: Counter
    batch_size: Histogram
    persist_seconds: Histogram
    end_to_end_seconds: Histogram
    stream: str
    group: str

    @classmethod
    def create(cls, stream: str, group: str, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        """Register every worker metric on `registry` (a fresh one by default)."""
        registry = registry if registry is not None else CollectorRegistry()

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*LABELS, *extra), namespace=NAMESPACE, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, namespace=NAMESPACE, registry=registry, buckets=buckets)

        return cls(
            registry=registry,
            persisted=counter("entries_persisted", "Entries newly stored in PostgreSQL."),
            duplicates=counter(
                "duplicates_skipped", "Entries already stored (redelivered or published twice) and skipped."
            ),
            dead_lettered=counter(
                "entries_dead_lettered", "Entries moved to the dead-letter stream, by reason.", ("reason",)
            ),
            reclaimed=counter("entries_reclaimed", "Pending entries taken over from idle consumers (XAUTOCLAIM)."),
            acked_after_deletion=counter(
                "entries_acked_after_deletion",
                "Pending entries found deleted from the stream and acknowledged.",
            ),
            transient_errors=counter(
                "transient_errors", "Failures of Redis or PostgreSQL that were retried.", ("component",)
            ),
            lost_to_trimming=counter(
                "entries_lost_to_trimming",
                "Entries removed by the MAXLEN guard rail before the group read them: data lost, never silent.",
            ),
            batch_size=histogram("batch_size_entries", "Entries per batch handled.", _BATCH_BUCKETS),
            persist_seconds=histogram(
                "batch_persist_duration_seconds", "Time to store one batch in PostgreSQL.", _PERSIST_BUCKETS
            ),
            end_to_end_seconds=histogram(
                "end_to_end_latency_seconds",
                "From a record's timestamp to the commit that stored it.",
                _LATENCY_BUCKETS,
            ),
            stream=stream,
            group=group,
        )

    def labels(self) -> dict[str, str]:
        """The stream and group labels every sample of this worker carries."""
        return {"stream": self.stream, "group": self.group}
