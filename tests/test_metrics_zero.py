"""A worker's counters exist at 0 from its first scrape, for every label value it can ever use, so an alert on the
first event can fire and dashboard panels show 0 rather than "No data"."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from interactionlog.errors import DatabaseUnavailableError, RedisUnavailableError
from interactionlog.metrics import DEAD_LETTER_REASONS, WorkerMetrics
from interactionlog.worker.housekeeping import CHORES
from tests.pipeline import migrate, running_worker, scrape, wait_until
from tests.servers import free_port

WORKER = Path(__file__).resolve().parent.parent / "interactionlog" / "worker"


def first_scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample a freshly created worker registry exposes, before anything happened."""
    text = generate_latest(WorkerMetrics.create("interactions", "interactionlog").registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_counter_label_set_is_exported_at_zero_before_any_event() -> None:
    """Each counter, for each reason, component and stream_vanished value, is in the first scrape with value 0."""
    samples = first_scrape()
    ours = {("stream", "interactions"), ("group", "interactionlog")}
    expected = [
        ("interactionlog_entries_persisted_total", ours),
        ("interactionlog_duplicates_skipped_total", ours),
        ("interactionlog_entries_reclaimed_total", ours),
        ("interactionlog_entries_acked_after_deletion_total", ours),
        ("interactionlog_entries_lost_to_trimming_total", ours),
        ("interactionlog_batch_size_entries_count", ours),
        ("interactionlog_batch_persist_duration_seconds_count", ours),
        ("interactionlog_end_to_end_latency_seconds_count", ours),
        *(("interactionlog_entries_dead_lettered_total", {*ours, ("reason", r)}) for r in DEAD_LETTER_REASONS),
        *(
            ("interactionlog_transient_errors_total", {*ours, ("component", c)})
            for c in (RedisUnavailableError.component, DatabaseUnavailableError.component)
        ),
        *(("interactionlog_group_recreated_total", {*ours, ("stream_vanished", v)}) for v in ("true", "false")),
    ]
    for name, labels in expected:
        assert samples.get((name, frozenset(labels))) == 0, f"{name}{dict(labels)} is not exported at 0"


def reasons_in_the_worker() -> set[str]:
    """Every literal reason the worker's code dead-letters with: PermanentEntryError(reason, ...) and
    DeadLetter(entry, reason, ...)."""
    found: set[str] = set()
    for path in WORKER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            position = {"PermanentEntryError": 0, "DeadLetter": 1}.get(node.func.id)
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):  # else passed on
                    found.add(argument.value)
    return found


def test_the_pre_created_reasons_are_exactly_those_the_worker_uses() -> None:
    """DEAD_LETTER_REASONS lists each reason the worker can dead-letter with, and no other, so a new reason cannot
    appear first at 1 and a stale one never shows as a flat 0 forever."""
    used = reasons_in_the_worker()
    assert {"invalid_json", "max_deliveries", "refused_by_database"} <= used  # the scan sees the three sites
    assert used == set(DEAD_LETTER_REASONS)


def test_a_worker_waiting_for_redis_serves_every_series_at_zero_already(database_url: str, tmp_path: Path) -> None:
    """/metrics is served while the worker still waits for Redis (before it builds its shards' parts): the
    housekeeping chores' series are there at 0 too, as on any later scrape (they once appeared only after)."""
    migrate(database_url)
    port = free_port()
    down = f"redis://127.0.0.1:{free_port()}/0"
    with running_worker(down, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1"):
        text = wait_until(lambda: scrape(port), what="/metrics served")
    chores = {
        sample.labels["chore"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "interactionlog_housekeeping_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert chores == dict.fromkeys(CHORES, 0.0)
