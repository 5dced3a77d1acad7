"""Converting a populated, unpartitioned `interaction_logs` of an earlier version to the partitioned layout,
online: workers keep storing throughout, and every row ends up in the partitioned table exactly once.

1. **Switch** (one short transaction, under a lock timeout, retried): the plain table is renamed
   `interaction_logs_unpartitioned` and a partitioned `interaction_logs` takes its name
   (`partitions.switch_to_partitioned`). From its commit on, the workers store into the partitioned table and
   nothing writes to the old one any more.
2. **Partitions for the old rows**: one for each day or month that holds old rows (found with one index probe
   per interval), plus those ahead of now.
3. **Move, in batches**: each batch is one statement, `DELETE ... RETURNING` from the old table feeding an
   `INSERT ... ON CONFLICT (mcp_id, interaction_id, "timestamp") DO NOTHING` into the new one, so a row is in
   exactly one of the two tables at every commit. A record a worker stored again meanwhile (a redelivery of one
   not yet moved, or a copy published again within the default dedupe window, `rows.copy_probe`) is kept once:
   its old copy is dropped. Rows keep their ids; ids of new rows
   continue after the old ones. Each batch locks only its own rows; one that deadlocks with a worker storing the
   same record is retried.
4. **Drop** the then-empty old table.

Interrupted, it is run again and resumes where it stopped (the old table holds what is left to move). While
it runs, queries on `interaction_logs` see the rows moved so far and every new one; the rest are in
`interaction_logs_unpartitioned` until moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
import structlog
from psycopg import sql

from ..errors import PartitioningError
from ..rows import copy_probe
from ..settings import DEFAULT_DEDUPE_WINDOW_HOURS
from . import partitions
from .partition_maintenance import CONNECT_TIMEOUT_S, LOCK_TIMEOUT, lease, maintain
from .partitions import MAX_BOUND, MIN_BOUND, Interval

log = structlog.get_logger(__name__)

SWITCH_ATTEMPTS = 30
SWITCH_RETRY_S = 1.0
MAX_BATCH_RETRIES = 50  # in a row
BATCH_RETRY_S = 0.1


@dataclass
class ConversionReport:
    """What `convert` did: whether it switched the table now, the partitions it created, rows moved and
    rows found stored twice (kept once)."""

    switched: bool = False
    created: int = 0
    moved: int = 0
    duplicates: int = 0
    already_partitioned: bool = False


async def convert(
    database_url: str,
    *,
    interval: Interval | None,
    premake: int,
    rows_per_batch: int = 10_000,
    pause_s: float = 0.0,
    on_batch: Callable[[ConversionReport], None] | None = None,
) -> ConversionReport:
    """Convert interaction_logs to the partitioned layout (or finish an interrupted conversion).

    `interval` is recorded when given (else the recorded one, else the default, is used). Raises
    PartitioningError when the table is missing or cannot be partitioned as it is.
    """
    report = ConversionReport()
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
    ) as conn:
        kind = await partitions.table_kind(conn)
        if kind is None or not await _exists(conn, "interactionlog_partitioning"):
            raise PartitioningError(
                f"{partitions.TABLE} is missing or predates migration 4: run `interactionlog migrate` first"
            )
        if kind == "plain":
            await _switch(conn, report)
        elif not await _exists(conn, partitions.UNPARTITIONED):
            report.already_partitioned = True
        async with conn.transaction():
            await partitions.record_interval(
                conn, interval or partitions.DEFAULT_INTERVAL, replace=interval is not None
            )
        if report.already_partitioned:
            return report
        await _create_partitions_for_old_rows(conn, report, premake)
        columns = await _columns(conn)
        after_id: int | None = 0
        retries = 0
        while after_id is not None:
            try:
                after_id = await _move_batch(conn, report, columns, rows_per_batch, after_id)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable) as error:
                # A worker storing a record again whose old copy is in this batch: each waits on the other's
                # uncommitted key, and PostgreSQL aborts one of the two. Nothing of the batch was kept: again.
                retries += 1
                if retries > MAX_BATCH_RETRIES:
                    raise
                log.info("conversion_batch_retried", error=str(error).strip().splitlines()[0], retries=retries)
                await asyncio.sleep(BATCH_RETRY_S)
                continue
            retries = 0
            if on_batch is not None:
                on_batch(report)
            if pause_s:
                await asyncio.sleep(pause_s)
        await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        await _retry_on_lock_timeout(
            lambda: conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(partitions.UNPARTITIONED)))
        )
        log.info("table_converted", table=partitions.TABLE, moved=report.moved, duplicates=report.duplicates)
    return report


async def _switch(conn: psycopg.AsyncConnection[Any], report: ConversionReport) -> None:
    """Step 1, retried while the lock is not granted within LOCK_TIMEOUT (a worker's batch in the way)."""

    async def attempt() -> None:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            if await partitions.table_kind(conn) == "plain":
                estimated_rows = await partitions.switch_to_partitioned(conn)
                report.switched = True
                log.info(
                    "table_switched_to_partitioned_layout",
                    table=partitions.TABLE,
                    rows_left_in=partitions.UNPARTITIONED,
                    estimated_rows=estimated_rows,
                )

    await _retry_on_lock_timeout(attempt)


async def _retry_on_lock_timeout(attempt: Callable[[], Any]) -> None:
    for number in range(1, SWITCH_ATTEMPTS + 1):
        try:
            await attempt()
        except psycopg.errors.LockNotAvailable:
            log.info("conversion_waiting_for_lock", attempt=number, lock_timeout=LOCK_TIMEOUT)
            await asyncio.sleep(SWITCH_RETRY_S)
        else:
            return
    raise PartitioningError(
        f"could not lock {partitions.TABLE} within {LOCK_TIMEOUT} in {SWITCH_ATTEMPTS} attempts: a long "
        "transaction holds it (see pg_stat_activity); run the command again once it has ended"
    )


async def _create_partitions_for_old_rows(
    conn: psycopg.AsyncConnection[Any], report: ConversionReport, premake: int
) -> None:
    """Step 2: a partition for each day or month holding old rows, each made in its own short transaction
    under the maintenance lease (waiting for a worker's round to end), then the usual ones ahead."""
    old = sql.Identifier(partitions.UNPARTITIONED)
    after = MIN_BOUND
    while after != MAX_BOUND:
        async with conn.transaction():
            cursor = await conn.execute(
                sql.SQL('SELECT min("timestamp") FROM {} WHERE "timestamp" >= %s').format(old), (after,)
            )
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                break
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await lease(conn, wait=True)
            interval = await partitions.recorded_interval(conn)
            free = partitions.interval_free_range(row[0], interval, await partitions.read_layout(conn))
            if free is not None:
                await partitions.create_partition(conn, *free)
                report.created += 1
            after = partitions.next_boundary(row[0], interval)
    async with conn.transaction():
        await lease(conn, wait=True)  # held, so maintain's own try for it succeeds (advisory locks nest)
        report.created += len((await maintain(conn, premake=premake)).created)


async def _columns(conn: psycopg.AsyncConnection[Any]) -> sql.Composable:
    cursor = await conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        (partitions.UNPARTITIONED,),
    )
    return sql.SQL(", ").join(sql.Identifier(name) for (name,) in await cursor.fetchall())


