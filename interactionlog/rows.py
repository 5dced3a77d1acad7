"""One row of `interaction_logs`: its columns, its shape built from a validated record, and the idempotent INSERT
with the identity rule (which rows are copies of one record).

Shared by the worker, which stores rows read from the stream, and the `postgresql://` transport, which stores
them straight from the publisher and bypasses the stream, so both paths write the same columns the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from psycopg import sql

from .record import Interaction
from .settings import DEFAULT_DEDUPE_WINDOW_HOURS

TABLE = "interaction_logs"


class StoredRow(NamedTuple):
    """A validated record, shaped as one row of the `interaction_logs` table."""

    mcp_id: str
    interaction_id: str
    timestamp: datetime
    method: str | None
    tool: str | None
    session_id: str | None
    is_error: bool | None
    duration_ms: float | None
    trace_id: str | None
    data: str
    stream_entry_id: str


COLUMNS = StoredRow._fields

# The SQL type of each column, in COLUMNS order: a one-row VALUES list casts to them, a binary COPY sends them.
COLUMN_TYPES = (
    "text",
    "text",
    "timestamptz",
    "text",
    "text",
    "text",
    "boolean",
    "double precision",
    "text",
    "jsonb",
    "text",
)


def insert_rows_from(source: sql.Composable, dedupe_window_hours: float, *, spared: bool = False) -> sql.Composed:
    """`INSERT INTO interaction_logs ... SELECT ... FROM source AS s`, storing each record once.

    `source` is a relation or a parenthesised subquery with the COLUMNS. The identity rule (README "Idempotency"):
    - a row whose (mcp_id, interaction_id, "timestamp") is stored already is skipped by the unique index (a
      redelivery of the same entry): `ON CONFLICT DO NOTHING`, without a target so that it also covers the key
      (mcp_id, interaction_id) of a table of an earlier version, not yet converted to partitions;
    - a row whose (mcp_id, interaction_id) is stored already with a "timestamp" within `dedupe_window_hours`
      either side of its own is skipped as a copy (a record published again, stamped again): the NOT EXISTS
      probe. PostgreSQL requires the partition key in every unique index, so no index can say this alone. The
      probe's range on "timestamp" lets run-time partition pruning limit it to the partitions of the window,
      then it is one probe of the unique index. OFFSET 0 keeps it a per-row subplan: pulled up into an anti-join,
      the planner may hash the whole table instead. 0 hours leaves exact copies only, with no probe.
    The probe sees what was committed before the statement began: two copies in the same statement, or in
    batches committing at the same time, are not seen; `first_copies` handles the first case, `LOCK_COPY_KEYS`
    the second (every caller takes it first for the rows of inexact identity). With `spared`, the statement
    takes one parameter, the `stream_entry_id`s of the rows of exact identity (`record.IDENTITY_FIELD`), which
    the unique index alone decides on.
    """
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in COLUMNS)
    selected = sql.SQL(", ").join(sql.Identifier("s", name) for name in COLUMNS)
    probe = copy_probe(dedupe_window_hours)
    if spared and dedupe_window_hours > 0:  # rows of exact identity (their entry ids, a text[]) skip the probe
        probe = sql.SQL(" WHERE s.stream_entry_id = ANY(%s::text[]) OR NOT {}").format(
            _stored_copy_of_s(dedupe_window_hours)
        )
    return sql.SQL("INSERT INTO interaction_logs ({}) SELECT {} FROM {} AS s{} ON CONFLICT DO NOTHING").format(
        columns, selected, source, probe
    )


def copy_probe(dedupe_window_hours: float) -> sql.Composable:
    """The WHERE clause of `insert_rows_from` keeping a row `s` only when interaction_logs holds no copy of it
    within the window; empty for 0 hours."""
    if dedupe_window_hours <= 0:
        return sql.SQL("")
    return sql.SQL(" WHERE NOT {}").format(_stored_copy_of_s(dedupe_window_hours))


def _stored_copy_of_s(dedupe_window_hours: float) -> sql.Composable:
    """`EXISTS (...)`: interaction_logs holds a row with the (mcp_id, interaction_id) of the row `s` and a
    "timestamp" within the window either side of its own (the identity rule; see `insert_rows_from`)."""
    return sql.SQL(
        "EXISTS (SELECT FROM interaction_logs AS t WHERE t.mcp_id = s.mcp_id"
        " AND t.interaction_id = s.interaction_id"
        ' AND t."timestamp" BETWEEN s."timestamp" - {window} AND s."timestamp" + {window} OFFSET 0)'
    ).format(window=sql.Literal(timedelta(hours=dedupe_window_hours)))


def stored_copies(dedupe_window_hours: float) -> sql.Composed:
    """`SELECT position FROM ...`: the 1-based positions of the rows of a batch, given as three array parameters
    (mcp_ids, interaction_ids, timestamps), of which interaction_logs already holds a copy by the identity rule.

    The worker's path for a window over 0 hours: one such query, then a COPY straight into the table of the
    rows it did not name, instead of staging every batch for an `insert_rows_from` (the same rule, and the same
    probe per row, without writing every row twice: README "What it costs"). An exact copy committed between the
    query and the COPY fails the COPY on the unique index, and the batch then takes the staging path.
    """
    return sql.SQL(
        "SELECT s.position FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) WITH ORDINALITY"
        ' AS s (mcp_id, interaction_id, "timestamp", position) WHERE {}'
    ).format(_stored_copy_of_s(dedupe_window_hours))


def insert_one_row(dedupe_window_hours: float) -> sql.Composed:
    """`insert_rows_from` for one row given as COLUMNS' parameters (positional, in COLUMNS order)."""
    values = sql.SQL("(VALUES ({})) AS v ({})").format(
        sql.SQL(", ").join(sql.SQL("%s::" + kind) for kind in COLUMN_TYPES),
        sql.SQL(", ").join(sql.Identifier(name) for name in COLUMNS),
    )
    return insert_rows_from(sql.SQL("(SELECT * FROM {})").format(values), dedupe_window_hours)


