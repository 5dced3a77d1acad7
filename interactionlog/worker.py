"""One consumer's loop: read a batch, validate it, persist it, then acknowledge it. Knows nothing of signals.

The order is what makes delivery at-least-once and storage exactly-once: an entry is acknowledged only after
the transaction holding it committed (or after its dead letter was written, in the same MULTI as the XACK).
A crash anywhere before the XACK leaves the entry pending; this consumer re-reads its own pending entries on
start and after every connection loss, and the XAUTOCLAIM sweep of any consumer takes over those of a
consumer that is gone. The idempotent insert turns the resulting redeliveries into skipped duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from .errors import AttemptAbandonedError, PermanentEntryError, TransientError
from .metrics import WorkerMetrics
from .model import StoredRow, decode_entry
from .retry import Backoff, OutageLog
from .store import PersistResult, Store
from .streams import DeadLetter, Entry, StreamGroup

log = structlog.get_logger(__name__)

Source = Literal["new", "pending", "claimed"]


@dataclass(frozen=True)
class ConsumerOptions:
    """The knobs of one consumer, taken from Settings by the daemon."""

    batch_size: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_interval_ms: int = 5_000
    max_deliveries: int = 5
    max_record_bytes: int = 256 * 1024
    retry_max_backoff_s: float = 10.0
    # Fault-injection hook for the test suites only: SIGKILL this process at a named point of the first
    # batch that reaches it ("after_read": entries delivered, nothing stored; "after_commit": rows committed,
    # nothing acknowledged). Set through INTERACTIONLOG_TEST_CRASH_AT; never set in production.
    crash_at: str | None = None


@dataclass
class BatchOutcome:
    """What happened to one batch, for the canonical log line and for tests."""

    source: Source
    entries: int = 0
    persisted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    deleted: int = 0


class Consumer:
    """One named consumer of the group, running until `stopping` is set."""

    def __init__(
        self,
        name: str,
        *,
        streams: StreamGroup,
        store: Store,
        metrics: WorkerMetrics,
        outages: OutageLog,
        stopping: asyncio.Event,
        options: ConsumerOptions,
    ) -> None:
        self.name = name
        self.streams = streams
        self.store = store
        self.metrics = metrics
        self.outages = outages
        self.stopping = stopping
        self.options = options
        self._labels = metrics.labels()
        self._abandoned: set[asyncio.Task[PersistResult]] = set()  # hung attempts, kept referenced until they end
        self._backoff = Backoff(max_s=options.retry_max_backoff_s)
        # Start with our own pending entries: after a restart under the same name they are ours to finish.
        self._read_pending = True
        # Stagger the sweeps of consumers started together so they do not all XAUTOCLAIM at once.
        self._next_sweep = time.monotonic() + random.uniform(0, options.claim_interval_ms / 1000)

    async def run(self) -> None:
        """Read and handle batches until stopped; transient failures are retried, never raised."""
        structlog.contextvars.bind_contextvars(consumer=self.name)
        log.info("consumer_started", stream=self.streams.stream, group=self.streams.group)
        while not self.stopping.is_set():
            try:
                await self.step()
                self._backoff.reset()
            except TransientError as error:
                self._failed(error)
                self._read_pending = True  # a read may have delivered entries we never received
                await self._pause(self._backoff.next_delay())
            except Exception:
                # The outer guard: a bug must not kill the consumer. Its entries stay pending and come back
                # (counted as deliveries), so a poison entry ends in the dead-letter stream, not in a loop.
                log.exception("consumer_step_crashed")
                self._read_pending = True
                await self._pause(self._backoff.next_delay())
        log.info("consumer_stopped")

    async def step(self) -> BatchOutcome | None:
        """One unit of work: a due sweep, else one read (own pending entries first) and its batch."""
        if time.monotonic() >= self._next_sweep and not self.outages.is_down("postgres"):
            await self.sweep()
            self._next_sweep = time.monotonic() + self.options.claim_interval_ms / 1000
            return None
        pending = self._read_pending
        entries = await self.streams.read(
            self.name, count=self.options.batch_size, block_ms=self.options.block_ms, pending=pending
        )
        self.outages.succeeded("redis")
        if pending and len(entries) < self.options.batch_size:
            self._read_pending = False  # this read reached the end of our pending list
        if not entries:
            return None
        return await self.handle(entries, "pending" if pending else "new")

    async def sweep(self) -> int:
        """Take over entries idle longer than claim_idle_ms (their consumer crashed or froze), following
        the XAUTOCLAIM cursor to 0-0; returns how many were claimed."""
        cursor, claimed = "0-0", 0
        while True:
            page = await self.streams.claim(
                self.name,
                min_idle_ms=self.options.claim_idle_ms,
                cursor=cursor,
                count=self.options.batch_size,
            )
            if page.deleted_ids:
                # Redis already dropped these from the pending list: trimmed or XDELed before anyone stored them.
                self.metrics.acked_after_deletion.labels(**self._labels).inc(len(page.deleted_ids))
                log.warning("pending_entries_deleted", count=len(page.deleted_ids), first_id=page.deleted_ids[0])
            if page.entries:
                claimed += len(page.entries)
                self.metrics.reclaimed.labels(**self._labels).inc(len(page.entries))
                await self.handle(page.entries, "claimed")
            cursor = page.next_cursor
            if cursor == "0-0" or self.stopping.is_set():
                return claimed

    async def handle(self, entries: list[Entry], source: Source) -> BatchOutcome:
        """Validate, persist and settle one batch. Returns only once every entry is acked or dead-lettered."""
        outcome = BatchOutcome(source, entries=len(entries))
        deleted_ids = [entry.id for entry in entries if entry.deleted]
        live = [entry for entry in entries if not entry.deleted]
        deliveries = (
            {} if source == "new" else await self.streams.delivery_counts(self.name, live)
        )  # a fresh read is a first delivery; only redeliveries cost an XPENDING
        rows, dead = self._triage(live, deliveries)
        async with self._holding([entry.id for entry in live]):
            self._maybe_crash("after_read")
            started = time.perf_counter()
            result = await self._persist(rows)
            persist_s = time.perf_counter() - started
            by_id = {entry.id: entry for entry in live}
            for row, why in result.refused:
                entry = by_id[row.stream_entry_id]
                dead.append(DeadLetter(entry, "refused_by_database", why, deliveries.get(entry.id, 1)))
            refused_ids = {row.stream_entry_id for row, _ in result.refused}
            ack_ids = [row.stream_entry_id for row in rows if row.stream_entry_id not in refused_ids] + deleted_ids
            if rows:
                self._maybe_crash("after_commit")
            await self._settle(ack_ids, dead)
        outcome.persisted, outcome.duplicates = result.inserted, result.duplicates
        outcome.dead_lettered, outcome.deleted = len(dead), len(deleted_ids)
        self._record(outcome, rows, dead, persist_s)
        return outcome

    def _triage(self, live: list[Entry], deliveries: dict[str, int]) -> tuple[list[StoredRow], list[DeadLetter]]:
        """Split entries into rows to store and dead letters (poison, or never storable)."""
        rows: list[StoredRow] = []
        dead: list[DeadLetter] = []
        for entry in live:
            delivered = deliveries.get(entry.id, 1)
            if delivered > self.options.max_deliveries:
                dead.append(DeadLetter(entry, "max_deliveries", self._poison_message(delivered), delivered))
                continue
            try:
                rows.append(decode_entry(entry.id, entry.fields, self.options.max_record_bytes))
            except PermanentEntryError as error:
                dead.append(DeadLetter(entry, error.reason, str(error), delivered))
        return rows, dead

    @contextlib.asynccontextmanager
    async def _holding(self, ids: list[str]) -> AsyncIterator[None]:
        """Heartbeat the batch's entries while it is in hand. Without this, a batch retried through a long
        PostgreSQL outage would look abandoned: other consumers would claim it again and again, and each claim
        counts as a delivery, until max_deliveries dead-lettered perfectly good entries."""
        heartbeat = asyncio.create_task(self._heartbeat(ids))
        try:
            yield
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, ids: list[str]) -> None:
        interval_s = self.options.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            with contextlib.suppress(TransientError):  # Redis away: then nobody can claim them either
                await self.streams.touch(self.name, ids)

    async def _persist(self, rows: list[StoredRow]) -> PersistResult:
        """Persist, retrying through outages for as long as it takes (the daemon's shutdown timeout is the
        only bound): giving up would mean acknowledging nothing and re-reading the same batch anyway."""
        backoff = Backoff(max_s=self.options.retry_max_backoff_s)
        attempt_timeout_s = self.options.claim_idle_ms / 1000
        while True:
            try:
                result = await self._persist_attempt(rows, attempt_timeout_s)
            except AttemptAbandonedError as error:
                self._failed(error, rows=len(rows))
                # Each abandonment doubles the next attempt's allowance (up to 32x), so a batch that is merely
                # slow, not hung, gets through eventually instead of being abandoned forever.
                attempt_timeout_s = min(attempt_timeout_s * 2, self.options.claim_idle_ms / 1000 * 32)
                continue
            except TransientError as error:
                self._failed(error, rows=len(rows))
                await asyncio.sleep(backoff.next_delay())
                continue
            if rows:
                self.outages.succeeded("postgres")
            return result

    async def _persist_attempt(self, rows: list[StoredRow], timeout_s: float) -> PersistResult:
        """One attempt, abandoned if it takes longer than `timeout_s` (claim_idle_ms at first).

        A half-open connection (a frozen server, a silent network partition) never fails; it just never
        answers. The heartbeat keeps other consumers away from a batch in hand, so the holder must give up on
        such a connection itself. Abandoned, not awaited: cancelling psycopg mid-COPY would wait on the same
        dead server. The pool hands the retry a fresh connection; a late commit of the abandoned attempt is
        harmless, the insert being idempotent.
        """
        attempt = asyncio.create_task(self.store.persist_batch(rows))
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

    async def _settle(self, ack_ids: list[str], dead: list[DeadLetter]) -> None:
        """Dead-letter and XACK, retrying through Redis outages: the rows are committed, so a redelivery after
        a crash here is harmless (skipped as a duplicate), but giving up early would only cause one."""
        backoff = Backoff(max_s=self.options.retry_max_backoff_s)
        while True:
            try:
                await self.streams.settle(ack_ids, dead, self.name)
            except TransientError as error:
                self._failed(error, acks=len(ack_ids))
                await asyncio.sleep(backoff.next_delay())
                continue
            self.outages.succeeded("redis")
            return

    def _record(self, outcome: BatchOutcome, rows: list[StoredRow], dead: list[DeadLetter], persist_s: float) -> None:
        labels = self._labels
        metrics = self.metrics
        metrics.batch_size.labels(**labels).observe(outcome.entries)
        if rows:
            metrics.persist_seconds.labels(**labels).observe(persist_s)
            now = datetime.now(UTC)
            latency = metrics.end_to_end_seconds.labels(**labels)
            for row in rows:
                latency.observe(max((now - row.timestamp).total_seconds(), 0.0))
        metrics.persisted.labels(**labels).inc(outcome.persisted)
        metrics.duplicates.labels(**labels).inc(outcome.duplicates)
        if outcome.deleted:
            metrics.acked_after_deletion.labels(**labels).inc(outcome.deleted)
        for letter in dead:
            metrics.dead_lettered.labels(**labels, reason=letter.reason).inc()
            log.warning(
                "entry_dead_lettered",
                entry_id=letter.entry.id,
                reason=letter.reason,
                error=letter.error,
                deliveries=letter.deliveries,
            )
        log.info(
            "batch_processed",
            source=outcome.source,
            entries=outcome.entries,
            persisted=outcome.persisted,
            duplicates=outcome.duplicates,
            dead_lettered=outcome.dead_lettered,
            deleted=outcome.deleted,
            persist_ms=round(persist_s * 1000, 2),
        )

    def _poison_message(self, delivered: int) -> str:
        return (
            f"delivered {delivered} times without being acknowledged (max_deliveries is "
            f"{self.options.max_deliveries}): it repeatedly crashed or stalled the consumer that held it; "
            "inspect it, then `interactionlog dlq replay` it once fixed"
        )

    def _maybe_crash(self, point: str) -> None:
        if self.options.crash_at == point:
            log.warning("test_crash_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _failed(self, error: TransientError, **context: object) -> None:
        self.metrics.transient_errors.labels(**self._labels, component=error.component).inc()
        self.outages.failed(error, **context)

    async def _pause(self, delay_s: float) -> None:
        """Sleep between retries, waking early when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=delay_s)
