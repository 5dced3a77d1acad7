"""interaction_logs partitioned by range on "timestamp": rows land in the partition of their day or month, a row
outside the partitions lands in the default one and is never refused, partitions are kept ahead under one lease,
retention drops whole partitions, and duplicates are still stored once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from interactionlog import Publisher
from interactionlog.client.publisher import encode_fields
from interactionlog.rows import insert_one_row, insert_rows_from, stored_copies
from interactionlog.settings import DEFAULT_DEDUPE_WINDOW_HOURS, DEFAULT_MAX_RECORD_BYTES
from interactionlog.worker import partition_maintenance, partitions
from interactionlog.worker.decode import StoredRow, decode_entry
from interactionlog.worker.partition_maintenance import MaintenanceReport
from interactionlog.worker.partitions import Interval, floor_instant, free_ranges, next_boundary
from interactionlog.worker.store import PersistResult, Store

from .pipeline import INTERACTIONLOG, group_pending, migrate, record, running_worker, wait_until
from .servers import free_port

NOW = datetime.now(UTC)
_entry_numbers = iter(range(1, 10**9))


def run_migrate(database_url: str, *flags: str) -> str:
    """`interactionlog migrate` with `flags`; returns what it printed."""
    done = subprocess.run(
        [*INTERACTIONLOG, "migrate", "--database-url", database_url, *flags],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout + done.stderr


def rows_of(records: Sequence[dict[str, Any]]) -> list[StoredRow]:
    """The rows a worker would store for `records`."""
    return [
        decode_entry(
            f"{next(_entry_numbers)}-0", encode_fields(item, DEFAULT_MAX_RECORD_BYTES), DEFAULT_MAX_RECORD_BYTES
        )
        for item in records
    ]


def persist(
    database_url: str, records: Sequence[dict[str, Any]], *, dedupe_window_hours: float = DEFAULT_DEDUPE_WINDOW_HOURS
) -> PersistResult:
    """Store `records` in one batch through the worker's Store."""

    async def run() -> PersistResult:
        store = await Store.open(database_url, max_connections=1, dedupe_window_hours=dedupe_window_hours)
        try:
            return await store.persist_batch(rows_of(records))
        finally:
            await store.close()

    return asyncio.run(run())


def maintain(database_url: str, **options: Any) -> MaintenanceReport:
    """One partition maintenance round, premake 2 unless given."""
    return asyncio.run(partition_maintenance.run_round(database_url, **{"premake": 2, **options}))


def placement(database_url: str) -> dict[str, str]:
    """interaction_id -> the partition holding its row."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT interaction_id, tableoid::regclass::text FROM interaction_logs").fetchall()
    return dict(rows)


def partition_names(database_url: str) -> list[str]:
    """The range partitions of interaction_logs, oldest first (the default one left out)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'interaction_logs'::regclass AND c.relname <> 'interaction_logs_default'"
            " ORDER BY c.relname"
        ).fetchall()
    return [name for (name,) in rows]


def batch_counts(log: str) -> tuple[int, int]:
    """(rows stored, duplicates skipped), as a worker's log says."""
    batches = [json.loads(line) for line in log.splitlines() if '"batch_processed"' in line]
    return sum(batch["persisted"] for batch in batches), sum(batch["duplicates"] for batch in batches)


def expected_partition(moment: datetime, interval: Interval) -> str:
    """The name the day's or month's partition has, spelled out independently of the code under test."""
    moment = moment.astimezone(UTC)
    return f"interaction_logs_p{moment:%Y%m%d}" if interval == "day" else f"interaction_logs_p{moment:%Y%m}01"


