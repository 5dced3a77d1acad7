"""What partitioning costs and saves: the worker's inserts, the dedupe window's probe, converting an existing
table, and retention.

On one durable PostgreSQL (started by `benchmarks.servers`):
1. stores the same realistic records through `Store.persist_batch` (1000 a batch, as the worker does) into the
   unpartitioned table of earlier versions and into the partitioned one (monthly), alternating;
2. the probe: stores them into a partitioned table (daily, then monthly) already holding `--prefill-rows` rows
   over the last week, three ways, and prints rows/s and PostgreSQL CPU per row of each: COPY straight into the
   table (`--dedupe-window-hours 0`); the default (24 h): one query naming the batch's rows already stored
   within the window, then a COPY of the rest; and the staging path (COPY into a temporary table, then `INSERT
   ... SELECT` with the probe), which a batch takes only when its COPY fails on the unique index;
3. converts a table of `--convert-rows` rows over three months with `interactionlog partition-convert`'s code
   (10,000 rows a batch), and prints rows moved per second;
4. drops one month by retention (DROP TABLE of its partition) and, on an unpartitioned copy, deletes the same
   month's rows with DELETE, and prints both times.

    python -m benchmarks.partitions [--rows 100000] [--prefill-rows 200000] [--convert-rows 300000] [--probe-only]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg

from interactionlog.worker import conversion, partition_maintenance
from interactionlog.worker.decode import StoredRow
from interactionlog.worker.partitions import Interval
from interactionlog.worker.store import Store, _Batch, migrate

from .index_cost import BATCH, store_in_batches, stored_rows
from .servers import Servers, checkpoint, cpu_seconds, create_database, drop_database, start_servers

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 90

_GENERATE = """
    INSERT INTO interaction_logs (mcp_id, interaction_id, "timestamp", method, tool, session_id, is_error,
                                  duration_ms, data, stream_entry_id)
    SELECT 'mcp-' || g %% 20, 'i-' || g, %(start)s + g * (interval '1 day' * %(days)s / %(rows)s), 'tools/call',
           'tool-' || g %% 200, 'session-' || g / 40, g %% 97 = 0, (g %% 1000) * 0.7,
           jsonb_build_object('mcp_id', 'mcp-' || g %% 20, 'interaction_id', 'i-' || g, 'tool', 'tool-' || g %% 200,
                              'request', jsonb_build_object('city', 'Oslo', 'days', g %% 7),
                              'response', jsonb_build_object('content', jsonb_build_array(
                                  jsonb_build_object('type', 'text', 'text', 'Sunny, ' || g %% 30 || 'C')))),
           g || '-0'
    FROM generate_series(1, %(rows)s) AS g
