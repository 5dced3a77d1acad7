"""Keeping `interaction_logs`' partitions: created ahead of time, strays out of the default, and retention.

One round runs in one transaction, by one process at a time. The transaction starts with
`pg_try_advisory_xact_lock`: a replica that does not get it skips the round, another one is doing it. The lock is
transaction-level, not session-level, so it holds behind PgBouncer in transaction mode too and ends with the
transaction whatever becomes of the connection. Every lock the round waits for is bounded by LOCK_TIMEOUT: a
partition DDL needs a moment of ACCESS EXCLUSIVE on the parent, and a long wait would hold the workers' inserts
behind it. Each action runs under a savepoint, so one that fails (a lock not granted in time, a missing
privilege) is logged and left for the next round while the others still happen.

A round, in order:
1. recreates the default partition if it is missing, so a row can never lack a partition;
2. creates the partitions of the current interval and the `premake` next ones;
3. adopts strays: rows in the default partition (a record older than the partitions, or further ahead) get a
   partition made for their day or month, at most MAX_ADOPTED_PER_ROUND per round;
4. with `retention_days`, drops every partition whose upper bound is at least that old. Whole partitions only:
   a DROP TABLE, whatever their size, never a DELETE. A record older than the retention is therefore stored,
   adopted into a partition of its own in step 3, and dropped in step 4 of the same round.
Creating a partition moves the default partition's rows of its range into it (`partitions.create_partition`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import psycopg.errors
import structlog

from ..metrics import WorkerMetrics
from ..retry import periodically
from ..settings import Settings
from . import partitions
from .partitions import MAX_BOUND, MIN_BOUND, Interval, Layout, Partition

log = structlog.get_logger(__name__)

LEASE = "interactionlog_partitions"
LOCK_TIMEOUT = "2s"
MAX_ADOPTED_PER_ROUND = 24
CONNECT_TIMEOUT_S = 10


@dataclass
class MaintenanceReport:
    """What one round did (or, with `dry_run`, would do)."""

    interval: Interval | None = None
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # The rows the dropped partitions held: counted exactly by a dry run; otherwise PostgreSQL's estimate, of the
    # analysed partitions only (`unanalysed_drops` counts the others, whose rows are unknown).
    dropped_rows: int = 0
    dropped_rows_counted: bool = False
    unanalysed_drops: int = 0
    rows_moved: int = 0  # out of the default partition, into partitions created for them
    postponed: list[str] = field(default_factory=list)  # actions that failed this round, with why
    skipped: str | None = None  # why the round did nothing
    dry_run: bool = False


@dataclass
class _Plan:
    """The actions of a round, decided up front from the layout, so a dry run can show them."""

    create_default: bool
    creates: list[tuple[datetime, datetime]]
    drops: list[Partition]


async def lease(conn: psycopg.AsyncConnection[Any], *, wait: bool) -> bool:
    """Take the maintenance lease for this transaction; without `wait`, False when another process holds it."""
    function = "pg_advisory_xact_lock" if wait else "pg_try_advisory_xact_lock"
    cursor = await conn.execute(f"SELECT {function}(hashtext(%s))::text", (LEASE,))
    row = await cursor.fetchone()
    return wait or (row is not None and row[0] == "true")


async def maintain(
    conn: psycopg.AsyncConnection[Any],
    *,
    premake: int,
    retention_days: int = 0,
    now: datetime | None = None,
    dry_run: bool = False,
) -> MaintenanceReport:
    """One round in the caller's transaction on `conn`; `now` defaults to PostgreSQL's clock."""
    report = MaintenanceReport(dry_run=dry_run)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    if not await lease(conn, wait=False):
        report.skipped = "another process holds the partition maintenance lease"
        return report
    kind = await partitions.table_kind(conn)
    if kind != "partitioned":
        report.skipped = (
            f"{partitions.TABLE} does not exist: run `interactionlog migrate`"
            if kind is None
            else f"{partitions.TABLE} is not partitioned (a table of an earlier version): run "
            "`interactionlog partition-convert`"
        )
        return report
    if now is None:
        cursor = await conn.execute("SELECT now()")
        row = await cursor.fetchone()
        assert row is not None
        now = row[0]
    interval = report.interval = await partitions.recorded_interval(conn)
    layout = await partitions.read_layout(conn)
    plan = await _plan(conn, layout, interval, now, premake=premake, retention_days=retention_days)
    if dry_run:
        report.created = [partitions.partition_name(lower) for lower, _ in plan.creates]
        report.dropped = [partition.name for partition in plan.drops]
        # Counted, not estimated: PostgreSQL has no estimate for a partition never analysed (autovacuum skips
        # those with fewer than 50 rows), and one about to be made for strays does not exist yet. One scan of each
        # range, pruned to its partition (or the default one): fine for a command a person runs to check.
        for partition in plan.drops:
            cursor = await conn.execute(
                f'SELECT count(*) FROM {partitions.TABLE} WHERE "timestamp" >= %s AND "timestamp" < %s',  # noqa: S608
                (partition.lower, partition.upper),
            )
            row = await cursor.fetchone()
            report.dropped_rows += row[0] if row else 0
        report.dropped_rows_counted = True
        return report
    if plan.create_default:
        await _act(report, "create the default partition", partial(partitions.create_default_partition, conn), conn)
    for lower, upper in plan.creates:
        created = await _act(
            report,
            f"create the partition from {lower} to {upper}",
            partial(partitions.create_partition, conn, lower, upper),
            conn,
        )
        if created is not None:
            name, moved = created
            report.created.append(name)
            report.rows_moved += moved
            log.info("partition_created", partition=name, lower=str(lower), upper=str(upper), rows_moved=moved)
    # A partition just made for an expired stray is dropped too: read its name and estimate afresh.
    expired = _expired(await partitions.read_layout(conn), now, retention_days) if retention_days else []
    for partition in expired:
        if await _act(report, f"drop {partition.name}", partial(partitions.drop_partition, conn, partition.name), conn):
            report.dropped.append(partition.name)
            if partition.rows is None:
                report.unanalysed_drops += 1
            report.dropped_rows += partition.rows or 0
            log.info(
                "partition_dropped",
                partition=partition.name,
                upper=str(partition.upper),
                estimated_rows=partition.rows,
                retention_days=retention_days,
            )
    return report


async def _plan(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    interval: Interval,
    now: datetime,
    *,
    premake: int,
    retention_days: int,
) -> _Plan:
    taken = layout.taken()
    creates: list[tuple[datetime, datetime]] = []

    def claim(lower: datetime, upper: datetime) -> None:
        for free in partitions.free_ranges(lower, upper, taken):
            creates.append(free)
            taken.append(free)
            taken.sort()

    start = partitions.floor_instant(now, interval)
    for _ in range(premake + 1):
        end = partitions.next_boundary(start, interval)
        claim(start, end)
        if end == MAX_BOUND:
            break
        start = end
    if layout.has_default:
        for moment in await _stray_instants(conn, interval):
            simulated = Layout(tuple(Partition(lower, upper, "") for lower, upper in taken), True)
            free = partitions.interval_free_range(moment, interval, simulated)
            if free is not None:
                claim(*free)
    planned = Layout(
        tuple(
            sorted(
                (
                    *layout.partitions,
                    *(Partition(lower, upper, partitions.partition_name(lower)) for lower, upper in creates),
                )
            )
        ),
        True,
    )
    drops = _expired(planned, now, retention_days) if retention_days else []
    return _Plan(create_default=not layout.has_default, creates=creates, drops=drops)


async def _stray_instants(conn: psycopg.AsyncConnection[Any], interval: Interval) -> list[datetime]:
    """The earliest row of each day or month found in the default partition, oldest first, at most
    MAX_ADOPTED_PER_ROUND of them: one index probe each, however many rows the default partition holds."""
    found: list[datetime] = []
    after = MIN_BOUND
    while len(found) < MAX_ADOPTED_PER_ROUND:
        cursor = await conn.execute(
            f'SELECT min("timestamp") FROM {partitions.DEFAULT_PARTITION} WHERE "timestamp" >= %s',  # noqa: S608
            (after,),
        )
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            break
        found.append(row[0])
        after = partitions.next_boundary(row[0], interval)
        if after == MAX_BOUND:
            break
    return found


def _expired(layout: Layout, now: datetime, retention_days: int) -> list[Partition]:
    cutoff = now - timedelta(days=retention_days)
    return [p for p in layout.partitions if p.upper != MAX_BOUND and p.upper <= cutoff and p.name]


async def _act(
    report: MaintenanceReport, what: str, action: Callable[[], Awaitable[Any]], conn: psycopg.AsyncConnection[Any]
) -> Any:
    """Run `action` under a savepoint; its result (True for None), or None, logged and postponed, when
    PostgreSQL refuses it."""
    try:
        async with conn.transaction():
            result = await action()
    except psycopg.errors.LockNotAvailable:
        reason = f"{what}: a lock was not granted within {LOCK_TIMEOUT} (busy table); retried next round"
    except psycopg.OperationalError:
        raise  # the connection is gone: the round fails as a whole
    except psycopg.Error as error:
        reason = f"{what}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
        if isinstance(error, psycopg.errors.InsufficientPrivilege):
            reason += f" (partitions are created and dropped by the owner of {partitions.TABLE}: run workers as it)"
    else:
        return True if result is None else result
    report.postponed.append(reason)
    log.warning("partition_action_postponed", action=what, reason=reason)
    return None


async def run_round(
    database_url: str, *, premake: int, retention_days: int = 0, now: datetime | None = None, dry_run: bool = False
) -> MaintenanceReport:
    """One maintenance round on a connection of its own (see `maintain`)."""
    connecting = psycopg.AsyncConnection.connect(database_url, connect_timeout=CONNECT_TIMEOUT_S)
    async with await connecting as conn, conn.transaction(force_rollback=dry_run):
        return await maintain(conn, premake=premake, retention_days=retention_days, now=now, dry_run=dry_run)


async def keep_partitions(settings: Settings, metrics: WorkerMetrics, stopping: asyncio.Event) -> None:
    """The workers' housekeeping of partitions: a round every housekeeping interval until `stopping` is set."""
    labels = metrics.labels()
    said: list[str | None] = [None]  # the last reason for skipping, logged once rather than every round

    async def chore() -> None:
        report = await run_round(
            settings.database_url, premake=settings.partition_premake, retention_days=settings.retention_days
        )
        metrics.partitions_created.labels(**labels).inc(len(report.created))
        metrics.partitions_dropped.labels(**labels).inc(len(report.dropped))
        metrics.rows_moved_from_default.labels(**labels).inc(report.rows_moved)
        lease_elsewhere = report.skipped is not None and "lease" in report.skipped
        if report.skipped != said[0] and not lease_elsewhere:
            if report.skipped:
                log.warning("partition_maintenance_skipped", reason=report.skipped)
            said[0] = report.skipped

    await periodically(
        chore,
        interval_s=settings.housekeeping_interval_ms / 1000,
        name="partition_maintenance",
        stopping=stopping,
        expected=(psycopg.Error, OSError),
    )


