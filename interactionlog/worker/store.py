"""The PostgreSQL sink: versioned schema migrations and idempotent batch persistence.

A batch is stored in one transaction by the identity rule of `rows.insert_rows_from`: a row is skipped when
interaction_logs holds the same (mcp_id, interaction_id, "timestamp") (a redelivery), or the same (mcp_id,
interaction_id) within the dedupe window (a record published again, stamped again). In steady state one query
(`rows.stored_copies`) names the rows of the batch already stored, and the rest is COPYed straight into
`interaction_logs`, the work of a bare bulk load plus one index probe per row; with a window of 0 there is no
query, the unique index alone decides. Only when that COPY fails on the unique index (an exact copy committed by
another worker meanwhile, or a redelivery with a window of 0) does the batch take the staging path: COPY into a
temporary table created inside the transaction, then one `INSERT ... SELECT` with the same rule. Either way a
record is stored once. Nothing lives longer than a transaction on a server connection (no session temporary
table, no server-side prepared statement), so PgBouncer in transaction pooling mode works as well as a direct
connection.

PostgreSQL's refusals come in two kinds, told apart by SQLSTATE class (`classify`):
- *per row*: the row itself is refused (a data exception, a constraint, an operator's trigger raising, ... any
  class not listed below). The batch is retried row by row under savepoints, so only the refused rows are
  dead-lettered, with PostgreSQL's message, and their batch-mates are stored.
- *systemic*: every row would be refused (a missing table or column, a permission, a read-only database: classes
  0A, 25, 26, 28, 2D, 34, 3D, 3F, 42, F0). Never dead-lettered: `DatabaseRefusedError`, retried, said once at error
  level with what to do, and the worker is not ready (/readyz 503) until a batch goes through.
Connection loss and server trouble (08, 40, 53, 55, 57, 58, XX) are outages: `DatabaseUnavailableError`, retried.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import psycopg
import psycopg.errors
import structlog
from psycopg import sql
from psycopg.types.json import JsonbBinaryDumper
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import AttemptAbandonedError, DatabaseRefusedError, DatabaseUnavailableError
from ..rows import (
    COLUMN_TYPES,
    COLUMNS,
    LOCK_COPY_KEYS,
    TABLE,
    StoredRow,
    first_copies,
    insert_one_row,
    insert_rows_from,
    stored_copies,
)
from ..settings import DEFAULT_DEDUPE_WINDOW_HOURS, with_database_url_hint
from . import partitions
from .partition_maintenance import maintain

log = structlog.get_logger(__name__)

# psycopg's C formatter of one binary COPY row (what `Copy.write_row` calls), not a public name: without it, rows
# go through `write_row`; in another shape, every test storing a row fails.
try:
    from psycopg._copy_base import format_row_binary as _format_row_binary
except ImportError:  # pragma: no cover - a psycopg without it
    _format_row_binary = None
# COPY's binary format (PostgreSQL manual, COPY, "Binary Format"): signature, flags and header extension length,
# then rows, then a field count of -1.
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_BINARY_TRAILER = b"\xff\xff"
_ROWS_PER_WRITE = 100  # about 80 kB a write for 800-byte rows

# SQLSTATE classes (PostgreSQL manual, appendix A) of failures that are not the row's fault. Outages: the
# server or the connection is in trouble. Systemic: the database answers, but would refuse any row (08 aside,
# a wrong schema, privileges, transaction mode). Every other class is a refusal of the row on its own merits:
# 22 data exception, 23 constraint, 54 program limit, P0 an operator's trigger raising, 2F/38/39 a routine, ...
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
SYSTEMIC_SQLSTATE_CLASSES = frozenset({"0A", "25", "26", "28", "2D", "34", "3D", "3F", "42", "F0"})

# What to do, for the systemic refusals people meet; the message always carries PostgreSQL's own words too.
_SYSTEMIC_HINTS = {
    "42P01": "run `interactionlog migrate` against this database (or fix the table an operator's trigger uses)",
    "42703": "the table lacks a column this worker writes: run `interactionlog migrate`, or restore the column",
    "42501": "grant the worker's role INSERT and SELECT on interaction_logs (and USAGE on its schema)",
    "25006": "the database is read-only (a standby, or default_transaction_read_only): point --database-url at "
    "the primary",
}


@dataclass(frozen=True)
class Migration:
    """One forward-only schema change, applied once and recorded in `interactionlog_schema_migrations`."""

    version: int
    description: str
    statements: tuple[str, ...]
    apply: Callable[[psycopg.AsyncConnection[Any]], Awaitable[object]] | None = None  # runs after the statements


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create interaction_logs",
        (
            """
            CREATE TABLE interaction_logs (
                id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                mcp_id          TEXT             NOT NULL,
                interaction_id  TEXT             NOT NULL,
                "timestamp"     TIMESTAMPTZ      NOT NULL,
                method          TEXT,
                tool            TEXT,
                session_id      TEXT,
                is_error        BOOLEAN,
                duration_ms     DOUBLE PRECISION,
                trace_id        TEXT,
                data            JSONB            NOT NULL,
                stream_entry_id TEXT             NOT NULL,
                stored_at       TIMESTAMPTZ      NOT NULL DEFAULT now(),
                CONSTRAINT interaction_logs_identity UNIQUE (mcp_id, interaction_id)
            )
            """,
            'CREATE INDEX interaction_logs_mcp_id_timestamp ON interaction_logs (mcp_id, "timestamp")',
        ),
    ),
    # Migration 2 (issue 14, `tail`, `stats`, `show` and the interactions dashboard): one index per filter those
    # queries take, each ending in "timestamp" so that "the newest N" and "within this window" are index range
    # scans whatever the table's size; errors and sessions are partial, so rows without them cost nothing.
    # IF NOT EXISTS: on a large live table an operator may build them beforehand with CREATE INDEX CONCURRENTLY
    # (same names), since a plain CREATE INDEX holds the workers' inserts until it is built.
    Migration(
        2,
        "indexes and error_message function for tail, stats and the interactions dashboard",
        (
            'CREATE INDEX IF NOT EXISTS interaction_logs_timestamp ON interaction_logs ("timestamp")',
            'CREATE INDEX IF NOT EXISTS interaction_logs_tool_timestamp ON interaction_logs (tool, "timestamp")',
            "CREATE INDEX IF NOT EXISTS interaction_logs_session_timestamp"
            ' ON interaction_logs (session_id, "timestamp") WHERE session_id IS NOT NULL',
            "CREATE INDEX IF NOT EXISTS interaction_logs_errors_timestamp"
            ' ON interaction_logs ("timestamp") WHERE is_error',
            # What went wrong, as one line of text, for `stats`, `tail` and the dashboard alike: a JSON-RPC
            # error's message, an error given as a string (or any other JSON, as text), else the first text
            # content of a tool result flagged is_error (MCP reports tool failures that way). An inlinable SQL
            # function, so readers need no copy of the rule.
            """
            CREATE OR REPLACE FUNCTION interactionlog_error_message(data JSONB) RETURNS TEXT
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
                SELECT coalesce(
                    CASE jsonb_typeof(data -> 'error')
                        WHEN 'string' THEN data ->> 'error'
                        WHEN 'object' THEN coalesce(data -> 'error' ->> 'message', (data -> 'error')::text)
                        WHEN 'null' THEN NULL
                        ELSE (data -> 'error')::text
                    END,
                    CASE WHEN data -> 'is_error' = 'true'::jsonb THEN data #>> '{response,content,0,text}' END
                )
            $$
            """,
        ),
    ),
    Migration(
        3,
        "create interactionlog_tokens (the gateway's per-MCP bearer tokens, stored hashed)",
        (
            """
            CREATE TABLE interactionlog_tokens (
                token_id      TEXT        PRIMARY KEY,
                mcp_id        TEXT        NOT NULL,
                name          TEXT,
                secret_sha256 BYTEA       NOT NULL,
                created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
                revoked_at    TIMESTAMPTZ
            )
            """,
            "CREATE INDEX interactionlog_tokens_mcp_id ON interactionlog_tokens (mcp_id)",
        ),
    ),
    # Migration 4 (issue 13): interaction_logs partitioned by range on "timestamp". A new install's table, still
    # empty, is switched to the partitioned layout at once. A populated table of an earlier version stays as it
    # is, untouched (the workers' inserts work on both layouts); `interactionlog partition-convert` converts it
    # online.
    Migration(
        4,
        'interaction_logs partitioned by range on "timestamp", with a default partition',
        (partitions.CONFIG_TABLE_DDL,),
        apply=partitions.partition_new_install,
    ),
)

# The staging table lives for one transaction (created in it, dropped at its end), so concurrent batches never
# see each other's rows, no cleanup is needed after a crash, and a pooler that hands each transaction another
# server connection (PgBouncer's transaction mode) never meets a table created on another one. Only a batch whose
# COPY failed on the unique index takes it (see the module docstring), so the DDL is rare.
_CREATE_STAGING = """
    CREATE TEMPORARY TABLE interaction_logs_staging (
        mcp_id TEXT, interaction_id TEXT, "timestamp" TIMESTAMPTZ, method TEXT, tool TEXT, session_id TEXT,
        is_error BOOLEAN, duration_ms DOUBLE PRECISION, trace_id TEXT, data JSONB, stream_entry_id TEXT
    ) ON COMMIT DROP