async def _move_batch(
    conn: psycopg.AsyncConnection[Any], report: ConversionReport, columns: sql.Composable, rows: int, after_id: int
) -> int | None:
    """Step 3, one batch: the `rows` lowest ids above `after_id` move; returns the highest moved, None once
    nothing is left. Keyset paging, so no batch wades through the index entries of rows moved before it."""
    statement = sql.SQL(
        "WITH batch AS (SELECT id FROM {old} WHERE id > {after} ORDER BY id LIMIT {rows}),"
        " moved AS (DELETE FROM {old} WHERE id IN (SELECT id FROM batch) RETURNING {columns}),"
        " inserted AS (INSERT INTO {new} ({columns}) SELECT {columns} FROM moved AS s{probe}"
        " ON CONFLICT ({conflict}) DO NOTHING RETURNING 1)"
        " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM inserted), (SELECT max(id) FROM moved)"
    ).format(
        after=sql.Literal(after_id),
        old=sql.Identifier(partitions.UNPARTITIONED),
        new=sql.Identifier(partitions.TABLE),
        rows=sql.Literal(rows),
        columns=columns,
        conflict=sql.SQL(", ").join(sql.Identifier(column) for column in partitions.CONFLICT_COLUMNS),
        probe=copy_probe(DEFAULT_DEDUPE_WINDOW_HOURS),
    )
    cursor = await conn.execute(statement)
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return None
    report.moved += int(row[0])
    report.duplicates += int(row[0]) - int(row[1])
    return int(row[2])


async def _exists(conn: psycopg.AsyncConnection[Any], name: str) -> bool:
    cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    row = await cursor.fetchone()
    return bool(row and row[0])
