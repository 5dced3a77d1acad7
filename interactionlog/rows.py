"""One row of `interaction_logs`: its columns, its shape built from a validated record, and the idempotent INSERT.

Shared by the worker, which stores rows read from the stream, and the `postgresql://` transport, which stores
them straight from the publisher and bypasses the stream, so both paths write the same columns the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from psycopg import sql

from .record import Interaction

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

# One row, skipped when (mcp_id, interaction_id) is stored already: a record published twice is stored once.
INSERT_ROW = sql.SQL(
    "INSERT INTO interaction_logs ({}) VALUES ({}) ON CONFLICT (mcp_id, interaction_id) DO NOTHING"
).format(
    sql.SQL(", ").join(sql.Identifier(name) for name in COLUMNS),
    sql.SQL(", ").join(sql.Placeholder() * len(COLUMNS)),
)


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
