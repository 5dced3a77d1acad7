"""Prometheus metrics of the worker, namespace `interactionlog_`, labelled by `stream` and `group`.

Each daemon owns its own registry, so tests and several pipelines in one process never share counters.
Units are base units (seconds); label values stay low-cardinality (no entry or consumer ids on counters).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from .errors import TransientError

NAMESPACE = "interactionlog"
LABELS = ("stream", "group")

_PERSIST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# Every `reason` a worker dead-letters with (worker/decode.py, worker/consumer.py); tests/test_metrics_zero.py
# fails when the worker gains a reason this list lacks.
DEAD_LETTER_REASONS = (
    "not_wire_format",
    "unsupported_version",
    "too_large",
    "invalid_json",
    "not_json_object",
    "invalid_record",
    "unstorable_value",
    "refused_by_database",
    "max_deliveries",
)


@dataclass(frozen=True)
class WorkerMetrics:
    """The counters and histograms a worker updates, already bound to its stream and group."""

    registry: CollectorRegistry
    persisted: Counter
    duplicates: Counter
    dead_lettered: Counter
    reclaimed: Counter
    acked_after_deletion: Counter
    lost_while_pending: Counter
    dead_letters_trimmed: Counter
    housekeeping_failures: Counter
    transient_errors: Counter
    lost_to_trimming: Counter
    groups_recreated: Counter
    partitions_created: Counter
    partitions_dropped: Counter
    rows_moved_from_default: Counter
    batch_size: Histogram
    persist_seconds: Histogram
    end_to_end_seconds: Histogram
    stream: str
    group: str

    @classmethod
    def create(cls, stream: str, group: str, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        """Register every worker metric on `registry` (a fresh one by default)."""
        registry = registry if registry is not None else CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds...: what the memory and CPU alerts
        # read, from /proc, at each scrape.
        ProcessCollector(registry=registry)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*LABELS, *extra), namespace=NAMESPACE, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, namespace=NAMESPACE, registry=registry, buckets=buckets)

        metrics = cls(
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
            lost_while_pending=counter(
                "pending_entries_lost",
                "Entries removed from the stream (MAXLEN, XTRIM, XDEL) while delivered and not yet acknowledged: "
                "lost, unless their consumer committed them just before it crashed (an upper bound).",
            ),
            dead_letters_trimmed=counter(
                "dead_letters_trimmed",
                "Dead letters removed by the dead-letter stream's cap (--dead-letter-maxlen): lost for good.",
            ),
            housekeeping_failures=counter(
                "housekeeping_failures",
                "Housekeeping chores Redis refused (an ACL without INFO or scripting, ...): trimming, loss "
                "accounting or consumer hygiene is not done while this grows.",
                ("chore",),
            ),
            transient_errors=counter(
                "transient_errors", "Failures of Redis or PostgreSQL that were retried.", ("component",)
            ),
            lost_to_trimming=counter(
                "entries_lost_to_trimming",
                "Entries removed by the MAXLEN guard rail before the group read them: data lost, never silent.",
            ),
            groups_recreated=counter(
                "group_recreated",
                "Times the consumer group vanished and was recreated; stream_vanished=true means the stream went "
                "too (Redis restarted without persistence): entries not yet stored then are lost.",
                ("stream_vanished",),
            ),
            partitions_created=counter(
                "partitions_created", "interaction_logs partitions created by this worker's housekeeping."
            ),
            partitions_dropped=counter(
                "partitions_dropped",
                "interaction_logs partitions dropped by this worker's housekeeping, past --retention-days.",
            ),
            rows_moved_from_default=counter(
                "rows_moved_from_default_partition",
                "Rows moved out of interaction_logs_default into a partition created for their day or month.",
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
        metrics.export_zeros()
        return metrics

    def export_zeros(self, chores: Iterable[str] = ()) -> None:
        """Create every label set this worker can ever use, at 0, so each series exists from the first scrape.

        A counter first seen at 1 has no earlier sample for `increase()` to compare with, so an alert on its first
        event would never fire, and a dashboard panel would say "No data" rather than 0. Every counter and
        histogram of this class is covered, a new one too: those labelled by stream and group alone directly, the
        others by each value their one further label takes (`chores`: the housekeeping chores' names).
        Raises ValueError for a metric whose further label has no known values (a new label needs them here).
        """
        labels = self.labels()
        values: dict[str, Iterable[str]] = {
            "reason": DEAD_LETTER_REASONS,
            "component": sorted(_transient_components()),
            "stream_vanished": ("true", "false"),
            "chore": tuple(chores),
        }
        for metric in vars(self).values():
            if not isinstance(metric, Counter | Histogram):
                continue
            further = [name for name in metric._labelnames if name not in labels]
            if not further:
                metric.labels(**labels)
                continue
            if len(further) > 1 or further[0] not in values:
                raise ValueError(f"no zero series known for {metric._name} labels {further}: add them to export_zeros")
            for value in values[further[0]]:
                metric.labels(**labels, **{further[0]: value})

    def for_stream(self, stream: str) -> WorkerMetrics:
        """The same metrics (one registry) labelled with another `stream`: a shard's, when a worker consumes
        several (its zero series are the caller's `export_zeros`, as for the first stream's)."""
        return dataclasses.replace(self, stream=stream)

    def labels(self) -> dict[str, str]:
        """The stream and group labels every sample of this worker carries."""
        return {"stream": self.stream, "group": self.group}

    def record_batch(
        self,
        *,
        entries: int,
        persisted: int,
        duplicates: int,
        deleted: int,
        dead_letter_reasons: Iterable[str],
        stored_timestamps: Iterable[datetime],
        persist_s: float | None,
    ) -> None:
        """Count one handled batch: `persist_s` is None when it had no row to store; `stored_timestamps` are
        the records' own times, each observed as end-to-end latency up to now."""
        labels = self.labels()
        self.batch_size.labels(**labels).observe(entries)
        if persist_s is not None:
            self.persist_seconds.labels(**labels).observe(persist_s)
            observe_ages(self.end_to_end_seconds.labels(**labels), datetime.now(UTC), list(stored_timestamps))
        self.persisted.labels(**labels).inc(persisted)
        self.duplicates.labels(**labels).inc(duplicates)
        if deleted:
            self.acked_after_deletion.labels(**labels).inc(deleted)
        for reason in dead_letter_reasons:
            self.dead_lettered.labels(**labels, reason=reason).inc()


def observe_each(histogram: Histogram, values: list[float]) -> None:
    """`histogram.observe(value)` for each of `values`, with the same result, in one pass: each value's bucket is
    found by bisection and each bucket incremented once, where `observe` takes a lock and scans the buckets per
    value (2 us a row for a batch's end-to-end latencies, benchmarks/NOTES.md). Relies on prometheus_client's
    histogram internals (`_upper_bounds`, `_buckets`, `_sum`, stable since 0.4); without them, calls `observe`.
    `histogram` is a labelled child (or an unlabelled histogram)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    # bisect_left: the first bound >= value, as observe's `value <= bound` scan finds it (the last bound is +Inf).
    for index, count in collections.Counter(bisect.bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)
    total.inc(sum(values))


def observe_ages(histogram: Histogram, now: datetime, timestamps: list[datetime]) -> None:
    """`histogram.observe` of each timestamp's age at `now` in seconds (0 for one after `now`), with the result of
    `observe_each`, for a batch at once: the ages are sorted and each bucket's count found by bisection, so the
    per-record work is C's (a subtraction and the sort), not a Python expression per record (0.37 us a row,
    benchmarks/NOTES.md). Falls back to `observe_each` without prometheus_client's internals."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        observe_each(histogram, [max((now - timestamp).total_seconds(), 0.0) for timestamp in timestamps])
        return
    ages = sorted(map(operator.sub, itertools.repeat(now), timestamps))
    below = 0  # ages counted so far: each goes to the first bucket whose bound holds it, as `observe` does
    for index, bound in enumerate(bounds):
        if bound < 0:
            continue  # no age is observed below 0
        upto = len(ages) if math.isinf(bound) else bisect.bisect_right(ages, timedelta(seconds=bound), lo=below)
        if upto > below:
            buckets[index].inc(upto - below)
            below = upto
    total.inc(sum(ages[bisect.bisect_right(ages, _NO_AGE) :], _NO_AGE).total_seconds())


