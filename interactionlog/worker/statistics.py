"""Fresh planner statistics for the partitions being written: a partition of `interaction_logs` is ANALYZEd once
the rows changed since its last analysis pass a share of it, checked every few seconds, instead of waiting for
autovacuum.

Why: the dedupe window's query (`rows.stored_copies`) must probe each partition's unique index (mcp_id,
interaction_id, "timestamp"). On a partition PostgreSQL holds no statistics for yet (a new install, and every new
day or month), the planner takes the query index (mcp_id, "timestamp") instead, which reads every row of the MCP
within the window for each row probed: measured from 24 to 160 ms per 1000-row batch as a fresh partition filled,
and 5 to 7 ms once it was analysed, half the worker's drain rate over a whole drain. Autovacuum analyses only
after its naptime (60 s by default) and on its own thresholds, so every busy new partition ran slow for a minute
or more.

The rule is autovacuum's (changes since the last analysis over a threshold plus a share of the rows, read from
`pg_stat_user_tables`) with a lower threshold and a shorter period. One worker at a time does it (a
transaction-scoped advisory lock); on a table that is not partitioned (an earlier version's) there is nothing to
do, autovacuum keeps that one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg import sql

from ..retry import periodically
from ..settings import Settings

log = structlog.get_logger(__name__)

INTERVAL_S = 1.0  # the slow phase lasts until the first analysis: a second of it, not autovacuum's minute
THRESHOLD_ROWS = 1000  # autovacuum_analyze_threshold is 50, but its naptime makes it late: see the docstring
SCALE_FACTOR = 0.1  # autovacuum_analyze_scale_factor's default
CONNECT_TIMEOUT_S = 10
LOCK = "interactionlog_statistics"
PROBING_GRACE_S = 30.0  # rounds go on this long after the last probed row (see keep_statistics)

# Partitions of interaction_logs whose changes since their last analysis pass the rule, by schema and name.
_STALE = """
    SELECT s.schemaname, s.relname
    FROM pg_stat_user_tables AS s
    JOIN pg_inherits AS i ON i.inhrelid = s.relid
    JOIN pg_class AS c ON c.oid = s.relid
    WHERE i.inhparent = to_regclass('interaction_logs')
      AND s.n_mod_since_analyze > %s + %s * greatest(c.reltuples, 0)
    ORDER BY s.n_mod_since_analyze DESC
"""


async def analyze_stale_partitions(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """ANALYZE every partition of interaction_logs that the rule finds stale, in one transaction; returns their
    names. Empty when another worker holds the lock, or when nothing is stale. Raises psycopg.Error."""
    async with conn.transaction():
        cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (LOCK,))
        locked = await cursor.fetchone()
        if locked is None or not locked[0]:
            return []
        cursor = await conn.execute(_STALE, (THRESHOLD_ROWS, SCALE_FACTOR))
        stale = [(str(schema), str(name)) for schema, name in await cursor.fetchall()]
        for schema, name in stale:
            await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
    for _, name in stale:
        log.debug("partition_analyzed", partition=name)
    return [name for _, name in stale]


async def analyze_round(database_url: str) -> list[str]:
    """One round on a connection of its own (see `analyze_stale_partitions`)."""
    connecting = psycopg.AsyncConnection.connect(database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
    async with await connecting as conn:
        return await analyze_stale_partitions(conn)


async def keep_statistics(
    settings: Settings,
    stopping: asyncio.Event,
    interval_s: float = INTERVAL_S,
    probed_rows: Callable[[], int] | None = None,
) -> None:
    """A round every `interval_s` until `stopping` is set, on one connection kept between rounds (a check is a
    catalog query; a new connection each second would cost more than it); a failing round is logged once, the
    connection dropped, and the next round connects again.

    With `probed_rows`, a round runs only while `probed_rows()` (the rows this worker stored through the dedupe
    window's probe so far, `Store.probed_rows`) grew within the last `PROBING_GRACE_S` (PostgreSQL's counts of
    changed rows lag the commits by up to a second or so): the statistics serve the probe's plan,
    and a worker storing only entries of exact identity (`record.IDENTITY_FIELD`) never probes. Each ANALYZE of a
    growing partition cost a drain of such entries some 12 us of PostgreSQL's CPU per row (benchmarks/NOTES.md)."""
    held: list[psycopg.AsyncConnection[Any]] = []
    seen: list[float] = [0, -PROBING_GRACE_S - 1]  # the probed count last seen, and when it last grew

    async def chore() -> None:
        if probed_rows is not None:
            probed = probed_rows()
            if probed != seen[0]:
                seen[:] = [probed, time.monotonic()]
            elif time.monotonic() - seen[1] > PROBING_GRACE_S:
                return
        if not held or held[0].closed:
            held[:] = [await psycopg.AsyncConnection.connect(
                settings.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
            )]  # fmt: skip
        try:
            await analyze_stale_partitions(held[0])
        except (psycopg.Error, OSError):
            await held.pop().close()
            raise

    try:
        await periodically(
            chore, interval_s=interval_s, name="partition_statistics", stopping=stopping,
            expected=(psycopg.Error, OSError),
        )  # fmt: skip
    finally:
        for conn in held:
            await conn.close()