def forbid_tool(database_url: str) -> None:
    """An operator's CHECK: PostgreSQL refuses rows whose tool is 'forbidden' (the row-by-row path)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool IS DISTINCT FROM 'forbidden')"
        )


def stamped(interaction_id: str, moment: datetime, **extra: Any) -> dict[str, Any]:
    """A record with a known id and time."""
    return {"mcp_id": "weather", "interaction_id": interaction_id, "timestamp": moment.isoformat(), **extra}


# --- bounds ---


def test_boundaries_follow_the_utc_calendar() -> None:
    """Months roll over the year, days over leap days, and a time in another zone counts in UTC."""
    assert next_boundary(datetime(2026, 12, 31, 23, tzinfo=UTC), "month") == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_boundary(datetime(2028, 2, 28, 5, tzinfo=UTC), "day") == datetime(2028, 2, 29, tzinfo=UTC)
    assert floor_instant(datetime.fromisoformat("2026-03-01T00:30:00+02:00"), "month") == datetime(
        2026, 2, 1, tzinfo=UTC
    )
    assert next_boundary(datetime(9999, 12, 31, tzinfo=UTC), "month") == partitions.MAX_BOUND


def test_free_ranges_are_the_gaps_between_existing_partitions() -> None:
    """A wanted range is cut around the partitions that exist, so partitions never overlap."""
    day = [datetime(2026, 1, d, tzinfo=UTC) for d in range(1, 11)]
    taken = [(day[1], day[3]), (day[5], day[6])]
    assert free_ranges(day[0], day[9], taken) == [(day[0], day[1]), (day[3], day[5]), (day[6], day[9])]
    assert free_ranges(day[1], day[3], taken) == []
    assert free_ranges(day[2], day[4], taken) == [(day[3], day[4])]


# --- the layout of a new install ---


def test_migrate_creates_a_partitioned_table_with_a_default_and_partitions_ahead(database_url: str) -> None:
    """A new install's table is partitioned by month on "timestamp", with this month, the next two and a default
    partition; the unique key includes "timestamp"; the indexes people query keep their names."""
    printed = run_migrate(database_url, "--partition-interval", "month", "--partition-premake", "2")
    assert "partitioned by month" in printed
    this_month = floor_instant(NOW, "month")
    months = [this_month, next_boundary(this_month, "month")]
    months.append(next_boundary(months[-1], "month"))
    assert partition_names(database_url) == [expected_partition(month, "month") for month in months]
    with psycopg.connect(database_url) as conn:
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'interaction_logs'").fetchone()
        default = conn.execute("SELECT to_regclass('interaction_logs_default') IS NOT NULL").fetchone()
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'interaction_logs_identity'"
        ).fetchone()
        indexes = {
            name for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'interaction_logs'")
        }
    assert kind == ("p",)
    assert default == (True,)
    assert key == ('UNIQUE (mcp_id, interaction_id, "timestamp")',)
    assert indexes == {
        "interaction_logs_pkey",
        "interaction_logs_identity",
        "interaction_logs_mcp_id_timestamp",
        "interaction_logs_timestamp",
        "interaction_logs_tool_timestamp",
        "interaction_logs_session_timestamp",
        "interaction_logs_errors_timestamp",
    }
    assert "is up to date" in run_migrate(database_url, "--partition-premake", "2")
    assert len(partition_names(database_url)) == 3, "a second migrate adds nothing"


def test_a_new_install_logs_no_leftover_table(database_url: str) -> None:
    """Migrating an empty database partitions the new table without naming an old table to convert (none is left,
    so a log line pointing at interaction_logs_unpartitioned with -1 rows would send people looking for it)."""
    printed = run_migrate(database_url)
    assert '"table_partitioned"' in printed
    assert "interaction_logs_unpartitioned" not in printed
    assert "estimated_rows" not in printed
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('interaction_logs_unpartitioned')").fetchone() == (None,)


@pytest.mark.parametrize("interval", ["day", "month"])
def test_records_spanning_several_months_land_in_their_partitions(database_url: str, interval: Interval) -> None:
    """Rows within the partitions made ahead land in theirs at once; older and further ones land in the default
    partition (stored, never refused), and the next maintenance round moves each into a partition of its own."""
    run_migrate(database_url, "--partition-interval", interval, "--partition-premake", "2")
    moments = {
        "now": NOW,
        "tomorrow": NOW + timedelta(days=1),
        "40 days ago": NOW - timedelta(days=40),
        "75 days ago": NOW - timedelta(days=75),
        "130 days ago": NOW - timedelta(days=130),
        "130 days ago, a minute later": NOW - timedelta(days=130, minutes=-1),
        "in 100 days": NOW + timedelta(days=100),
    }
    result = persist(database_url, [stamped(name, moment) for name, moment in moments.items()])
    assert result.inserted == len(moments)
    before = placement(database_url)
    assert before["now"] == expected_partition(NOW, interval)
    assert before["tomorrow"] == expected_partition(NOW + timedelta(days=1), interval)
    for name in ("40 days ago", "75 days ago", "130 days ago", "in 100 days"):
        assert before[name] == "interaction_logs_default", name

    report = maintain(database_url)
    assert report.rows_moved == 5
    after = placement(database_url)
    assert after == {name: expected_partition(moment, interval) for name, moment in moments.items()}
    assert maintain(database_url).created == [], "a second round finds nothing to do"


# --- idempotency on the new key ---


def test_a_batch_stored_again_is_skipped_whole_and_row_by_row(database_url: str) -> None:
    """On the partitioned table a batch stored twice is all duplicates (the staging path), and a batch that
    PostgreSQL refuses a row of still skips its duplicates (the row-by-row path)."""
    migrate(database_url)
    records = [stamped(f"dup-{days}", NOW - timedelta(days=days)) for days in (0, 35, 70)]
    assert persist(database_url, records).inserted == 3
    again = persist(database_url, records)
    assert (again.inserted, again.duplicates) == (0, 3)
    forbid_tool(database_url)
    mixed = persist(database_url, [records[1], stamped("new", NOW), stamped("refused", NOW, tool="forbidden")])
    assert (mixed.inserted, mixed.duplicates, len(mixed.refused)) == (1, 1, 1)
    assert sorted(placement(database_url)) == ["dup-0", "dup-35", "dup-70", "new"]


def stored_times(database_url: str, interaction_id: str) -> list[datetime]:
    """The timestamps of the rows stored for `interaction_id`, in order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            'SELECT "timestamp" FROM interaction_logs WHERE interaction_id = %s ORDER BY 1', (interaction_id,)
        ).fetchall()
    return [moment for (moment,) in rows]