async def describe(database_url: str) -> str:
    """One line on interaction_logs' layout for people: its interval and partitions, or what to run."""
    connecting = psycopg.AsyncConnection.connect(database_url, connect_timeout=CONNECT_TIMEOUT_S)
    async with await connecting as conn:
        kind = await partitions.table_kind(conn)
        if kind != "partitioned":
            return (
                f"warning: {partitions.TABLE} is not partitioned: run `interactionlog partition-convert` to convert it"
            )
        layout = await partitions.read_layout(conn)
        interval = await partitions.recorded_interval(conn)
    if not layout.partitions:
        return f"{partitions.TABLE} is partitioned by {interval}, with only its default partition so far"
    runs = _runs_by_width(layout.partitions)
    if len(runs) == 1 and runs[0][0] == interval:
        return (
            f"{partitions.TABLE} is partitioned by {interval}: {len(layout.partitions)} partitions from "
            f"{layout.partitions[0].lower:%Y-%m-%d} to {layout.partitions[-1].upper:%Y-%m-%d}, and a default "
            "partition"
        )
    # The interval changed (migrate --partition-interval): the partitions made before keep their width, and the
    # new one applies from the end of the last partition of another width on.
    since = max(run[-1].upper for width, run in runs if width != interval)
    described = ", ".join(
        f"{len(run)} {_WIDTH_WORDS[width]} from {run[0].lower:%Y-%m-%d} to {run[-1].upper:%Y-%m-%d}"
        for width, run in runs
    )
    return (
        f"{partitions.TABLE} is partitioned by {interval} from {since:%Y-%m-%d} on; its partitions so far: "
        f"{described}, and a default partition"
    )


_WIDTH_WORDS = {"day": "daily", "month": "monthly", "other": "of another width"}


def _runs_by_width(ordered: Sequence[Partition]) -> list[tuple[str, list[Partition]]]:
    """Consecutive partitions of the same width ("day", "month" or "other"), as (width, partitions) in order."""
    runs: list[tuple[str, list[Partition]]] = []
    for partition in ordered:
        lower, upper = partition.lower, partition.upper
        fits = [name for name in partitions.INTERVALS if partitions.next_boundary(lower, name) == upper]
        width = fits[0] if fits else "other"
        if runs and runs[-1][0] == width:
            runs[-1][1].append(partition)
        else:
            runs.append((width, [partition]))
    return runs
