"""Reading `interaction_logs` for people: the SQL of `tail`, `tail -f`, `stats` and `show`.

Every query filters on indexed columns and ends in an index range scan on "timestamp" (migration 2), so its cost
follows the rows it returns or the window it covers, never the table's size; `tests/test_query_plans.py` checks
the plans on a generated table of millions of rows.

Errors are records with `is_error: true`; their message is `interactionlog_error_message(data)`, the SQL
function migration 2 creates, which the dashboard uses too.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

TABLE = sql.Identifier("interaction_logs")

_COLUMNS = sql.SQL(
    'id, mcp_id, interaction_id, "timestamp", method, tool, session_id, is_error, duration_ms, '
    "interactionlog_error_message(data) AS error_message, stored_at, data"
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# Rows the worker commits late (a batch whose ids were allotted before a later batch's, committed after it)
# stay above the follower's floor until every transaction that could hold them has ended; see Follower.
NEXTVAL_TO_XID_S = 1.0
# On start, ids this far below the newest are watched for late commits too: a batch in flight at that
# instant is far smaller (at most concurrency x batch_size per worker).
START_WINDOW_IDS = 10_000
# Messages are grouped on their first characters, so one huge or id-laden message cannot make every row unique.
MESSAGE_PREFIX_CHARS = 300


class QueryError(ValueError):
    """A filter or argument a person gave cannot be used; the message says what to give instead."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`1h`, `90s`, `1h30m`, `2d`, `1w` ago (from `now`), or an ISO 8601 time with a zone, as an aware datetime.

    Raises QueryError naming the value and the accepted forms.
    """
    now = now or datetime.now(UTC)
    spec = text.strip().lower()
    if spec and _DURATION.sub("", spec) == "":
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(spec))
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise QueryError(
            f"{text!r} is neither a duration (90s, 15m, 1h, 1h30m, 2d, 1w) nor a time with a zone "
            "(2026-11-30T10:00:00Z)"
        )
    return moment


@dataclass(frozen=True)
class Filters:
    """Which interactions to read; None means "any". `since` bounds "timestamp" from below."""

    mcp_id: str | None = None
    tool: str | None = None
    method: str | None = None
    session_id: str | None = None
    errors_only: bool = False
    since: datetime | None = None

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        """The WHERE conditions (joined by AND, `TRUE` when there are none) and their parameters."""
        conditions: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for column in ("mcp_id", "tool", "method", "session_id"):
            value = getattr(self, column)
            if value is not None:
                conditions.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)))
                params[column] = value
        if self.errors_only:
            conditions.append(sql.SQL("is_error"))
        if self.since is not None:
            conditions.append(sql.SQL('"timestamp" >= %(since)s'))
            params["since"] = self.since
        return (sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("TRUE")), params


@dataclass(frozen=True)
class StoredInteraction:
    """One row of interaction_logs: the columns, the error message, and the whole record as sent (`data`)."""

    id: int
    mcp_id: str
    interaction_id: str
    timestamp: datetime
    method: str | None
    tool: str | None
    session_id: str | None
    is_error: bool | None
    duration_ms: float | None
    error_message: str | None
    stored_at: datetime
    data: dict[str, Any]


# A statement and its parameters: the query functions run these, and the plan tests EXPLAIN the same ones.
Statement = tuple[sql.Composed, dict[str, Any]]


def newest_statement(filters: Filters, limit: int) -> Statement:
    """The `limit` newest matching rows, newest first."""
    where, params = filters.where()
    query = sql.SQL('SELECT {} FROM {} WHERE {} ORDER BY "timestamp" DESC, id DESC LIMIT %(limit)s').format(
        _COLUMNS, TABLE, where
    )
    return query, {**params, "limit": limit}


def find_statement(ident: str, mcp_id: str | None = None) -> Statement:
    """Rows whose interaction_id is `ident`, within `mcp_id` or under any mcp_id (see `find`)."""
    if mcp_id is not None:
        query = sql.SQL("SELECT {} FROM {} WHERE mcp_id = %(mcp_id)s AND interaction_id = %(ident)s")
        return query.format(_COLUMNS, TABLE), {"mcp_id": mcp_id, "ident": ident}
    query = sql.SQL(
        "WITH RECURSIVE mcps(mcp_id) AS ("
        " (SELECT mcp_id FROM {table} ORDER BY mcp_id LIMIT 1)"
        " UNION ALL SELECT (SELECT t.mcp_id FROM {table} t WHERE t.mcp_id > mcps.mcp_id"
        " ORDER BY t.mcp_id LIMIT 1) FROM mcps WHERE mcps.mcp_id IS NOT NULL)"
        " SELECT {columns} FROM {table} WHERE (mcp_id, interaction_id) IN"
        " (SELECT mcp_id, %(ident)s FROM mcps WHERE mcp_id IS NOT NULL) ORDER BY mcp_id"
    )
    return query.format(columns=_COLUMNS, table=TABLE), {"ident": ident}


def follow_statement(filters: Filters, floor: int) -> Statement:
    """Matching rows with an id above `floor`, in id order."""
    where, params = filters.where()
    query = sql.SQL("SELECT {} FROM {} WHERE id > %(floor)s AND {} ORDER BY id").format(_COLUMNS, TABLE, where)
    return query, {**params, "floor": floor}


def stats_statement(filters: Filters) -> Statement:
    """Per (mcp_id, method, tool): calls, errors, and the p50/p95/p99 of duration_ms as one array."""
    where, params = filters.where()
    query = sql.SQL(
        "SELECT mcp_id, method, tool, count(*) AS calls, count(*) FILTER (WHERE is_error) AS errors,"
        " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS percentiles"
        " FROM {} WHERE {} GROUP BY mcp_id, method, tool"
        " ORDER BY calls DESC, mcp_id, method NULLS LAST, tool NULLS LAST"
    ).format(TABLE, where)
    return query, params


def top_errors_statement(filters: Filters, top: int) -> Statement:
    """The `top` most frequent (mcp_id, tool, message) among matching errors, with when each was last seen."""
    where, params = replace(filters, errors_only=True).where()
    query = sql.SQL(
        "SELECT mcp_id, tool, left(interactionlog_error_message(data), %(prefix)s) AS message,"
        ' count(*) AS count, max("timestamp") AS last_seen'
        " FROM {} WHERE {} GROUP BY 1, 2, 3 ORDER BY count DESC, last_seen DESC LIMIT %(top)s"
    ).format(TABLE, where)
    return query, {**params, "prefix": MESSAGE_PREFIX_CHARS, "top": top}


def _run(conn: psycopg.Connection[Any], statement: Statement) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(*statement)
        return cursor.fetchall()


def newest(conn: psycopg.Connection[Any], filters: Filters, limit: int) -> list[StoredInteraction]:
    """The `limit` newest matching interactions by "timestamp" (ties by id), returned oldest first."""
    return [StoredInteraction(**row) for row in _run(conn, newest_statement(filters, limit))][::-1]


def find(conn: psycopg.Connection[Any], ident: str, mcp_id: str | None = None) -> list[StoredInteraction]:
    """Interactions whose interaction_id is `ident` (within `mcp_id` if given), else the row whose id it is.

    Without `mcp_id` the unique (mcp_id, interaction_id) index is probed once per distinct mcp_id, found by a
    loose index scan over (mcp_id, "timestamp"): a handful of index lookups instead of a scan of the table.
    """
    found = [StoredInteraction(**row) for row in _run(conn, find_statement(ident, mcp_id))]
    if found or not ident.isdigit() or mcp_id is not None:
        return found
    by_id = sql.SQL("SELECT {} FROM {} WHERE id = %(id)s").format(_COLUMNS, TABLE)
    return [StoredInteraction(**row) for row in _run(conn, (by_id, {"id": int(ident)}))]


@dataclass
class _Poll:
    at: float  # time.monotonic()
    newest_id: int  # the largest id visible then
    xmax: int  # the first transaction id not yet assigned then


@dataclass
class Follower:
    """`tail -f`: every matching row as it is committed, once, in the order it became visible.

    Ids are allotted when a row is inserted, not when it commits, so a batch can become visible after a later
    batch with larger ids. A cursor on "the largest id seen" would skip it forever. So each poll re-reads the
    ids above a floor and skips those already shown, and the floor only rises to an id N once every
    transaction that may still hold an id below N has ended: N was visible at a poll k, every transaction that
    took an id below N did so before k and had its transaction id assigned (which follows within microseconds,
    bounded here by NEXTVAL_TO_XID_S) before a poll k' whose snapshot xmax is X; once the current snapshot's
    xmin passes X, all of them have committed or rolled back. A transaction left open for long (a hung batch
    the worker abandoned) holds the floor back: the window re-read grows, nothing is missed.
    """

    filters: Filters
    settle_s: float = NEXTVAL_TO_XID_S
    floor: int = 0
    shown: set[int] = field(default_factory=set)
    _polls: deque[_Poll] = field(default_factory=deque)

    def start(self, conn: psycopg.Connection[Any]) -> None:
        """Begin at the newest row: rows visible now count as shown; later commits below it are still caught."""
        newest_id, _, xmax = self._snapshot(conn)
        self.floor = max(newest_id - START_WINDOW_IDS, 0)
        with conn.cursor() as cursor:
            cursor.execute(sql.SQL("SELECT id FROM {} WHERE id > %s").format(TABLE), (self.floor,))
            self.shown = {row_id for (row_id,) in cursor.fetchall()}
        self._polls.append(_Poll(time.monotonic(), newest_id, xmax))

    def mark_shown(self, rows: Sequence[StoredInteraction]) -> None:
        """Count `rows` (printed by other means, e.g. the listing before following) as shown already."""
        self.shown.update(row.id for row in rows if row.id > self.floor)

    def poll(self, conn: psycopg.Connection[Any]) -> list[StoredInteraction]:
        """Rows committed since the last poll that match the filters, in id order."""
        newest_id, xmin, xmax = self._snapshot(conn)
        self._polls.append(_Poll(time.monotonic(), newest_id, xmax))
        # Read before raising the floor: this read's snapshot is later than the xmin just taken, so it sees
        # every row of the transactions the floor is about to pass.
        rows = _run(conn, follow_statement(self.filters, self.floor))
        fresh = [StoredInteraction(**row) for row in rows if row["id"] not in self.shown]
        self.shown.update(row.id for row in fresh)
        self._raise_floor(xmin)
        return fresh

    def _raise_floor(self, xmin: int) -> None:
        polls = list(self._polls)
        settled = 0
        for index, poll in enumerate(polls):
            later = next((p for p in polls[index + 1 :] if p.at >= poll.at + self.settle_s), None)
            if later is None or xmin < later.xmax:
                break
            settled = index + 1
            self.floor = max(self.floor, poll.newest_id)
        for _ in range(settled):
            self._polls.popleft()
        self.shown = {row_id for row_id in self.shown if row_id > self.floor}

    @staticmethod
    def _snapshot(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
        """(largest visible id, snapshot xmin, snapshot xmax), from one statement's snapshot."""
        with conn.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "SELECT (SELECT coalesce(max(id), 0) FROM {}),"
                    " pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
                    " pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                ).format(TABLE)
            )
            row = cursor.fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])


