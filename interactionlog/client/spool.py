"""The durable local spool: stream entries that could not be sent yet, kept on disk in SQLite until Redis answers.

One SQLite database per spool directory (``<spool_dir>/spool.sqlite3``), in WAL mode. Why SQLite: a storage
engine that is tested far beyond anything home-made, in the standard library, with transactions that several
processes on one host may share (its own file locks), and a crash model that is documented.

Semantics, in the manner of Fluent Bit's and Vector's buffer documentation:

- **What is kept.** Each row is one encoded stream entry (the `v`/`data` fields, exactly as they will be
  XADDed), with the stream it is for. Rows are replayed oldest first (a row's `seq` is its order of arrival).
- **Crash model.** A row is durable once `append` returned. With `fsync="normal"` (the default: SQLite's
  ``synchronous=NORMAL`` in WAL mode) a committed row survives a SIGKILL of the process, but the last
  transactions may be lost if the *machine* loses power; ``fsync="full"`` syncs every commit to disk as well.
- **Replay is at least once.** `take` leases the oldest rows to one replayer for `lease_s`; the replayer
  deletes them (`remove`) once Redis confirmed them. A replayer that dies leaves its lease to run out, and the
  rows are replayed again; each record carries its `interaction_id`, so the table stores it once either way.
- **Size cap.** `max_bytes` bounds the encoded bytes held. When full, `full_policy` decides: ``drop_newest``
  (the default) refuses the new rows, ``drop_oldest`` deletes the oldest rows to make room. Either way the
  rows dropped are returned to the caller, who counts and logs them.
- **Cost.** Every operation costs the same whatever the spool holds: triggers keep each stream's row count and
  bytes in `totals` inside the transaction that changes `entries` (the cap check was a ``sum(bytes)`` over the
  whole table in every append, which grew with the spool and held the write lock as long), and the oldest row
  of a stream is the first of the ``(stream, seq)`` index.
- **Errors.** A busy database (another writer held the lock past `busy_timeout_s`) or a disk error raises
  `sqlite3.Error`/`OSError` and changes nothing: the caller keeps the entries and tries again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FullPolicy = Literal["drop_newest", "drop_oldest"]
FsyncPolicy = Literal["normal", "full"]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_LEASE_S = 30.0
DEFAULT_BUSY_TIMEOUT_S = 5.0
_FILE_NAME = "spool.sqlite3"

# Run in one write transaction when a spool is opened: a spool file of an earlier version (no `totals`) gets the
# table, filled from what it holds, and the triggers at once, so that no writer ever changes `entries` unseen.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        fields TEXT NOT NULL,          -- the entry's fields as a JSON object of latin-1 text (bytes kept exactly)
        bytes INTEGER NOT NULL,
        spooled_at REAL NOT NULL,      -- Unix time
        leased_until REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS entries_replay ON entries (stream, seq)",
    """CREATE TABLE IF NOT EXISTS totals (
        stream TEXT PRIMARY KEY,
        entries INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    """INSERT INTO totals (stream, entries, bytes)
        SELECT stream, count(*), sum(bytes) FROM entries
        WHERE NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'entries_counted_in')
        GROUP BY stream""",
    """CREATE TRIGGER IF NOT EXISTS entries_counted_in AFTER INSERT ON entries BEGIN
        INSERT INTO totals (stream, entries, bytes) VALUES (NEW.stream, 1, NEW.bytes)
        ON CONFLICT (stream) DO UPDATE SET entries = entries + 1, bytes = bytes + excluded.bytes;
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_counted_out AFTER DELETE ON entries BEGIN
        UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.bytes WHERE stream = OLD.stream;
    END""",
)


@dataclass(frozen=True)
class SpooledEntry:
    """One row taken for replay: its sequence number, the stream it is for, and the entry's fields."""

    seq: int
    stream: str
    fields: dict[bytes, bytes]


@dataclass(frozen=True)
class SpoolDepth:
    """How much the spool holds now: rows, their encoded bytes, and the age in seconds of the oldest (0 if empty)."""

    entries: int
    bytes: int
    oldest_age_s: float


def _pack(fields: dict[bytes, bytes]) -> str:
    return json.dumps({key.decode("latin-1"): value.decode("latin-1") for key, value in fields.items()})


def _unpack(text: str) -> dict[bytes, bytes]:
    return {key.encode("latin-1"): value.encode("latin-1") for key, value in json.loads(text).items()}