def test_copies_stamped_again_within_the_window_are_stored_once_and_further_apart_twice(database_url: str) -> None:
    """A record published again without its timestamp (so stamped again) is a copy when its first copy is stored
    within the dedupe window either side, in the same batch, in a later one, across a partition boundary and
    on the row-by-row path; further apart it is stored again, as the README says."""
    run_migrate(database_url, "--partition-interval", "day", "--partition-premake", "3")
    start = floor_instant(NOW, "day") + timedelta(hours=12)
    first = persist(database_url, [stamped("again", start), stamped("again", start + timedelta(hours=1))])
    assert (first.inserted, first.duplicates) == (1, 1), "a copy in the same batch"
    later = persist(database_url, [stamped("again", start - timedelta(hours=23)), stamped("again", start)])
    assert (later.inserted, later.duplicates) == (0, 2), "copies a day's partition away, and a redelivery"
    apart = persist(database_url, [stamped("again", start + timedelta(hours=25))])
    assert (apart.inserted, apart.duplicates) == (1, 0), "more than the window apart: another row"
    assert stored_times(database_url, "again") == [start, start + timedelta(hours=25)]

    forbid_tool(database_url)
    mixed = persist(
        database_url,
        [stamped("again", start + timedelta(hours=30)), stamped("refused", start, tool="forbidden")],
    )
    assert (mixed.inserted, mixed.duplicates, len(mixed.refused)) == (0, 1, 1), "the row-by-row path probes too"

    exact_only = persist(
        database_url,
        [stamped("again", start + timedelta(hours=2)), stamped("again", start)],
        dedupe_window_hours=0,
    )
    assert (exact_only.inserted, exact_only.duplicates) == (1, 1), "a window of 0: exact copies only"