@dataclass(frozen=True)
class ToolStats:
    """Calls of one (mcp_id, method, tool) in the window; percentiles over the calls that carry duration_ms."""

    mcp_id: str
    method: str | None
    tool: str | None
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        """Errors per call, 0 to 1."""
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class TopError:
    """One error message of one (mcp_id, tool), how often it occurred in the window and when it last did."""

    mcp_id: str
    tool: str | None
    message: str | None
    count: int
    last_seen: datetime


@dataclass(frozen=True)
class Stats:
    """What `stats` prints: per-tool figures and the most frequent errors, over [since, until]."""

    since: datetime
    until: datetime
    tools: Sequence[ToolStats]
    top_errors: Sequence[TopError]


def stats(conn: psycopg.Connection[Any], filters: Filters, top_errors: int = 5) -> Stats:
    """Calls, errors and duration percentiles per (mcp_id, method, tool), and the top errors, since filters.since.

    Raises QueryError when `filters.since` is missing: a window keeps the query bounded.
    """
    if filters.since is None:
        raise QueryError("stats needs a window (since)")
    tools = [
        ToolStats(
            mcp_id=row["mcp_id"],
            method=row["method"],
            tool=row["tool"],
            calls=row["calls"],
            errors=row["errors"],
            **dict(zip(("p50_ms", "p95_ms", "p99_ms"), row["percentiles"] or (None, None, None), strict=True)),
        )
        for row in _run(conn, stats_statement(filters))
    ]
    errors = [TopError(**row) for row in _run(conn, top_errors_statement(filters, top_errors))]
    return Stats(since=filters.since, until=datetime.now(UTC), tools=tools, top_errors=errors)


def follow(
    conn: psycopg.Connection[Any],
    follower: Follower,
    *,
    reconnect: Callable[[], psycopg.Connection[Any]],
    interval_s: float,
    on_unavailable: Callable[[psycopg.OperationalError], None],
    between_polls: Callable[[], None] = lambda: None,
) -> Iterator[StoredInteraction]:
    """Poll `follower` on `conn` forever, yielding rows as they are committed; `between_polls` may raise to stop.

    When PostgreSQL goes away, `on_unavailable` hears of it once per outage and `reconnect` is tried every
    `interval_s` (at least a second); the follower keeps its place, so rows committed meanwhile are not missed.
    """
    current: psycopg.Connection[Any] | None = conn
    unavailable = False
    while True:
        try:
            if current is None:
                current = reconnect()
            yield from follower.poll(current)
            unavailable = False
        except psycopg.OperationalError as error:
            if not unavailable:
                on_unavailable(error)
            unavailable = True
            if current is not None:
                current.close()
            current = None
        between_polls()
        time.sleep(max(interval_s, 1.0) if unavailable else interval_s)