_NO_AGE = timedelta()


def _transient_components() -> set[str]:
    """The `component` of every concrete transient error (redis, postgres): the label values of transient_errors."""
    found, pending = set(), list(TransientError.__subclasses__())
    while pending:
        kind = pending.pop()
        found.add(kind.component)
        pending.extend(kind.__subclasses__())
    return found


@dataclass(frozen=True)
class GaugeSpec:
    """A gauge read from Redis on an interval (by `observe.StreamGauges`), not updated by the consumers."""

    name: str
    documentation: str
    labels: tuple[str, ...]

    @property
    def full_name(self) -> str:
        """The exported name, with the namespace."""
        return f"{NAMESPACE}_{self.name}"


# Meanings and label names follow redis_exporter (its redis_stream_* family); words follow Redis (entries).
# Per-consumer series stay few: the housekeeping chore deletes departed consumers from the group.
STREAM_LENGTH = GaugeSpec("stream_length", "Entries in the stream (XLEN).", ("stream",))
DEAD_LETTER_LENGTH = GaugeSpec(
    "dead_letter_stream_length", "Entries in the dead-letter stream of `stream` (XLEN of <stream>:dlq).", ("stream",)
)
GROUP_LAG = GaugeSpec(
    "stream_group_lag",
    "Entries not yet delivered to the group. Absent while Redis cannot tell (see ..._lag_known), never 0 then.",
    LABELS,
)
GROUP_LAG_KNOWN = GaugeSpec(
    "stream_group_lag_known", "1 when Redis reports the group's lag, 0 when it reports it as unknown (NULL).", LABELS
)
GROUP_PENDING = GaugeSpec(
    "stream_group_pending_entries", "Entries delivered to the group's consumers and not yet acknowledged.", LABELS
)
GROUP_OLDEST_PENDING_AGE = GaugeSpec(
    "stream_group_oldest_pending_age_seconds",
    "Seconds since Redis added the group's oldest pending entry; 0 when nothing is pending.",
    LABELS,
)
GROUP_CONSUMERS = GaugeSpec("stream_group_consumers", "Consumers the group lists (XINFO CONSUMERS).", LABELS)
# Redis 7.2+ resets a consumer's idle time on every read attempt; 7.0 only when it receives or claims entries,
# so on 7.0 a healthy consumer of a quiet stream looks idle. With a backlog (lag > 0) both mean the same.
GROUP_ACTIVE_CONSUMERS = GaugeSpec(
    "stream_group_active_consumers",
    "Consumers idle for less than claim_idle_ms (Redis's idle); with lag > 0, 0 means nothing consumes.",
    LABELS,
)
CONSUMER_IDLE = GaugeSpec(
    "stream_group_consumer_idle_seconds",
    "The consumer's idle time as XINFO CONSUMERS reports it.",
    (*LABELS, "consumer"),
)
CONSUMER_PENDING = GaugeSpec(
    "stream_group_consumer_pending_entries", "Entries the consumer holds unacknowledged.", (*LABELS, "consumer")
)
GROUP_LOST_TO_TRIMMING = GaugeSpec(
    "stream_group_lost_to_trimming_entries",
    "Entries trimmed before the group read them, all time, as housekeeping recorded them in Redis (never resets).",
    LABELS,
)
COLLECTED_AT = GaugeSpec(
    "stream_collected_timestamp_seconds",
    "When these gauges were last read from Redis (Unix time); they are dropped once too old to trust.",
    ("stream",),
)

STREAM_GAUGES = (
    STREAM_LENGTH,
    DEAD_LETTER_LENGTH,
    GROUP_LAG,
    GROUP_LAG_KNOWN,
    GROUP_PENDING,
    GROUP_OLDEST_PENDING_AGE,
    GROUP_CONSUMERS,
    GROUP_ACTIVE_CONSUMERS,
    CONSUMER_IDLE,
    CONSUMER_PENDING,
    GROUP_LOST_TO_TRIMMING,
    COLLECTED_AT,
)
