"""An unpartitioned interaction_logs of an earlier version becomes partitioned online: `migrate` leaves it be and
says so, `interactionlog partition-convert` converts it while a worker keeps storing, and every row is there
exactly once, in the partition of its month, with its id."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import redis

from interactionlog import Publisher
from interactionlog.worker.store import migrate as apply_migrations

from .pipeline import INTERACTIONLOG, group_pending, migrate, running_worker, wait_until

OLD_ROWS = 10_000
START = datetime(2026, 6, 1, tzinfo=UTC)
STEP = timedelta(minutes=18)  # 10,000 rows over 125 days: June to October


def populate(database_url: str, rows: int = OLD_ROWS) -> None:
    """`rows` rows 'old-<g>' at START + g * STEP, as an earlier worker stored them."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            'INSERT INTO interaction_logs (mcp_id, interaction_id, "timestamp", tool, data, stream_entry_id)'
            " SELECT 'legacy', 'old-' || g, %(start)s + g * %(step)s, 'get_forecast',"
            " jsonb_build_object('mcp_id', 'legacy', 'interaction_id', 'old-' || g), g || '-0'"
            " FROM generate_series(1, %(rows)s) AS g",
            {"start": START, "step": STEP, "rows": rows},
        )


def old_record(g: int) -> dict[str, Any]:
    """Row 'old-<g>' as its publisher sent it, to publish it again."""
    return {"mcp_id": "legacy", "interaction_id": f"old-{g}", "timestamp": (START + g * STEP).isoformat()}


class Traffic(threading.Thread):
    """Publishes new records, and republishes old ones, until stopped; counts the new ones."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.redis_url = redis_url
        self.stopping = threading.Event()
        self.new = 0
        self.republished: set[str] = set()

    def run(self) -> None:
        with Publisher.from_url(self.redis_url) as publisher:
            round_number = 0
            while not self.stopping.is_set():
                fresh = [{"mcp_id": "live", "interaction_id": f"new-{self.new + i}"} for i in range(40)]
                again = [old_record(1 + (round_number * 997 + i * 131) % OLD_ROWS) for i in range(10)]
                publisher.publish_many([*fresh, *again])
                self.new += len(fresh)
                self.republished.update(item["interaction_id"] for item in again)
                round_number += 1
                time.sleep(0.02)


def ids_of_legacy_rows(database_url: str) -> dict[str, int]:
    """interaction_id -> id of the old rows."""
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT interaction_id, id FROM interaction_logs WHERE mcp_id = 'legacy'").fetchall())


def scalar(database_url: str, query: str) -> Any:
    """The one value `query` returns."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def test_conversion_of_a_populated_table_keeps_every_row_while_a_worker_runs(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """10,000 old rows convert while a worker stores new records and old ones published again: afterwards each
    old row is there once with its id, each new record once, each row in its month's partition, none lost."""
    asyncio.run(apply_migrations(database_url, up_to=3))  # the unpartitioned table of earlier versions
    populate(database_url)
    old_ids = ids_of_legacy_rows(database_url)
    printed = subprocess.run(
        [*INTERACTIONLOG, "migrate", "--database-url", database_url], capture_output=True, text=True, check=True
    )
    assert "partition-convert" in printed.stdout + printed.stderr
    assert scalar(database_url, "SELECT relkind FROM pg_class WHERE relname = 'interaction_logs'") == "r"

    traffic = Traffic(redis_url)
    with running_worker(redis_url, database_url, tmp_path, housekeeping_interval_ms="300") as worker:
        traffic.start()
        wait_until(lambda: scalar(database_url, "SELECT count(*) FROM interaction_logs") > OLD_ROWS, what="new rows")
        converting = subprocess.run(
            [*INTERACTIONLOG, "partition-convert", "--database-url", database_url, "--rows-per-batch", "1000"],
            capture_output=True,
            text=True,
            check=False,
        )
        time.sleep(0.5)  # traffic after the conversion too
        traffic.stopping.set()
        traffic.join(timeout=10)
        assert converting.returncode == 0, converting.stderr
        moved = re.search(r"converted interaction_logs: (\d+) row\(s\) moved", converting.stdout)
        assert moved is not None, converting.stdout
        assert int(moved[1]) >= OLD_ROWS  # and the new ones stored before the switch
        wait_until(
            lambda: scalar(database_url, "SELECT count(*) FROM interaction_logs WHERE mcp_id = 'live'") == traffic.new,
            what="every new record stored",
        )
        wait_until(lambda: group_pending(redis.Redis.from_url(redis_url)) == 0, what="everything acknowledged")
        assert worker.stop() == 0

    assert traffic.republished
    assert scalar(database_url, "SELECT relkind FROM pg_class WHERE relname = 'interaction_logs'") == "p"
    assert scalar(database_url, "SELECT to_regclass('interaction_logs_unpartitioned')") is None
    assert scalar(database_url, "SELECT count(*) FROM interaction_logs WHERE mcp_id = 'legacy'") == OLD_ROWS
    # Rows keep their ids, but for records a worker stored again meanwhile: the copy stored last is kept.
    changed = {ident for ident, row_id in ids_of_legacy_rows(database_url).items() if old_ids[ident] != row_id}
    assert changed <= traffic.republished
    stored_twice = scalar(
        database_url,
        "SELECT count(*) FROM (SELECT FROM interaction_logs GROUP BY mcp_id, interaction_id HAVING count(*) > 1) d",
    )
    assert stored_twice == 0
    assert scalar(database_url, "SELECT count(DISTINCT id) = count(*) FROM interaction_logs") is True
    misplaced = scalar(
        database_url,
        "SELECT count(*) FROM interaction_logs WHERE tableoid::regclass::text"
        " <> 'interaction_logs_p' || to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYYMM') || '01'",
    )
    assert misplaced == 0
    assert redis.Redis.from_url(redis_url).xlen("interactions:dlq") == 0


def test_convert_refuses_what_it_cannot_carry_and_says_when_there_is_nothing_to_do(database_url: str) -> None:
    """A unique index without "timestamp" stops the conversion with a message naming it, nothing changed; on a
    partitioned table the command says there is nothing to convert."""
    asyncio.run(apply_migrations(database_url, up_to=3))  # the unpartitioned table of earlier versions
    populate(database_url, rows=300)  # three days' worth
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX one_per_stream_entry ON interaction_logs (stream_entry_id)")
    command = [*INTERACTIONLOG, "partition-convert", "--database-url", database_url]
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "one_per_stream_entry" in refused.stderr
    assert scalar(database_url, "SELECT relkind FROM pg_class WHERE relname = 'interaction_logs'") == "r"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX one_per_stream_entry")
    converted = subprocess.run([*command, "--partition-interval", "day"], capture_output=True, text=True, check=True)
    assert "300 row(s) moved" in converted.stdout
    assert scalar(database_url, "SELECT partition_interval FROM interactionlog_partitioning") == "day"
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "nothing to convert" in again.stdout
