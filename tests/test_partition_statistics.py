"""Fresh planner statistics for the partitions being written (worker/statistics.py): without them the dedupe
window's probe takes the (mcp_id, "timestamp") query index and reads every row of the MCP within the window for
each row it checks; analysed, it probes the unique index."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from interactionlog import Publisher
from interactionlog.rows import stored_copies
from interactionlog.settings import DEFAULT_DEDUPE_WINDOW_HOURS
from interactionlog.worker.statistics import INTERVAL_S, analyze_round

from .pipeline import count_rows, migrate, running_worker, wait_until
from .test_partitions import NOW, expected_partition, persist, stamped

UNIQUE_INDEX = "_mcp_id_interaction_id_timestamp_key"


def _without_autovacuum(database_url: str) -> str:
    """The current month's partition, with autovacuum off for it, so that only the code under test analyses it."""
    partition = expected_partition(NOW, "month")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(sql.Identifier(partition)))
    return partition


def _last_analyze(database_url: str, partition: str) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = %s", (partition,)).fetchone()
    return row[0] if row else None


def _changed_since_analyze(database_url: str, partition: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = %s", (partition,)
        ).fetchone()
    return int(row[0]) if row else 0


def _probe_indexes(database_url: str) -> set[str]:
    """The indexes the batch query of the dedupe window uses to probe 200 new rows of one MCP, from its plan."""
    moments = [NOW - timedelta(seconds=index) for index in range(200)]
    keys = (["weather"] * 200, [f"new-{index}" for index in range(200)], moments)
    with psycopg.connect(database_url) as conn:
        ((plan,),) = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) {}").format(stored_copies(DEFAULT_DEDUPE_WINDOW_HOURS)), keys
        ).fetchall()
    found, nodes = set(), [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.add(str(node["Index Name"]))
        nodes.extend(node.get("Plans", []))
    return found


def test_a_round_analyses_a_partition_written_since_and_the_probe_then_uses_the_unique_index(
    database_url: str,
) -> None:
    """After 5,000 rows into a partition never analysed, a round analyses it (and only once: a second round finds
    nothing stale), and the probe's plan then goes through the partition's unique index."""
    migrate(database_url)
    partition = _without_autovacuum(database_url)
    persist(database_url, [stamped(f"r{index}", NOW - timedelta(milliseconds=index)) for index in range(5000)])
    assert _last_analyze(database_url, partition) is None
    assert asyncio.run(analyze_round(database_url)) == [partition]
    assert _last_analyze(database_url, partition) is not None
    assert asyncio.run(analyze_round(database_url)) == []
    assert any(name.endswith(UNIQUE_INDEX) and partition in name for name in _probe_indexes(database_url))


def test_a_running_worker_analyses_the_partition_it_writes_while_it_probes(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Within seconds of storing records that take the dedupe window's probe (published without a timestamp of
    their own) into a partition whose autovacuum is off, the worker has analysed it."""
    migrate(database_url)
    partition = _without_autovacuum(database_url)
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish_many([{"mcp_id": "weather", "interaction_id": f"w{index}"} for index in range(3000)])
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: _last_analyze(database_url, partition) is not None, what="the partition analysed")
        wait_until(lambda: count_rows(database_url) == 3000, what="every record stored")


def test_a_worker_storing_only_exact_identities_leaves_the_statistics_to_autovacuum(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Records whose author wrote the timestamp never take the probe, whose plan the analyses serve: the worker
    stores 3,000 of them and, rounds later, has analysed nothing (each ANALYZE of a growing partition costs)."""
    migrate(database_url)
    partition = _without_autovacuum(database_url)
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish_many([stamped(f"x{index}", NOW - timedelta(milliseconds=index)) for index in range(3000)])
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: count_rows(database_url) == 3000, what="every record stored")
        # PostgreSQL's counts of changed rows reach pg_stat_user_tables up to 10 s after the commits: once they
        # show the partition stale, three rounds of the chore would have analysed it.
        wait_until(lambda: _changed_since_analyze(database_url, partition) >= 3000, what="the changes counted")
        time.sleep(3 * INTERVAL_S)
        assert _last_analyze(database_url, partition) is None