"""
# Readiness: the table exists, the worker may insert into it, and the session is not read-only.
_READINESS = """
    SELECT t.c IS NOT NULL, t.c IS NULL OR has_table_privilege(t.c, 'INSERT'),
           current_setting('transaction_read_only') = 'on'
    FROM (SELECT to_regclass('interaction_logs') AS c) AS t
"""
_COLUMN_LIST = sql.SQL(", ").join(sql.Identifier(name) for name in COLUMNS)
# Binary COPY: psycopg sends values without text escaping and PostgreSQL reads them without parsing text
# (timestamps, floats); it needs each column's type up front, in COLUMNS order: rows.COLUMN_TYPES.
_COPY_TABLE = sql.SQL("COPY interaction_logs ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMN_LIST)
_COPY_STAGING = sql.SQL("COPY interaction_logs_staging ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMN_LIST)


class _JsonTextDumper(JsonbBinaryDumper):
    """`StoredRow.data` already holds JSON text: send it as JSONB's binary form (version 1, then the text)
    as it is, where the stock dumper would encode the str once more, as a JSON string."""

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()


@dataclass
class PersistResult:
    """What one batch did: rows inserted, rows already present, and rows PostgreSQL refused (with why)."""

    inserted: int = 0
    duplicates: int = 0
    refused: list[tuple[StoredRow, str]] = field(default_factory=list)


def classify(error: psycopg.Error) -> str:
    """ "outage", "systemic" or "row" (PostgreSQL refused the row itself): see the module docstring."""
    sqlstate = error.sqlstate
    if sqlstate is None:  # raised by the client library: the connection, not the data
        return "outage"
    if sqlstate[:2] in OUTAGE_SQLSTATE_CLASSES:
        return "outage"
    return "systemic" if sqlstate[:2] in SYSTEMIC_SQLSTATE_CLASSES else "row"


def is_permanent(error: psycopg.Error) -> bool:
    """True when PostgreSQL refused the row itself, so retrying the same row can never succeed."""
    return classify(error) == "row"


def describe_database_error(error: Exception) -> str:
    """A one-line explanation for logs: PostgreSQL's words, its SQLSTATE, and what to do when that is known."""
    if isinstance(error, PoolTimeout):
        return f"no PostgreSQL connection became available ({error})"
    if not isinstance(error, psycopg.Error):
        return str(error)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    described = f"{first_line} (SQLSTATE {error.sqlstate})" if error.sqlstate else first_line
    hint = _SYSTEMIC_HINTS.get(error.sqlstate or "")
    # A role or database that does not exist is mostly the default URL's doing: say which setting to give.
    return with_database_url_hint(f"{described}: {hint}" if hint else described, error)


