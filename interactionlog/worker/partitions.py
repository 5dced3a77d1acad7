"""`interaction_logs` partitioned by range on "timestamp": the layout, its bounds, creating a partition, and
switching a plain table to the layout.

The layout. The parent `interaction_logs` (`PARTITION BY RANGE ("timestamp")`) stores nothing itself. Its
partitions are one UTC day or one UTC calendar month wide, named after their lower bound
(`interaction_logs_p20261101`), and `interaction_logs_default` takes every row no partition covers: a record
older than the partitions, or further ahead than they reach. So a row never lacks a partition, and is never
refused (or dead-lettered) for want of one. PostgreSQL requires a unique key of a partitioned table to include
the partition key: the idempotency key is (mcp_id, interaction_id, "timestamp") and the primary key
(id, "timestamp"). A record's timestamp never changes between deliveries, so the key still stores it once.

The interval (day or month) is recorded in `interactionlog_partitioning` when the layout is made, and changed
by `migrate --partition-interval`; a change applies from the end of the partitions already created.

Everything here runs inside the caller's transaction: the caller takes the locks' time into account (see
`partition_maintenance` for the lease and the lock timeout).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import psycopg
import structlog
from psycopg import sql

from ..errors import PartitioningError

log = structlog.get_logger(__name__)

TABLE = "interaction_logs"
DEFAULT_PARTITION = f"{TABLE}_default"
# The plain table of earlier versions, renamed while its rows move into the partitioned one (`conversion`).
UNPARTITIONED = f"{TABLE}_unpartitioned"
CONFLICT_COLUMNS = ("mcp_id", "interaction_id", "timestamp")

Interval = Literal["day", "month"]
INTERVALS: tuple[Interval, ...] = get_args(Interval)
DEFAULT_INTERVAL: Interval = "month"

# Bounds are datetimes; these two stand for MINVALUE and MAXVALUE (a partition open on that side).
MIN_BOUND = datetime.min.replace(tzinfo=UTC)
MAX_BOUND = datetime.max.replace(tzinfo=UTC)

CONFIG_TABLE_DDL = """
    CREATE TABLE IF NOT EXISTS interactionlog_partitioning (
        table_name         TEXT        PRIMARY KEY,
        partition_interval TEXT        NOT NULL CHECK (partition_interval IN ('day', 'month')),
        updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
    )