# One row, stored once by the identity rule of `insert_rows_from` with the default window.
INSERT_ROW = insert_one_row(DEFAULT_DEDUPE_WINDOW_HOURS)


def first_copies(rows: Sequence[StoredRow], exact: Sequence[bool], dedupe_window_hours: float) -> list[int]:
    """The positions of `rows` that are not copies of another of them, in order: a row that may have been stamped
    again (`exact` False) is a copy when a row of exact identity, or an earlier kept row, has its (mcp_id,
    interaction_id) with a timestamp within `dedupe_window_hours` either side. The rule of `insert_rows_from`,
    which cannot see the rows of its own statement. O(len(rows)). Rows of exact identity are all kept (the
    unique index decides), and so is every row with 0 hours."""
    if dedupe_window_hours <= 0 or all(exact):
        return list(range(len(rows)))
    window = timedelta(hours=dedupe_window_hours)
    kept_at: dict[tuple[str, str], list[datetime]] = {}
    for row, exact_row in zip(rows, exact, strict=True):
        if exact_row:  # first, so that a stamped copy is dropped in their favour wherever it stands
            kept_at.setdefault((row.mcp_id, row.interaction_id), []).append(row.timestamp)
    kept: list[int] = []
    for position, (row, exact_row) in enumerate(zip(rows, exact, strict=True)):
        if not exact_row:
            times = kept_at.setdefault((row.mcp_id, row.interaction_id), [])
            if any(abs(row.timestamp - moment) <= window for moment in times):
                continue
            times.append(row.timestamp)
        kept.append(position)
    return kept


# The advisory-lock namespace of `LOCK_COPY_KEYS` (the two-int form; "ILOG"), apart from an application's own.
COPY_LOCK_NAMESPACE = 0x494C4F47

# Serialises, per MCP, the transactions that store rows the dedupe window's probe decides on (one text[] parameter
# of their mcp_ids), taken first in each such transaction. The probe sees what was committed when its statement
# began, so without it two batches each holding one copy of a record stamped twice, storing at the same moment,
# both find nothing and both store it. Under this lock the second one's probe (a later statement, a fresh
# snapshot at READ COMMITTED) sees the first one's commit. One lock per MCP, not per record: a batch of 1,000
# records takes a handful, where per-record locks could fill PostgreSQL's shared lock table
# (max_locks_per_transaction x max_connections). Taken in hash order, so two batches never wait on each other
# in a cycle. Released at commit or rollback (pg_advisory_xact_lock, PostgreSQL manual 9.28.10).
LOCK_COPY_KEYS = sql.SQL(
    "SELECT pg_advisory_xact_lock({}, s.key) FROM"
    " (SELECT DISTINCT hashtext(m) AS key FROM unnest(%s::text[]) AS m ORDER BY 1) AS s"
).format(sql.Literal(COPY_LOCK_NAMESPACE))


def row_of(record: Interaction, data: str, stream_entry_id: str) -> StoredRow:
    """The row storing `record`, whose JSON text is `data` (stored as sent), from entry `stream_entry_id`."""
    return StoredRow(
        record.mcp_id,
        record.interaction_id,
        record.timestamp,
        record.method,
        record.tool,
        record.session_id,
        record.is_error,
        record.duration_ms,
        record.trace_id,
        data,
        stream_entry_id,
    )