class Spool:
    """A spool directory's SQLite database, shared safely by the threads of one process and by other processes.

    Each thread gets its own connection; SQLite serialises writers with its file lock, waiting up to
    `busy_timeout_s` for it. Raises OSError or sqlite3.Error when the directory cannot be created or the database
    cannot be opened.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        full_policy: FullPolicy = "drop_newest",
        fsync: FsyncPolicy = "normal",
        lease_s: float = DEFAULT_LEASE_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        if full_policy not in ("drop_newest", "drop_oldest"):
            raise ValueError(f"spool full_policy must be 'drop_newest' or 'drop_oldest', got {full_policy!r}")
        if fsync not in ("normal", "full"):
            raise ValueError(f"spool fsync must be 'normal' or 'full', got {fsync!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / _FILE_NAME
        self.max_bytes = max_bytes
        self.full_policy: FullPolicy = full_policy
        self.fsync: FsyncPolicy = fsync
        self.lease_s = lease_s
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so a writer takes the lock
            # up front instead of failing to upgrade a read lock under contention.
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)  # fmt: skip
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.fsync.upper()}")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this thread's connection, taking SQLite's write lock up front."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def append(self, stream: str, entries: Sequence[dict[bytes, bytes]]) -> int:
        """Store `entries` for `stream` in one transaction; returns how many were dropped to respect `max_bytes`.

        With ``drop_newest`` the dropped ones are the last of `entries`; with ``drop_oldest`` they are the oldest
        rows already spooled (or, if `entries` alone exceed the cap, the first of `entries`).
        """
        if not entries:
            return 0
        rows = [(stream, packed, len(packed)) for packed in map(_pack, entries)]
        now = time.time()
        dropped = 0
        with self._transaction() as connection:
            held = int(connection.execute("SELECT coalesce(sum(bytes), 0) FROM totals").fetchone()[0])
            incoming = sum(size for _, _, size in rows)
            if held + incoming > self.max_bytes:
                if self.full_policy == "drop_newest":
                    room = self.max_bytes - held
                    kept = []
                    for row in rows:
                        if row[2] <= room:
                            kept.append(row)
                            room -= row[2]
                    dropped = len(rows) - len(kept)
                    rows = kept
                else:
                    while rows and incoming > self.max_bytes:
                        incoming -= rows.pop(0)[2]
                        dropped += 1
                    dropped += self._delete_oldest(connection, held + incoming - self.max_bytes)
            connection.executemany(
                "INSERT INTO entries (stream, fields, bytes, spooled_at) VALUES (?, ?, ?, ?)",
                [(s, packed, size, now) for s, packed, size in rows],
            )
        return dropped

    @staticmethod
    def _delete_oldest(connection: sqlite3.Connection, excess_bytes: int) -> int:
        deleted = 0
        while excess_bytes > 0:
            row = connection.execute("SELECT seq, bytes FROM entries ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            connection.execute("DELETE FROM entries WHERE seq = ?", (row[0],))
            excess_bytes -= int(row[1])
            deleted += 1
        return deleted

    def take(self, stream: str, limit: int) -> list[SpooledEntry]:
        """Lease up to `limit` of the oldest rows of `stream` that no other replayer holds, for `lease_s`; in order."""
        now = time.time()
        with self._transaction() as connection:
            rows = connection.execute(
                "UPDATE entries SET leased_until = ? WHERE seq IN "
                "(SELECT seq FROM entries WHERE stream = ? AND leased_until < ? ORDER BY seq LIMIT ?) "
                "RETURNING seq, stream, fields",
                (now + self.lease_s, stream, now, limit),
            ).fetchall()
        return sorted((SpooledEntry(int(seq), stream, _unpack(fields)) for seq, stream, fields in rows),
                      key=lambda entry: entry.seq)  # fmt: skip

    def remove(self, seqs: Sequence[int]) -> None:
        """Delete rows whose entries Redis confirmed."""
        if seqs:
            with self._transaction() as connection:
                connection.executemany("DELETE FROM entries WHERE seq = ?", [(seq,) for seq in seqs])

    def release(self, seqs: Sequence[int]) -> None:
        """Give back the lease on rows that could not be replayed, so they are taken again first."""
        if seqs:
            with self._transaction() as connection:
                connection.executemany("UPDATE entries SET leased_until = 0 WHERE seq = ?", [(seq,) for seq in seqs])

    def depth(self, stream: str) -> SpoolDepth:
        """Rows held for `stream`, their bytes, and the oldest row's age; read in one snapshot."""
        connection = self._connection()
        connection.execute("BEGIN")
        try:
            totals = connection.execute("SELECT entries, bytes FROM totals WHERE stream = ?", (stream,)).fetchone()
            oldest = connection.execute(
                "SELECT spooled_at FROM entries WHERE stream = ? ORDER BY seq LIMIT 1", (stream,)
            ).fetchone()
        finally:
            connection.execute("COMMIT")
        count, size = totals if totals is not None else (0, 0)
        age = max(0.0, time.time() - oldest[0]) if oldest is not None else 0.0
        return SpoolDepth(int(count), int(size), age)

    def close(self) -> None:
        """Close every connection this spool opened (in any thread)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()
