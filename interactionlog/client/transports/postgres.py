"""The postgresql:// transport: the design's shared-database scheme, straight into `interaction_logs`.

No stream and no worker: each batch is one transaction of an insert per row (`rows.INSERT_ROW`: the row the
worker would store, with the worker's identity rule at the default dedupe window, README "Idempotency"; under the
MCPs' lock `rows.LOCK_COPY_KEYS`, and without the probe for rows of exact identity), so publishing a
record twice stores it once, and the `data` column holds the record's JSON as the publisher encoded it. Rows
carry `stream_entry_id = 'direct'`, which is also the id `publish` returns. The table must exist
(`interactionlog migrate`).

What it costs: every MCP process holds PostgreSQL connections (at most `MAX_CONNECTIONS` each) and waits on
a commit per batch; there is no buffer in front of the database. Use it where Redis is not an option.

Every wait is bounded by `timeout_s`: taking a pooled connection, connecting (libpq's `connect_timeout`, whole
seconds, at least 2), and the insert itself, by a ``SET LOCAL statement_timeout`` in its transaction (so a table
held behind a lock, by a migration or a `LOCK TABLE`, fails the batch as unavailable instead of hanging the
caller; ``SET LOCAL`` rather than a connection option, which PgBouncer refuses). A frozen server (SIGSTOP, a
paused VM, a silent network) answers neither the statement nor its timeout: the whole publish is bounded too
(`bound_s`), its attempt abandoned with its connection past it, on a daemon thread or an abandoned task.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from ...errors import PublishError, PublishUnavailableError
from ...record import DATA_FIELD, EXACT_IDENTITY, IDENTITY_FIELD, Interaction
from ...redact import redact_url
from ...retry import Abandonment
from ...rows import INSERT_ROW, LOCK_COPY_KEYS, StoredRow, insert_one_row, row_of

DIRECT_ENTRY_ID = "direct"  # the stream_entry_id of rows that never went through a stream
MAX_CONNECTIONS = 4


# A row of exact identity (`record.IDENTITY_FIELD`) is left to the unique index; the others take the probe.
_INSERT_EXACT_ROW = insert_one_row(0)


@dataclass
class _Insert:
    """One batch's rows: those of exact identity, and those the probe decides on, whose MCPs are locked first
    (`rows.LOCK_COPY_KEYS`)."""

    exact: list[StoredRow]
    probed: list[StoredRow]

    @property
    def rows(self) -> int:
        """How many rows the batch holds."""
        return len(self.exact) + len(self.probed)

    @property
    def locked_mcp_ids(self) -> list[str]:
        """The MCPs of the rows the probe decides on."""
        return [row.mcp_id for row in self.probed]


def insert_of(entries: Sequence[dict[bytes, bytes]]) -> _Insert:
    """The insert of entries built by `encode_fields` (validated already: this only reads the columns out)."""
    insert = _Insert([], [])
    for fields in entries:
        data = fields[DATA_FIELD]
        row = row_of(Interaction.model_validate_json(data), data.decode(), DIRECT_ENTRY_ID)
        if fields.get(IDENTITY_FIELD) == EXACT_IDENTITY:
            insert.exact.append(row)
        else:
            insert.probed.append(row)
    return insert


def _read_committed(conn: psycopg.Connection[Any]) -> None:
    # The probe must take its snapshot after the lock is granted (rows.LOCK_COPY_KEYS), whatever the default.
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED


async def _read_committed_async(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_isolation_level(psycopg.IsolationLevel.READ_COMMITTED)


def _pool_options(url: str, timeout_s: float) -> dict[str, Any]:
    # libpq's connect_timeout is whole seconds (and at least 2); the pool's timeout bounds the whole wait.
    return {
        "conninfo": url,
        "min_size": 0,
        "max_size": MAX_CONNECTIONS,
        "timeout": timeout_s,
        "kwargs": {"connect_timeout": max(2, math.ceil(timeout_s)), "autocommit": False},
        "open": False,
        "name": "interactionlog-direct",
    }


class _PostgresCore:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.where = f"PostgreSQL at {redact_url(url)}"
        self.options = _pool_options(url, timeout_s)
        # An integer of milliseconds, formatted in: SET takes no bind parameters.
        self.bound_statement = f"SET LOCAL statement_timeout = {max(1, math.ceil(timeout_s * 1000))}"
        # The whole publish, whatever the server does: a frozen server (SIGSTOP, a VM paused, a half-open
        # connection) answers neither the statement nor its timeout, so the caller stops waiting on its own.
        # Each of the two attempts may take the pool's wait, libpq's connect_timeout and the statement's.
        self.bound_s = 2 * (2 * timeout_s + max(2, math.ceil(timeout_s)))

    def _hung(self) -> PublishUnavailableError:
        return PublishUnavailableError(
            f"{self.where} did not answer within {self.bound_s:g}s (a frozen server or a silent network); the "
            "records may or may not be stored: send them again, they are stored once either way"
        )

    def _failed(self, error: Exception) -> PublishError:
        """A data or constraint error refuses the batch; anything else (down, restarting, no table) is transient."""
        if isinstance(error, psycopg.DataError | psycopg.IntegrityError):
            return PublishError(f"{self.where} refused the batch, nothing of it stored: {error}")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, psycopg.errors.UndefinedTable):
            reason += " (run `interactionlog migrate` against this database)"
        return PublishUnavailableError(
            f"{self.where} did not store the records ({reason}); send them again, they are stored once either way"
        )


class PostgresTransport(_PostgresCore):
    """Inserts batches from synchronous code; thread-safe (a small connection pool)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        super().__init__(url, timeout_s=timeout_s)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(**self.options, configure=_read_committed)
        self._pool.open(wait=False)

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Insert the entries' rows in one transaction; one `DIRECT_ENTRY_ID` each. Raises PublishError, or
        PublishUnavailableError when PostgreSQL is unreachable or does not answer within `bound_s`."""
        insert = insert_of(entries)
        if not insert.rows:
            return []
        # On a daemon thread, so that the caller can stop waiting on a server that never answers, and the
        # interpreter can exit while that thread still waits (abandoned with its connection, as the worker does).
        outcome: list[BaseException] = []
        finished = threading.Event()

        def run() -> None:
            try:
                self._insert(insert)
            except BaseException as error:  # handed to the caller's thread
                outcome.append(error)
            finally:
                finished.set()

        threading.Thread(target=run, name="interactionlog-direct-insert", daemon=True).start()
        if not finished.wait(self.bound_s):
            raise self._hung()
        if outcome:
            raise outcome[0]
        return [DIRECT_ENTRY_ID] * insert.rows

    def _insert(self, insert: _Insert) -> None:
        # Twice at most: a pooled connection may have died with a PostgreSQL restart; the insert is idempotent.
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                    cursor.execute(self.bound_statement)
                    if insert.locked_mcp_ids:
                        cursor.execute(LOCK_COPY_KEYS, (insert.locked_mcp_ids,))
                    for statement, rows in ((_INSERT_EXACT_ROW, insert.exact), (INSERT_ROW, insert.probed)):
                        if rows:
                            cursor.executemany(statement, rows)
                break
            except psycopg.OperationalError as error:
                if attempt == 2:
                    raise self._failed(error) from error
            except (psycopg.Error, PoolTimeout) as error:
                raise self._failed(error) from error

    def close(self) -> None:
        """Close the pool."""
        self._pool.close()


class AsyncPostgresTransport(_PostgresCore):
    """The asyncio twin; its pool is opened on first use, inside the event loop that uses it."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        super().__init__(url, timeout_s=timeout_s)
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._abandoned = Abandonment()  # hung attempts, kept referenced until they end

    async def _opened(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            self._pool = AsyncConnectionPool(**self.options, configure=_read_committed_async)
            await self._pool.open(wait=False)
        return self._pool

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Insert the entries' rows in one transaction; one `DIRECT_ENTRY_ID` each. Raises PublishError, or
        PublishUnavailableError when PostgreSQL is unreachable or does not answer within `bound_s`."""
        insert = insert_of(entries)
        if not insert.rows:
            return []
        # Abandoned past the bound, as the worker abandons a hung batch (`retry.Abandonment`).
        await self._abandoned.within(self._insert(insert), self.bound_s, self._hung)
        return [DIRECT_ENTRY_ID] * insert.rows

    async def _insert(self, insert: _Insert) -> None:
        pool = await self._opened()
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                    await cursor.execute(self.bound_statement)
                    if insert.locked_mcp_ids:
                        await cursor.execute(LOCK_COPY_KEYS, (insert.locked_mcp_ids,))
                    for statement, rows in ((_INSERT_EXACT_ROW, insert.exact), (INSERT_ROW, insert.probed)):
                        if rows:
                            await cursor.executemany(statement, rows)
                break
            except psycopg.OperationalError as error:
                if attempt == 2:
                    raise self._failed(error) from error
            except (psycopg.Error, PoolTimeout) as error:
                raise self._failed(error) from error

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