"""


def insert_rate(servers: Servers, rows: list[StoredRow], *, partitioned: bool) -> float:
    """Rows per second storing `rows` into a fresh database of either layout."""
    name = "partitions_insert"
    url = create_database(servers, name)
    if partitioned:
        asyncio.run(migrate(url))
    else:
        asyncio.run(migrate(url, up_to=3))
    checkpoint(servers)
    started = time.perf_counter()
    asyncio.run(store_in_batches(url, rows))
    elapsed = time.perf_counter() - started
    drop_database(servers, name)
    return len(rows) / elapsed


PREFILL_DAYS = 7
STAGED = "staged INSERT ... SELECT + probe 24 h"
# How each variant of the probe measurement stores a batch: (label, dedupe window in hours). The first two are
# `Store.persist_batch` as the worker runs it with each window; the last is its fallback path (taken only when a
# COPY fails on the unique index), forced for every batch to show what it costs.
PROBE_VARIANTS = (
    ("COPY into the table (window 0)", 0.0),
    ("query stored copies, COPY the rest (24 h)", 24.0),
    (STAGED, 24.0),
)


async def _store_variant(url: str, rows: list[StoredRow], label: str, window_hours: float) -> None:
    store = await Store.open(url, max_connections=1, dedupe_window_hours=window_hours)
    try:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            if label == STAGED:
                async with store._pool.connection() as conn:
                    await store._persist_copy(conn, _Batch(batch, [False] * len(batch)))
            else:
                await store.persist_batch(batch)
    finally:
        await store.close()


def probe_cost(
    servers: Servers, rows: list[StoredRow], prefill: int, interval: Interval, variant: tuple[str, float]
) -> tuple[float, float]:
    """(rows per second, PostgreSQL CPU microseconds per row) storing `rows` (stamped now) one variant's way into
    a fresh table partitioned by `interval` that holds `prefill` rows over the last PREFILL_DAYS days."""
    name = "partitions_probe"
    url = create_database(servers, name)
    now = datetime.now(UTC)
    asyncio.run(migrate(url, partition_interval=interval))
    asyncio.run(partition_maintenance.run_round(url, premake=PREFILL_DAYS + 4, now=now - timedelta(days=PREFILL_DAYS)))
    with psycopg.connect(url, autocommit=True) as conn:
        start = now - timedelta(days=PREFILL_DAYS)
        conn.execute(_GENERATE, {"rows": prefill, "days": PREFILL_DAYS, "start": start})
        conn.execute("VACUUM ANALYZE interaction_logs")
    checkpoint(servers)
    label, window_hours = variant
    cpu_before, started = cpu_seconds(servers.postgres_pid), time.perf_counter()
    asyncio.run(_store_variant(url, rows, label, window_hours))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(servers.postgres_pid) - cpu_before
    drop_database(servers, name)
    return len(rows) / elapsed, cpu / len(rows) * 1e6


def convert_and_retain(servers: Servers, rows: int) -> None:
    """Convert `rows` rows over DAYS days, then compare dropping a month with deleting one."""
    name, plain_name = "partitions_convert", "partitions_plain"
    url, plain_url = create_database(servers, name), create_database(servers, plain_name)
    for target in (url, plain_url):
        asyncio.run(migrate(target, up_to=3))
        with psycopg.connect(target) as conn:
            conn.execute(_GENERATE, {"rows": rows, "days": DAYS, "start": START})
            conn.execute("ANALYZE interaction_logs")
    asyncio.run(migrate(url))  # migration 4 on a populated table: it stays unpartitioned until converted
    checkpoint(servers)
    started = time.perf_counter()
    report = asyncio.run(conversion.convert(url, interval="month", premake=1, rows_per_batch=10_000))
    elapsed = time.perf_counter() - started
    print(
        f"partition-convert: {report.moved:,} rows, {report.created} partitions, {elapsed:.1f} s "
        f"({report.moved / elapsed:,.0f} rows/s)"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE interaction_logs")
    january_end = datetime(2026, 2, 1, tzinfo=UTC)
    started = time.perf_counter()
    dropped = asyncio.run(
        partition_maintenance.run_round(url, premake=1, retention_days=1, now=january_end + timedelta(days=1))
    )
    drop_s = time.perf_counter() - started
    with psycopg.connect(plain_url, autocommit=True) as conn:
        started = time.perf_counter()
        deleted = conn.execute('DELETE FROM interaction_logs WHERE "timestamp" < %s', (january_end,)).rowcount
        delete_s = time.perf_counter() - started
    print(
        f"retention of January: DROP TABLE of {', '.join(dropped.dropped)} (about {dropped.dropped_rows:,} rows) in "
        f"{drop_s * 1000:.0f} ms (the whole round); DELETE of the same {deleted:,} rows unpartitioned in "
        f"{delete_s * 1000:.0f} ms, plus the VACUUM it leaves behind"
    )
    drop_database(servers, name)
    drop_database(servers, plain_name)


def main() -> None:
    """Run the measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--prefill-rows", type=int, default=200_000)
    parser.add_argument("--convert-rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probe-only", action="store_true", help="Only the probe's cost (measurement 2).")
    args = parser.parse_args()
    rows = stored_rows(args.rows)
    with start_servers() as servers:
        if not args.probe_only:
            for round_number in range(args.rounds):
                order = (False, True) if round_number % 2 == 0 else (True, False)
                for partitioned in order:
                    rate = insert_rate(servers, rows, partitioned=partitioned)
                    label = "partitioned (month)" if partitioned else "unpartitioned"
                    print(f"round {round_number + 1}  insert, {label:20} {rate:9,.0f} rows/s")
        for round_number in range(args.rounds):
            for interval in ("day", "month"):
                variants = PROBE_VARIANTS if round_number % 2 == 0 else PROBE_VARIANTS[::-1]
                for variant in variants:
                    rate, cpu_us = probe_cost(servers, rows, args.prefill_rows, interval, variant)
                    print(
                        f"round {round_number + 1}  {interval:5} {variant[0]:40} {rate:9,.0f} rows/s "
                        f"{cpu_us:6.1f} PostgreSQL CPU µs/row  (load average {os.getloadavg()[0]:.1f})"
                    )
        if not args.probe_only:
            convert_and_retain(servers, args.convert_rows)


if __name__ == "__main__":
    main()