def leaf_scans(plan: dict[str, Any]) -> dict[str, int]:
    """Partition -> how many times the plan scanned it (EXPLAIN ANALYZE's loops), for every scan node."""
    scans: dict[str, int] = {}
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        if str(node.get("Relation Name", "")).startswith(("interaction_logs_p", "interaction_logs_default")):
            name = node["Relation Name"]
            scans[name] = scans.get(name, 0) + int(node.get("Actual Loops", 0))
        nodes.extend(node.get("Plans", []))
    return scans


def test_the_copy_probe_reads_only_the_partitions_of_its_window(database_url: str) -> None:
    """With daily partitions over three weeks, the worker's probes for copies (the batch query of its fast path,
    the staging path's INSERT ... SELECT, the one-row INSERT) read the partitions within a day either side of each
    row (run-time partition pruning), never the other ones."""
    run_migrate(database_url, "--partition-interval", "day", "--partition-premake", "10")
    start = floor_instant(NOW, "day") - timedelta(days=10)
    maintain(database_url, now=start, premake=20)
    persist(database_url, [stamped(f"old-{hour}", start + timedelta(hours=hour)) for hour in range(0, 20 * 24, 5)])
    moment = floor_instant(NOW, "day") + timedelta(hours=12)
    with psycopg.connect(database_url) as conn:
        conn.execute("ANALYZE interaction_logs")
        conn.execute(
            "CREATE TEMPORARY TABLE interaction_logs_staging ON COMMIT DROP AS"
            ' SELECT mcp_id, interaction_id, "timestamp", method, tool, session_id, is_error, duration_ms, trace_id,'
            " data, stream_entry_id FROM interaction_logs WHERE false"
        )
        conn.execute(
            'INSERT INTO interaction_logs_staging (mcp_id, interaction_id, "timestamp", data, stream_entry_id)'
            " VALUES ('weather', 'probe-1', %s, '{}', '1-0'), ('weather', 'probe-2', %s, '{}', '2-0')",
            (moment, moment + timedelta(minutes=1)),
        )
        statement = insert_rows_from(sql.Identifier("interaction_logs_staging"), DEFAULT_DEDUPE_WINDOW_HOURS)
        ((plan,),) = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(statement)).fetchall()
        row = rows_of([stamped("probe-3", moment)])[0]
        ((one_row_plan,),) = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(insert_one_row(DEFAULT_DEDUPE_WINDOW_HOURS)), row
        ).fetchall()
        ((batch_plan,),) = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(stored_copies(DEFAULT_DEDUPE_WINDOW_HOURS)),
            (["weather", "weather"], ["probe-4", "probe-5"], [moment, moment + timedelta(minutes=1)]),
        ).fetchall()
        conn.rollback()
    window = {expected_partition(moment + timedelta(days=days), "day") for days in (-1, 0, 1)}
    assert len(partition_names(database_url)) > 20
    plans = (("INSERT ... SELECT", plan), ("one row", one_row_plan), ("the batch's stored copies", batch_plan))
    for form, explained in plans:
        scanned = {name for name, loops in leaf_scans(explained[0]["Plan"]).items() if loops}
        assert scanned, form
        assert scanned <= window, (form, scanned)