class Store:
    """Idempotent batch persistence into `interaction_logs` over a small connection pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        dedupe_window_hours: float = DEFAULT_DEDUPE_WINDOW_HOURS,
    ) -> None:
        self._pool = pool
        # The identity rule, in the statements of rows.insert_rows_from (README "Idempotency").
        self._dedupe_window_hours = dedupe_window_hours
        self._move_staging = insert_rows_from(
            sql.Identifier("interaction_logs_staging"), dedupe_window_hours, spared=dedupe_window_hours > 0
        )
        self._stored_copies = stored_copies(dedupe_window_hours)
        self._insert_row = insert_one_row(dedupe_window_hours)
        self._insert_exact_row = insert_one_row(0)
        self._abandoned: set[asyncio.Task[PersistResult]] = set()  # hung attempts, kept referenced until they end
        # The systemic refusal of the last batch attempt, until a batch goes through: readiness reports it.
        self.refusal: str | None = None

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        max_connections: int,
        timeout_s: float = 5.0,
        dedupe_window_hours: float = DEFAULT_DEDUPE_WINDOW_HOURS,
    ) -> Store:
        """Open the pool without waiting for PostgreSQL: the worker starts (and retries) while it is away."""
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=max_connections,
            timeout=timeout_s,
            configure=_configure,
            # No server-side prepared statements: behind PgBouncer in transaction mode the next execution may
            # reach another server connection, where the statement was never prepared.
            kwargs={"prepare_threshold": None},
            open=False,
            name="interactionlog",
        )
        await pool.open(wait=False)
        return cls(pool, dedupe_window_hours)

    async def close(self) -> None:
        """Close every connection; a batch still running fails with a transient error."""
        await self._pool.close()

    async def ping(self) -> None:
        """Round trip to PostgreSQL, raising DatabaseUnavailableError when it is not reachable."""
        try:
            async with self._pool.connection() as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout) as error:
            raise DatabaseUnavailableError(f"PostgreSQL is unreachable: {describe_database_error(error)}") from error

    async def readiness_problem(self) -> str | None:
        """Why this worker cannot store anything right now (PostgreSQL unreachable, the table missing, no INSERT
        privilege, a read-only session, or the last batch's systemic refusal), or None when it can."""
        if self.refusal is not None:
            return self.refusal
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(_READINESS)
                present, insertable, read_only = await cursor.fetchone() or (False, False, False)
        except (psycopg.Error, PoolTimeout) as error:
            return f"PostgreSQL is unreachable: {describe_database_error(error)}"
        if not present:
            return f"table {TABLE} does not exist: run `interactionlog migrate` against this database"
        if not insertable:
            return f"the worker's role may not INSERT into {TABLE}: {_SYSTEMIC_HINTS['42501']}"
        if read_only:
            return f"the session is read-only: {_SYSTEMIC_HINTS['25006']}"
        return None

    async def persist_batch(self, rows: Sequence[StoredRow], exact: Sequence[bool] | None = None) -> PersistResult:
        """Store `rows` in one transaction, skipping copies of records stored already (`rows.insert_rows_from`).

        `exact[i]` says row i is of exact identity (`record.IDENTITY_FIELD`): its copies all carry its timestamp,
        so the unique index alone decides and the dedupe window's probe and lock are skipped for it. None (the
        default) treats every row as one that may have been stamped again.

        Raises DatabaseUnavailableError when PostgreSQL is unreachable or the batch must be retried as a whole, and
        its DatabaseRefusedError when PostgreSQL would refuse any row (see the module docstring); the caller must then
        acknowledge nothing. Rows refused on their own merits come back in `PersistResult.refused`.
        """
        if not rows:
            return PersistResult()
        flags = [False] * len(rows) if exact is None or self._dedupe_window_hours <= 0 else exact
        try:
            result = await self._persist(_Batch(rows, flags))
        except (psycopg.Error, PoolTimeout) as error:
            described = describe_database_error(error)
            if isinstance(error, psycopg.Error) and classify(error) == "systemic":
                self.refusal = f"PostgreSQL refuses every row: {described}"
                raise DatabaseRefusedError(f"could not persist batch: {self.refusal}") from error
            raise DatabaseUnavailableError(f"could not persist batch: {described}") from error
        self.refusal = None
        return result

    async def _persist(self, whole: _Batch) -> PersistResult:
        # The set-based statements cannot see copies among their own rows: those are dropped here first.
        kept = first_copies(whole.rows, whole.exact, self._dedupe_window_hours)
        batch = whole if len(kept) == len(whole.rows) else whole.subset(kept)
        async with self._pool.connection() as conn:
            try:
                try:
                    if batch.probed:
                        # A copy published again carries another timestamp, which the unique index does not
                        # catch: one query names the rows already stored within the window, the rest is COPYed.
                        result = await self._copy_unstored_into_table(conn, batch)
                    else:
                        result = await self._copy_into_table(conn, batch.rows)
                except psycopg.errors.UniqueViolation:
                    # Some rows are stored already (a redelivery, or a record published twice): take the
                    # idempotent path for this batch.
                    result = await self._persist_copy(conn, batch)
            except psycopg.Error as error:
                if not is_permanent(error) or conn.broken:
                    raise
                log.info("batch_refused_isolating_rows", rows=len(whole.rows), error=describe_database_error(error))
                # Every row, in order, each statement seeing the ones before it: a copy dropped above in favour
                # of a row PostgreSQL now refuses is stored in its place.
                return await self._persist_row_by_row(conn, whole)
        result.duplicates += len(whole.rows) - len(kept)
        return result

    async def persist_batch_within(
        self, rows: Sequence[StoredRow], timeout_s: float, exact: Sequence[bool] | None = None
    ) -> PersistResult:
        """`persist_batch`, abandoned if it takes longer than `timeout_s`: raises `AttemptAbandonedError` then.

        A half-open connection (a frozen server, a silent network partition) never fails; it just never
        answers, while the batch's holder keeps other consumers away from it. So the holder must give up on such
        a connection itself. Abandoned, not awaited: cancelling psycopg mid-COPY would wait on the same dead
        server. The pool hands the retry a fresh connection; a late commit of the abandoned attempt is
        harmless, the insert being idempotent.
        """
        attempt = asyncio.create_task(self.persist_batch(rows, exact))
        done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
        if attempt in done:
            return attempt.result()
        attempt.cancel()
        self._abandoned.add(attempt)
        attempt.add_done_callback(self._forget_abandoned)
        raise AttemptAbandonedError(
            f"storing a batch of {len(rows)} took longer than {timeout_s:g}s; abandoned its connection as hung "
            "and retrying on another"
        )

    def _forget_abandoned(self, attempt: asyncio.Task[PersistResult]) -> None:
        self._abandoned.discard(attempt)
        if not attempt.cancelled() and attempt.exception() is not None:
            log.debug("abandoned_attempt_failed", error=str(attempt.exception()))

    @staticmethod
    async def _copy_into_table(conn: psycopg.AsyncConnection[Any], rows: Sequence[StoredRow]) -> PersistResult:
        """The fast path, the same work as a bare bulk load: COPY straight into interaction_logs. Any row
        already present makes the whole COPY fail with a unique violation, and nothing of it is kept."""
        async with conn.transaction(), conn.cursor() as cursor:
            await _copy_rows(cursor, _COPY_TABLE, rows)
        return PersistResult(inserted=len(rows))

    async def _copy_unstored_into_table(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> PersistResult:
        """The fast path with a dedupe window: under the MCPs' lock (`rows.LOCK_COPY_KEYS`), one query for the
        rows of inexact identity interaction_logs holds a copy of (`rows.stored_copies`), then the others COPYed
        straight into the table, in one transaction. An exact copy committed meanwhile fails the COPY on the unique
        index (UniqueViolation, nothing kept)."""
        probed = batch.probed
        keys = (
            [batch.rows[i].mcp_id for i in probed],
            [batch.rows[i].interaction_id for i in probed],
            [batch.rows[i].timestamp for i in probed],
        )
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.execute(LOCK_COPY_KEYS, (keys[0],))
            await cursor.execute(self._stored_copies, keys)
            stored = {probed[int(position) - 1] for (position,) in await cursor.fetchall()}
            unstored = [row for index, row in enumerate(batch.rows) if index not in stored] if stored else batch.rows
            if unstored:
                await _copy_rows(cursor, _COPY_TABLE, unstored)
        return PersistResult(inserted=len(unstored), duplicates=len(stored))

    async def _persist_copy(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> PersistResult:
        """The idempotent path: the batch COPYed into a staging table, then moved by `rows.insert_rows_from`."""
        async with conn.transaction(), conn.cursor() as cursor:
            await _lock_probed_keys(cursor, batch)
            await cursor.execute(_CREATE_STAGING)
            await _copy_rows(cursor, _COPY_STAGING, batch.rows)
            spared = [row.stream_entry_id for row, exact in zip(batch.rows, batch.exact, strict=True) if exact]
            await cursor.execute(self._move_staging, (spared,) if self._dedupe_window_hours > 0 else None)
            inserted = max(cursor.rowcount, 0)
        return PersistResult(inserted=inserted, duplicates=len(batch.rows) - inserted)

    async def _persist_row_by_row(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> PersistResult:
        result = PersistResult()
        async with conn.transaction():
            async with conn.cursor() as cursor:
                await _lock_probed_keys(cursor, batch)
            for row, exact in zip(batch.rows, batch.exact, strict=True):
                try:
                    async with conn.transaction():  # a savepoint: a refused row rolls back alone
                        cursor = await conn.execute(self._insert_exact_row if exact else self._insert_row, row)
                except psycopg.Error as error:
                    if not is_permanent(error):
                        raise
                    result.refused.append((row, f"PostgreSQL refused the row: {describe_database_error(error)}"))
                    continue
                if cursor.rowcount == 1:
                    result.inserted += 1
                else:
                    result.duplicates += 1
        return result


@dataclass
class _Batch:
    """Rows to store, with whether each is of exact identity (see `Store.persist_batch`)."""

    rows: Sequence[StoredRow]
    exact: Sequence[bool]

    def subset(self, positions: Sequence[int]) -> _Batch:
        """The rows at `positions`, in their order."""
        return _Batch([self.rows[i] for i in positions], [self.exact[i] for i in positions])

    @property
    def probed(self) -> list[int]:
        """The positions of the rows the dedupe window's probe decides on (none with a window of 0)."""
        return [index for index, exact in enumerate(self.exact) if not exact]


async def _lock_probed_keys(cursor: psycopg.AsyncCursor[Any], batch: _Batch) -> None:
    """Take `rows.LOCK_COPY_KEYS` for the MCPs of the rows the probe decides on, if any."""
    if probed := batch.probed:
        await cursor.execute(LOCK_COPY_KEYS, ([batch.rows[i].mcp_id for i in probed],))


async def _copy_rows(cursor: psycopg.AsyncCursor[Any], statement: sql.Composed, rows: Sequence[StoredRow]) -> None:
    async with cursor.copy(statement) as copy:
        copy.set_types(COLUMN_TYPES)
        if _format_row_binary is None:
            for row in rows:
                await copy.write_row(row)
            return
        # psycopg's own C row formatter, run by map() over a hundred rows into one buffer: `write_row` costs a
        # coroutine and two Python frames per row around the same call (benchmarks/NOTES.md). The binary format's
        # header and trailer are ours to send then, as `write` sends data as it is.
        transformer = copy.formatter.transformer
        payload = bytearray(_BINARY_SIGNATURE)
        for start in range(0, len(rows), _ROWS_PER_WRITE):
            piece = rows[start : start + _ROWS_PER_WRITE]
            collections.deque(map(_format_row_binary, piece, repeat(transformer), repeat(payload)), maxlen=0)
            await copy.write(payload)
            payload = bytearray()
        await copy.write(_BINARY_TRAILER)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # Client-side only: nothing is set on the server session, which a transaction pooler would not keep.
    conn.adapters.register_dumper(None, _JsonTextDumper)  # by oid only: used where set_types() says jsonb
    # Said in each BEGIN, whatever the database's default_transaction_isolation: the dedupe window's probe must
    # take its snapshot after the MCPs' lock is granted (rows.LOCK_COPY_KEYS), which REPEATABLE READ would not.
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)


async def migrate(
    database_url: str,
    *,
    partition_interval: partitions.Interval | None = None,
    partition_premake: int = 4,
    up_to: int | None = None,
) -> list[Migration]:
    """Apply the migrations this database lacks, in order; safe to run concurrently and repeatedly.

    Then record the partition interval (`partition_interval`, else the one recorded, else the default) and
    create the partitions of the current interval and the `partition_premake` next ones. `up_to` stops at that
    version, partitions left alone: the schema of an earlier release, for tests and benchmarks of upgrades.
    """
    _, applied = await migrate_and_name(
        database_url, partition_interval=partition_interval, partition_premake=partition_premake, up_to=up_to
    )
    return applied


async def migrate_and_name(
    database_url: str,
    *,
    partition_interval: partitions.Interval | None = None,
    partition_premake: int = 4,
    up_to: int | None = None,
) -> tuple[str, list[Migration]]:
    """`migrate`, also returning which database it migrated, as the server names it (``database x on host:port
    as user u``): libpq fills in what a URL omits (PG* variables, defaults), so the URL alone may not say."""
    applied: list[Migration] = []
    async with await psycopg.AsyncConnection.connect(database_url) as conn, conn.transaction():
        info = conn.info
        where = f"database {info.dbname} on {info.host}:{info.port} as user {info.user}"
        # One migrator at a time: a second `migrate` waits here, then finds nothing left to do.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('interactionlog_migrate'))")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS interactionlog_schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM interactionlog_schema_migrations")
        done = {version for (version,) in await cursor.fetchall()}
        for migration in MIGRATIONS:
            if migration.version in done or (up_to is not None and migration.version > up_to):
                continue
            for statement in migration.statements:
                await conn.execute(statement.encode())
            if migration.apply is not None:
                await migration.apply(conn)
            await conn.execute(
                "INSERT INTO interactionlog_schema_migrations (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration)
        if up_to is None:
            await partitions.record_interval(
                conn, partition_interval or partitions.DEFAULT_INTERVAL, replace=partition_interval is not None
            )
            await maintain(conn, premake=partition_premake)
    return where, applied


async def schema_version(database_url: str) -> int:
    """The highest migration applied to this database, 0 when none is."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT to_regclass('interactionlog_schema_migrations') IS NOT NULL")
        row = await cursor.fetchone()
        if not row or not row[0]:
            return 0
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM interactionlog_schema_migrations")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0