"""

# One row per partition of interaction_logs: its bounds as PostgreSQL prints them (in this session's time
# zone) cast back to timestamptz, NULL for MINVALUE/MAXVALUE, and the planner's estimate of its rows (NULL
# until it has been analysed).
_PARTITIONS = """
    SELECT c.relname, bound = 'DEFAULT',
           (regexp_match(bound, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz,
           (regexp_match(bound, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz,
           CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS bound
    WHERE i.inhparent = to_regclass(%s)
"""


@dataclass(frozen=True, order=True)
class Partition:
    """One range partition: rows with lower <= "timestamp" < upper; `rows` is PostgreSQL's estimate (None until
    the partition has been analysed)."""

    lower: datetime
    upper: datetime
    name: str
    rows: int | None = None


@dataclass(frozen=True)
class Layout:
    """What `interaction_logs` is now: its range partitions (by lower bound) and whether a default exists."""

    partitions: tuple[Partition, ...]
    has_default: bool

    def taken(self) -> list[tuple[datetime, datetime]]:
        """The ranges the partitions cover, in order."""
        return [(partition.lower, partition.upper) for partition in self.partitions]


# --- bounds ---


def floor_instant(moment: datetime, interval: Interval) -> datetime:
    """The start (UTC) of the day or month holding `moment`."""
    moment = moment.astimezone(UTC)
    if interval == "day":
        return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_boundary(moment: datetime, interval: Interval) -> datetime:
    """The first day or month start after `moment`; MAX_BOUND past the last one Python can represent."""
    start = floor_instant(moment, interval)
    try:
        if interval == "day":
            return start + timedelta(days=1)
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    except (OverflowError, ValueError):
        return MAX_BOUND


def free_ranges(
    start: datetime, end: datetime, taken: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) that no range in `taken` (sorted by lower bound) covers."""
    free = []
    cursor = start
    for lower, upper in taken:
        if upper <= cursor:
            continue
        if lower >= end:
            break
        if lower > cursor:
            free.append((cursor, lower))
        cursor = upper
        if cursor >= end:
            return free
    if cursor < end:
        free.append((cursor, end))
    return free


def interval_free_range(moment: datetime, interval: Interval, layout: Layout) -> tuple[datetime, datetime] | None:
    """The uncovered part of `moment`'s day or month that holds `moment` (None when a partition covers it)."""
    for lower, upper in free_ranges(floor_instant(moment, interval), next_boundary(moment, interval), layout.taken()):
        if lower <= moment < upper:
            return lower, upper
    return None


def partition_name(lower: datetime) -> str:
    """`interaction_logs_p20261101`, with `_hhmmss` when the bound is not a midnight, `_pmin` for MINVALUE."""
    if lower == MIN_BOUND:
        return f"{TABLE}_pmin"
    suffix = "" if lower.time() == datetime.min.time() else f"_{lower:%H%M%S}"
    return f"{TABLE}_p{lower:%Y%m%d}{suffix}"


def _bound(value: datetime) -> sql.Composable:
    if value == MIN_BOUND:
        return sql.SQL("MINVALUE")
    if value == MAX_BOUND:
        return sql.SQL("MAXVALUE")
    return sql.Literal(value)


def _within(lower: datetime, upper: datetime) -> sql.Composable:
    """The condition "timestamp" in [lower, upper), leaving out an open side."""
    conditions: list[sql.Composable] = [sql.SQL("TRUE")]
    if lower != MIN_BOUND:
        conditions.append(sql.SQL('"timestamp" >= {}').format(sql.Literal(lower)))
    if upper != MAX_BOUND:
        conditions.append(sql.SQL('"timestamp" < {}').format(sql.Literal(upper)))
    return sql.SQL(" AND ").join(conditions)


# --- reading the layout ---


async def table_kind(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """'partitioned', 'plain', or None when interaction_logs does not exist."""
    cursor = await conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (TABLE,))
    row = await cursor.fetchone()
    if row is None:
        return None
    return "partitioned" if row[0] == "p" else "plain"


async def read_layout(conn: psycopg.AsyncConnection[Any]) -> Layout:
    """The partitions of interaction_logs, as the catalog has them now."""
    partitions, has_default = [], False
    cursor = await conn.execute(_PARTITIONS, (TABLE,))
    for name, is_default, lower, upper, rows in await cursor.fetchall():
        if is_default:
            has_default = True
        else:
            partitions.append(Partition(lower or MIN_BOUND, upper or MAX_BOUND, name, rows))
    return Layout(tuple(sorted(partitions)), has_default)


async def recorded_interval(conn: psycopg.AsyncConnection[Any]) -> Interval:
    """The interval recorded for interaction_logs; DEFAULT_INTERVAL when none is."""
    cursor = await conn.execute(
        "SELECT partition_interval FROM interactionlog_partitioning WHERE table_name = %s", (TABLE,)
    )
    row = await cursor.fetchone()
    return DEFAULT_INTERVAL if row is None else row[0]


async def record_interval(conn: psycopg.AsyncConnection[Any], interval: Interval, *, replace: bool) -> Interval:
    """Record `interval` (changing a recorded one only when `replace`); returns the interval now in force."""
    if replace:
        await conn.execute(
            "INSERT INTO interactionlog_partitioning (table_name, partition_interval) VALUES (%s, %s)"
            " ON CONFLICT (table_name) DO UPDATE SET partition_interval = EXCLUDED.partition_interval,"
            " updated_at = now() WHERE interactionlog_partitioning.partition_interval <> EXCLUDED.partition_interval",
            (TABLE, interval),
        )
    else:
        await conn.execute(
            "INSERT INTO interactionlog_partitioning (table_name, partition_interval) VALUES (%s, %s)"
            " ON CONFLICT (table_name) DO NOTHING",
            (TABLE, interval),
        )
    return await recorded_interval(conn)


# --- changing the layout ---


async def create_default_partition(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create interaction_logs_default, where rows no range partition covers land."""
    await conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
            sql.Identifier(DEFAULT_PARTITION), sql.Identifier(TABLE)
        )
    )


async def create_partition(conn: psycopg.AsyncConnection[Any], lower: datetime, upper: datetime) -> tuple[str, int]:
    """Create the partition for [lower, upper), moving into it the rows of the default partition in that range;
    returns its name and the rows moved.

    PostgreSQL refuses a new partition while the default partition holds rows of its range, so those rows
    leave the default and come back through the parent within this transaction, under an ACCESS EXCLUSIVE lock
    on the parent that holds new inserts back meanwhile (each waits, none fails). The default partition only
    holds strays, so this is quick.
    """
    name = partition_name(lower)
    parent, default = sql.Identifier(TABLE), sql.Identifier(DEFAULT_PARTITION)
    await conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(parent))
    within = _within(lower, upper)
    moved = 0
    if (await read_layout(conn)).has_default:
        cursor = await conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(default, within))
        row = await cursor.fetchone()
        moved = int(row[0]) if row else 0
    if moved:
        await conn.execute(
            sql.SQL("CREATE TEMPORARY TABLE interactionlog_strays (LIKE {}) ON COMMIT DROP").format(parent)
        )
        await conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE {} RETURNING *)"
                " INSERT INTO interactionlog_strays SELECT * FROM moved"
            ).format(default, within)
        )
    await conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(name), parent, _bound(lower), _bound(upper)
        )
    )
    if moved:
        await conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM interactionlog_strays").format(parent))
        await conn.execute("DROP TABLE interactionlog_strays")
    return name, moved


async def drop_partition(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """Drop one partition, its rows with it: a catalog change, whatever its size (never a row-by-row DELETE)."""
    await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


@dataclass(frozen=True)
class _Index:
    name: str
    definition: str
    unique: bool
    constraint: str | None  # 'p' primary key, 'u' unique, 'x' exclusion, None: a plain index


async def switch_to_partitioned(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """Turn interaction_logs into the partitioned layout, in the caller's transaction.

    The plain table becomes `interaction_logs_unpartitioned` (its indexes, constraints and sequence renamed out
    of the way) and a partitioned `interaction_logs` takes its name, with the same columns, defaults, CHECK
    constraints, indexes (same names), owner and privileges, a default partition, and ids continuing after the
    old ones. The caller moves the rows (`conversion`) or drops the empty old table. Takes an ACCESS EXCLUSIVE
    lock on the plain table: run it with a lock timeout. Returns PostgreSQL's estimate of the rows left in the old
    table (None before it was ever analysed), for the caller's log. Raises PartitioningError when the plain table
    has a unique index or constraint PostgreSQL cannot carry over (one without "timestamp", other than ours).
    """
    old, parent = sql.Identifier(UNPARTITIONED), sql.Identifier(TABLE)
    await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(parent))
    indexes = await _indexes(conn)
    refused = [
        index.name
        for index in indexes
        if (index.unique or index.constraint == "x") and index.constraint != "p" and index.name != f"{TABLE}_identity"
    ]
    if refused:
        raise PartitioningError(
            f'{TABLE} has unique indexes or constraints without "timestamp" ({", ".join(refused)}): PostgreSQL '
            'cannot enforce them on a partitioned table; drop them or add "timestamp" to them, then run again'
        )
    # Nothing here reads the whole table: the lock holds the workers' inserts until this transaction ends.
    cursor = await conn.execute(
        "SELECT pg_get_serial_sequence(%s, 'id'), relowner::regrole::text, reltuples::bigint FROM pg_class"
        " WHERE oid = to_regclass(%s)",
        (TABLE, TABLE),
    )
    sequence, owner, estimated_rows = await _one(cursor)
    cursor = await conn.execute(sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(parent))
    (next_id,) = await _one(cursor)
    if sequence:
        cursor = await conn.execute(sql.SQL("SELECT last_value + 1 FROM {}").format(sql.SQL(sequence)))
        next_id = max(next_id, (await _one(cursor))[0])
    cursor = await conn.execute(
        "SELECT grantee::regrole::text, privilege_type, is_grantable FROM pg_class, aclexplode(relacl)"
        " WHERE oid = to_regclass(%s) AND grantee <> 0 AND grantee <> relowner",
        (TABLE,),
    )
    grants = await cursor.fetchall()

    await conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(parent, old))
    for number, index in enumerate(indexes):
        await conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(index.name), sql.Identifier(f"{UNPARTITIONED}_{number}")
            )
        )
    if sequence:
        await conn.execute(
            sql.SQL("ALTER SEQUENCE {} RENAME TO {}").format(
                sql.SQL(sequence), sql.Identifier(f"{UNPARTITIONED}_id_seq")
            )
        )
    await conn.execute(
        sql.SQL('CREATE TABLE {} (LIKE {} INCLUDING ALL EXCLUDING INDEXES) PARTITION BY RANGE ("timestamp")').format(
            parent, old
        )
    )
    await conn.execute(
        sql.SQL('ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY (id, "timestamp"), ADD CONSTRAINT {} UNIQUE ({})').format(
            parent,
            sql.Identifier(f"{TABLE}_pkey"),
            sql.Identifier(f"{TABLE}_identity"),
            sql.SQL(", ").join(sql.Identifier(column) for column in CONFLICT_COLUMNS),
        )
    )
    if sequence:
        await conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN id RESTART WITH {}").format(parent, next_id))
    for index in indexes:
        if index.constraint is None and not index.unique:
            await conn.execute(index.definition.encode())  # as defined, name included: it names the new table now
    await create_default_partition(conn)
    cursor = await conn.execute("SELECT current_user::regrole::text")
    if (await _one(cursor))[0] != owner:  # regrole text is quoted as an identifier already
        await conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(parent, sql.SQL(owner)))
    for grantee, privilege, grantable in grants:
        await conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), parent, sql.SQL(grantee), sql.SQL(" WITH GRANT OPTION" if grantable else "")
            )
        )
    # reltuples is -1 until the first VACUUM or ANALYZE: the estimate is then unknown, not negative.
    return int(estimated_rows) if estimated_rows is not None and estimated_rows >= 0 else None


async def _indexes(conn: psycopg.AsyncConnection[Any]) -> list[_Index]:
    cursor = await conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique, con.contype::text"
        " FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
        " LEFT JOIN pg_constraint AS con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid"
        " WHERE i.indrelid = to_regclass(%s) ORDER BY c.relname",
        (TABLE,),
    )
    return [_Index(*row) for row in await cursor.fetchall()]


async def _one(cursor: psycopg.AsyncCursor[Any]) -> Any:
    row = await cursor.fetchone()
    if row is None:
        raise PartitioningError(f"{TABLE} vanished while being partitioned")
    return row


async def partition_new_install(conn: psycopg.AsyncConnection[Any]) -> None:
    """Migration 4: switch an empty plain interaction_logs to the partitioned layout; leave a populated one as it
    is (no index built under a lock: the workers' `ON CONFLICT DO NOTHING` names no key, so the old key
    (mcp_id, interaction_id) keeps working until `partition-convert`)."""
    if await table_kind(conn) != "plain":
        return
    cursor = await conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(TABLE)))
    if not (await _one(cursor))[0]:
        await switch_to_partitioned(conn)
        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(UNPARTITIONED)))
        log.info("table_partitioned", table=TABLE)  # it was empty: nothing is left behind to convert
        return
    log.warning(
        "table_not_partitioned",
        table=TABLE,
        hint="it holds rows of an earlier version: run `interactionlog partition-convert` to convert it online",
    )