def test_a_worker_stores_a_record_published_twice_once_and_keeps_partitions_ahead(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Through the real pipeline, records republished with their timestamp are stored once, across partitions,
    and the worker's housekeeping recreates a partition ahead that went missing."""
    migrate(database_url)
    ahead = partition_names(database_url)[-1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {ahead}")
    records = [stamped(f"twice-{index}", NOW - timedelta(days=20 * index)) for index in range(6)]
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish_many(records)
        publisher.publish_many(records)
    with running_worker(redis_url, database_url, tmp_path, housekeeping_interval_ms="300") as worker:
        wait_until(lambda: batch_counts(worker.log_text()) == (6, 6), what="6 stored, 6 skipped as duplicates")
        wait_until(lambda: ahead in partition_names(database_url), what=f"{ahead} made again by housekeeping")
        wait_until(lambda: "interaction_logs_default" not in placement(database_url).values(), what="strays adopted")
        assert worker.stop() == 0
    with psycopg.connect(database_url) as conn:
        counts = conn.execute("SELECT interaction_id, count(*) FROM interaction_logs GROUP BY 1").fetchall()
        dead = redis.Redis.from_url(redis_url).xlen("interactions:dlq")
    assert dict(counts) == {f"twice-{index}": 1 for index in range(6)}
    assert dead == 0


# --- maintenance ---


def test_one_process_maintains_partitions_at_a_time(database_url: str) -> None:
    """While another process holds the lease a round does nothing and says why; afterwards it does its work,
    including making a default partition that went missing."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in partition_names(database_url):
            conn.execute(f"DROP TABLE {name}")
        conn.execute("DROP TABLE interaction_logs_default")
    with psycopg.connect(database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('interactionlog_partitions'))")
        busy = maintain(database_url)
        assert "lease" in str(busy.skipped)
        assert busy.created == []
        assert partition_names(database_url) == []
    report = maintain(database_url, premake=1)
    assert report.skipped is None
    assert len(report.created) == 2
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('interaction_logs_default') IS NOT NULL").fetchone() == (True,)


def test_a_row_far_ahead_lands_in_the_default_partition_and_moves_when_its_partition_is_made(
    database_url: str,
) -> None:
    """A record three years ahead is stored in the default partition; when its month's partition is created
    (here by a round whose clock has reached it), the row moves into it, once."""
    migrate(database_url)
    later = NOW + timedelta(days=3 * 365)
    persist(database_url, [stamped("future", later)])
    assert placement(database_url) == {"future": "interaction_logs_default"}
    report = maintain(database_url, now=later - timedelta(days=1))
    assert expected_partition(later, "month") in report.created
    assert placement(database_url) == {"future": expected_partition(later, "month")}


def test_migrate_can_change_the_interval_from_the_end_of_the_partitions(database_url: str) -> None:
    """Switching from months to days keeps the month partitions made and continues with days after them."""
    run_migrate(database_url, "--partition-interval", "month", "--partition-premake", "1")
    this_month = floor_instant(NOW, "month")
    last_month_end = next_boundary(next_boundary(this_month, "month"), "month")
    printed = run_migrate(database_url, "--partition-interval", "day", "--partition-premake", "1")
    assert (
        f"partitioned by day from {last_month_end:%Y-%m-%d} on; its partitions so far: 2 monthly from "
        f"{this_month:%Y-%m-%d} to {last_month_end:%Y-%m-%d}, and a default partition"
    ) in printed, "the month partitions are not called daily ones"
    maintain(database_url, premake=1, now=last_month_end)
    assert partition_names(database_url)[-2:] == [
        expected_partition(last_month_end, "day"),
        expected_partition(last_month_end + timedelta(days=1), "day"),
    ]


# --- retention ---


def test_retention_drops_exactly_the_expired_partitions(database_url: str) -> None:
    """With 60 days kept on 31 May, the partitions ending on or before 1 April go (March's included: it ends at
    the cutoff); April's, holding some rows younger than that, stays. A dry run says the same and drops nothing."""
    migrate(database_url)
    now = datetime(2026, 5, 31, tzinfo=UTC)
    months = [datetime(2026, month, 15, tzinfo=UTC) for month in range(1, 6)]
    persist(database_url, [stamped(f"m{moment.month}", moment) for moment in months])
    maintain(database_url, now=now)
    expired = [expected_partition(moment, "month") for moment in months[:3]]
    assert set(expired) <= set(partition_names(database_url))

    dry = maintain(database_url, now=now, retention_days=60, dry_run=True)
    assert sorted(dry.dropped) == expired
    assert set(expired) <= set(partition_names(database_url)), "a dry run drops nothing"

    report = maintain(database_url, now=now, retention_days=60)
    assert sorted(report.dropped) == expired
    remaining = partition_names(database_url)
    assert not set(expired) & set(remaining)
    assert expected_partition(months[3], "month") in remaining
    assert sorted(placement(database_url)) == ["m4", "m5"]
    assert maintain(database_url, now=now, retention_days=60).dropped == []


def test_retention_command_drops_old_partitions_and_refuses_when_retention_is_off(database_url: str) -> None:
    """`interactionlog retention` needs --retention-days; with it, --dry-run lists what would go and the real run
    drops it, including the partition made for a record two years old."""
    migrate(database_url)
    persist(database_url, [stamped("old", NOW - timedelta(days=730)), stamped("fresh", NOW)])
    command = [*INTERACTIONLOG, "retention", "--database-url", database_url]
    off = subprocess.run(command, capture_output=True, text=True, check=False)
    assert off.returncode == 2
    assert "--retention-days" in off.stderr
    old_partition = expected_partition(NOW - timedelta(days=730), "month")
    dry = subprocess.run([*command, "--retention-days", "365", "--dry-run"], capture_output=True, text=True, check=True)
    assert f"would drop {old_partition}" in dry.stdout
    assert placement(database_url)["old"] == "interaction_logs_default"
    done = subprocess.run([*command, "--retention-days", "365"], capture_output=True, text=True, check=True)
    assert f"dropped {old_partition}" in done.stdout
    assert placement(database_url) == {"fresh": expected_partition(NOW, "month")}


def test_retention_counts_the_rows_of_a_partition_never_analysed(database_url: str) -> None:
    """A partition holding one row, never analysed (PostgreSQL's estimate is unknown), is not reported as "about 0
    rows": --dry-run counts it exactly, and the real run says its rows are unknown."""
    migrate(database_url)
    persist(database_url, [stamped("old", NOW - timedelta(days=730))])
    maintain(database_url)  # the record gets a partition of its own, made without an ANALYZE
    command = [*INTERACTIONLOG, "retention", "--database-url", database_url, "--retention-days", "365"]
    dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, check=True)
    assert "would drop 1 partition(s) older than 365 days (1 row(s), counted)" in dry.stderr
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "dropped 1 partition(s) older than 365 days (rows unknown" in done.stderr
    assert "about 0" not in done.stderr


def test_a_record_older_than_the_retention_is_stored_then_dropped_by_the_next_round(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A worker keeping 30 days stores a 400-day-old record (in the default partition: never dead-lettered), and
    its housekeeping then gives it a partition and drops that; fresh records stay."""
    migrate(database_url)
    old_at = NOW - timedelta(days=400)
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish_many([stamped("ancient", old_at), *(record(index) for index in range(5))])
    port = free_port()
    flags = {"housekeeping_interval_ms": "300", "retention_days": "30", "metrics_port": str(port)}
    with running_worker(redis_url, database_url, tmp_path, **flags) as worker:
        wait_until(lambda: batch_counts(worker.log_text())[0] == 6, what="all six records stored")
        wait_until(lambda: "ancient" not in placement(database_url), what="the old record dropped")
        assert group_pending(redis.Redis.from_url(redis_url)) == 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert worker.stop() == 0
    dropped = [line for line in metrics.splitlines() if line.startswith("interactionlog_partitions_dropped_total{")]
    assert dropped, "the drop is counted"
    assert float(dropped[0].split()[-1]) >= 1
    assert sorted(placement(database_url)) == [f"rec-{index:06d}" for index in range(5)]
    assert redis.Redis.from_url(redis_url).xlen("interactions:dlq") == 0
    log = worker.log_text()
    assert expected_partition(old_at, "month") in log, "the partition made for it and dropped is logged"
    assert '"partition_dropped"' in log
