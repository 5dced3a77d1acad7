"""One consumer's loop: read a batch, triage it, persist it, settle it. Knows nothing of signals.

The order is what makes delivery at-least-once and storage exactly-once: an entry is acknowledged only after
the transaction holding it committed (or after its dead letter was written, in the same MULTI as the XACK).
A crash anywhere before the XACK leaves the entry pending; this consumer re-reads its own pending entries on
start and after every connection loss, and the XAUTOCLAIM sweep of any consumer takes over those of a
consumer that is gone. The idempotent insert turns the resulting redeliveries into skipped duplicates.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, eq
from typing import Literal

import structlog

from ..errors import AttemptAbandonedError, RedisRefusedError, TransientError
from ..metrics import WorkerMetrics
from ..record import EXACT_IDENTITY, IDENTITY_FIELD
from ..retry import Backoff, OutageLog, sleep_unless_stopped, until_done
from .dead_letters import DeadLetter
from .decode import StoredRow, decode_entries
from .store import PersistResult, Store
from .streams import ENTRY_FIELDS, ENTRY_ID, Entry, Settlement, StreamGroup, total_size_bytes

log = structlog.get_logger(__name__)

# StoredRow.stream_entry_id and .timestamp, as C functions for map() (Entry's are `streams.ENTRY_ID`, `ENTRY_FIELDS`).
_STREAM_ENTRY_ID, _TIMESTAMP = attrgetter("stream_entry_id"), attrgetter("timestamp")

Source = Literal["new", "pending", "claimed"]


@dataclass(frozen=True)
class ConsumerOptions:
    """The knobs of one consumer; the daemon fills them from Settings, which holds every default."""

    batch_size: int
    batch_max_bytes: int
    block_ms: int
    claim_idle_ms: int
    claim_interval_ms: int
    max_deliveries: int
    max_record_bytes: int
    retry_max_backoff_s: float
    scrub_payloads: bool = True  # the worker's pass of interactionlog.scrub, for records of any publisher
    # Fault-injection hook for the test suites only: SIGKILL this process at a named point of the first
    # batch that reaches it ("after_read": entries delivered, nothing stored; "after_commit": rows committed,
    # nothing acknowledged; "consumer_task": the first consumer task ends past its guard, once per process).
    # Set through INTERACTIONLOG_TEST_CRASH_AT; never set in production.
    crash_at: str | None = None


class _InjectedTaskDeath(BaseException):
    """Raised by the test hook past `Consumer.run`'s guard, which catches Exception only."""

    happened = False


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
        self._backoff = Backoff(max_s=options.retry_max_backoff_s)
        # Start with our own pending entries: after a restart under the same name they are ours to finish.
        self._read_pending = True
        # Stagger the sweeps of consumers started together so they do not all XAUTOCLAIM at once.
        self._next_sweep = time.monotonic() + random.uniform(0, options.claim_interval_ms / 1000)

    async def run(self) -> None:
        """Read and handle batches until stopped; transient failures are retried, never raised."""
        structlog.contextvars.bind_contextvars(consumer=self.name)
        log.info("consumer_started", stream=self.streams.stream, group=self.streams.group)
        if self.options.crash_at == "consumer_task" and not _InjectedTaskDeath.happened:
            _InjectedTaskDeath.happened = True  # once per process: the restarted consumer must live
            raise _InjectedTaskDeath("test hook: the consumer task dies past its own guard")
        while not self.stopping.is_set():
            try:
                await self.step()
                self._backoff.reset()
            except TransientError as error:
                self._failed(error)
                if not isinstance(error, RedisRefusedError):
                    # A lost connection may have delivered entries we never received. A refusal (an error
                    # reply) delivered nothing, and re-reading would only raise delivery counts.
                    self._read_pending = True
                await sleep_unless_stopped(self._backoff.next_delay(), self.stopping)
            except Exception:
                # The outer guard: a bug must not kill the consumer. Its entries stay pending and come back
                # (counted as deliveries), so a poison entry ends in the dead-letter stream, not in a loop.
                log.exception("consumer_step_crashed")
                self._read_pending = True
                await sleep_unless_stopped(self._backoff.next_delay(), self.stopping)
        log.info("consumer_stopped")

    async def step(self) -> BatchOutcome | None:
        """One unit of work: a due sweep, else one read (own pending entries first) and its batch."""
        if time.monotonic() >= self._next_sweep and not self.outages.is_down("postgres"):
            await self.sweep()
            self._next_sweep = time.monotonic() + self.options.claim_interval_ms / 1000
            return None
        pending = self._read_pending
        entries, drained = await self._read_batch(pending)
        self.outages.succeeded("redis")
        if pending and drained:
            self._read_pending = False  # this read reached the end of our pending list
        if not entries:
            return None
        return await self.handle(entries, "pending" if pending else "new")

    async def _read_batch(self, pending: bool) -> tuple[list[Entry], bool]:
        """One batch of at most batch_size entries and batch_max_bytes of entry data, and whether the source ran
        dry. Read in slices of as many entries as the remaining byte budget holds at max_record_bytes each, so
        even a backlog of maximum-size records never outgrows the budget; small records take a few more
        (non-blocking) round trips to fill the batch. Only the first read of new entries blocks."""
        entries: list[Entry] = []
        budget = self.options.batch_max_bytes
        while True:
            room = min(self.options.batch_size - len(entries), max(budget // self.options.max_record_bytes, 1))
            piece = await self.streams.read(
                self.name,
                count=room,
                block_ms=None if entries else self.options.block_ms,
                pending=pending,
                after=entries[-1].id if entries else "0",
            )
            entries += piece
            budget -= total_size_bytes(piece)
            if len(piece) < room:
                return entries, True
            if len(entries) >= self.options.batch_size or budget < self.options.max_record_bytes:
                return entries, False

    async def sweep(self) -> int:
        """Take over entries idle longer than claim_idle_ms (their consumer crashed or froze), following
        the XAUTOCLAIM cursor to 0-0; returns how many were claimed."""
        cursor, claimed = "0-0", 0
        while True:
            page = await self.streams.claim(
                self.name, min_idle_ms=self.options.claim_idle_ms, cursor=cursor, count=self._claim_count()
            )
            if page.deleted_ids:
                # Redis already dropped these from the pending list: trimmed or XDELed before anyone stored them.
                self.metrics.acked_after_deletion.labels(**self.metrics.labels()).inc(len(page.deleted_ids))
                self._lost_while_pending(page.deleted_ids)
            if page.entries:
                claimed += len(page.entries)
                self.metrics.reclaimed.labels(**self.metrics.labels()).inc(len(page.entries))
                await self.handle(page.entries, "claimed")
            cursor = page.next_cursor
            if cursor == "0-0" or self.stopping.is_set():
                return claimed

    def _claim_count(self) -> int:
        """Entries per XAUTOCLAIM page: each page is handled as a batch, so it keeps to the batch's byte bound."""
        return min(self.options.batch_size, max(self.options.batch_max_bytes // self.options.max_record_bytes, 1))

    async def handle(self, entries: list[Entry], source: Source) -> BatchOutcome:
        """Triage, persist and settle one batch. Returns only once every entry is acked or dead-lettered."""
        live, deleted_ids = entries, []
        if not all(map(ENTRY_FIELDS, entries)):  # some were deleted while pending (Entry.deleted)
            deleted_ids = [entry.id for entry in entries if entry.deleted]
            live = [entry for entry in entries if not entry.deleted]
        if deleted_ids:
            self._lost_while_pending(deleted_ids)
        # A fresh read is a first delivery; only redeliveries cost an XPENDING, retried in place (re-reading
        # the batch instead would count one more delivery).
        delivery_counts = {} if source == "new" else await self._delivery_counts(live)
        rows, exact, dead = self._triage(live, delivery_counts)
        held = list(map(ENTRY_ID, live))
        async with self.streams.holding(self.name, held, claim_idle_ms=self.options.claim_idle_ms):
            self._maybe_crash("after_read")
            started = time.perf_counter()
            result = await self._persist(rows, exact)
            persist_s = time.perf_counter() - started
            dead += self._refused_letters(live, result, delivery_counts)
            ack_ids = list(map(_STREAM_ENTRY_ID, rows))
            if result.refused:
                refused_ids = {row.stream_entry_id for row, _ in result.refused}
                ack_ids = [entry_id for entry_id in ack_ids if entry_id not in refused_ids]
            ack_ids += deleted_ids
            if rows:
                self._maybe_crash("after_commit")
            await self._settle(ack_ids, dead)
        outcome = BatchOutcome(source, len(entries), result.inserted, result.duplicates, len(dead), len(deleted_ids))
        self._report(outcome, rows, dead, persist_s)
        return outcome

    async def _delivery_counts(self, live: list[Entry]) -> dict[str, int]:
        counts = await until_done(
            lambda: self.streams.delivery_counts(self.name, live),
            failed=self._failed,
            max_backoff_s=self.options.retry_max_backoff_s,
        )
        self.outages.succeeded("redis")
        return counts

    def _lost_while_pending(self, ids: list[str]) -> None:
        """Entries removed from the stream (MAXLEN, XTRIM, XDEL) while delivered and unacknowledged: their data is
        gone, so unless a crashed consumer committed them just before dying, they are lost. Counted and said."""
        self.metrics.lost_while_pending.labels(**self.metrics.labels()).inc(len(ids))
        log.error(
            "pending_entries_lost",
            count=len(ids),
            first_id=ids[0],
            last_id=ids[-1],
            hint="entries delivered but not yet stored were removed from the stream (MAXLEN cap or XTRIM/XDEL): "
            "raise --stream-maxlen, add workers, or stop trimming by hand",
        )

    def _triage(
        self, live: list[Entry], delivery_counts: dict[str, int]
    ) -> tuple[list[StoredRow], list[bool], list[DeadLetter]]:
        """Split entries into rows to store, with whether each is of exact identity (`Store.persist_batch`), and
        dead letters (poison, or never storable), in the order of their entries. Decoding and the identity marks run
        over the whole batch at once (`decode_entries`, C loops), not entry by entry (benchmarks/NOTES.md)."""
        dead: list[DeadLetter] = []
        kept = live
        if delivery_counts:  # a redelivery: poison entries are dead-lettered unread
            kept = []
            for entry in live:
                delivery_count = delivery_counts.get(entry.id, 1)
                if delivery_count > self.options.max_deliveries:
                    message = self._poison_message(delivery_count)
                    dead.append(DeadLetter(entry, "max_deliveries", message, delivery_count))
                else:
                    kept.append(entry)
        prefix = self.streams.identity_prefix  # "" with one stream: entry ids differ per shard only
        ids = list(map(ENTRY_ID, kept))
        fields = list(map(ENTRY_FIELDS, kept))
        rows, errors = decode_entries(
            ids, fields, self.options.max_record_bytes, scrub=self.options.scrub_payloads, identity_prefix=prefix
        )
        marks = list(map(dict.get, fields, repeat(IDENTITY_FIELD)))
        if errors:
            for position, error in errors.items():
                entry = kept[position]
                dead.append(DeadLetter(entry, error.reason, str(error), delivery_counts.get(entry.id, 1)))
            if len(dead) > len(errors):  # poison entries too: the dead letters in the order of their entries
                order = {entry.id: index for index, entry in enumerate(live)}
                dead.sort(key=lambda letter: order[letter.entry.id])
            ids = [entry_id for position, entry_id in enumerate(ids) if position not in errors]
            marks = [mark for position, mark in enumerate(marks) if position not in errors]
        exact = list(map(eq, marks, repeat(EXACT_IDENTITY)))
        if not all(exact):
            # Marked by its publisher, or identified by this entry's id (a record sent without interaction_id):
            # either way every copy of it carries its timestamp.
            for position, row in enumerate(rows):
                exact[position] = exact[position] or row.interaction_id == prefix + ids[position]
        return rows, exact, dead

    async def _persist(self, rows: list[StoredRow], exact: list[bool]) -> PersistResult:
        """Persist, retrying through outages for as long as it takes (the daemon's shutdown timeout is the
        only bound): giving up would mean acknowledging nothing and re-reading the same batch anyway.

        Each attempt is abandoned once it outlives its allowance (claim_idle_ms at first); each abandonment
        doubles the next allowance (up to 32x), so a batch that is merely slow, not hung, gets through.
        """
        allowance_s = self.options.claim_idle_ms / 1000

        async def attempt() -> PersistResult:
            nonlocal allowance_s
            try:
                return await self.store.persist_batch_within(rows, allowance_s, exact)
            except AttemptAbandonedError:
                allowance_s = min(allowance_s * 2, self.options.claim_idle_ms / 1000 * 32)
                raise

        result = await until_done(
            attempt,
            failed=lambda error: self._failed(error, rows=len(rows)),
            max_backoff_s=self.options.retry_max_backoff_s,
        )
        if rows:
            self.outages.succeeded("postgres")
        return result

    async def _settle(self, ack_ids: list[str], dead: list[DeadLetter]) -> None:
        """Dead-letter and XACK, retrying through Redis outages and refusals (OOM, READONLY, ...) in place: the
        rows are committed, so a redelivery after a crash here is harmless (skipped as a duplicate), but giving
        up early would only cause one, and count a delivery towards max_deliveries. Each retry does only what the
        attempts before it did not (`streams.Settlement`): no dead letter is written twice."""
        settlement = Settlement(ack_ids, dead)
        await until_done(
            lambda: self.streams.settle(settlement, self.name),
            failed=lambda error: self._failed(error, acks=len(ack_ids)),
            max_backoff_s=self.options.retry_max_backoff_s,
        )
        self.outages.succeeded("redis")
        if settlement.trimmed:
            self.metrics.dead_letters_trimmed.labels(**self.metrics.labels()).inc(settlement.trimmed)
            log.error(
                "dead_letters_trimmed",
                count=settlement.trimmed,
                dead_letter_stream=self.streams.dead_letter_stream,
                hint="the dead-letter stream reached --dead-letter-maxlen and its oldest dead letters were removed "
                "for good: replay or inspect dead letters sooner, or raise the cap",
            )
        if settlement.trim_uncounted:
            log.error(
                "dead_letters_trim_uncounted",
                dead_letter_stream=self.streams.dead_letter_stream,
                hint="a settle's reply was lost after Redis ran it, and with it how many old dead letters its "
                "XTRIM removed: dead_letters_trimmed_total is short by that many; compare XINFO STREAM's "
                "entries-added with the dead letters replayed and kept",
            )

    @staticmethod
    def _refused_letters(live: list[Entry], result: PersistResult, delivery_counts: dict[str, int]) -> list[DeadLetter]:
        if not result.refused:
            return []
        by_id = {entry.id: entry for entry in live}
        return [
            DeadLetter(
                by_id[row.stream_entry_id], "refused_by_database", why, delivery_counts.get(row.stream_entry_id, 1)
            )
            for row, why in result.refused
        ]

    def _report(self, outcome: BatchOutcome, rows: list[StoredRow], dead: list[DeadLetter], persist_s: float) -> None:
        """The batch's metrics, one warning per dead letter, and the canonical log line."""
        self.metrics.record_batch(
            entries=outcome.entries,
            persisted=outcome.persisted,
            duplicates=outcome.duplicates,
            deleted=outcome.deleted,
            dead_letter_reasons=[letter.reason for letter in dead],
            stored_timestamps=list(map(_TIMESTAMP, rows)),
            persist_s=persist_s if rows else None,
        )
        for letter in dead:
            log.warning(
                "entry_dead_lettered",
                entry_id=letter.entry.id,
                reason=letter.reason,
                error=letter.error,
                delivery_count=letter.delivery_count,
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

    def _poison_message(self, delivery_count: int) -> str:
        return (
            f"delivered {delivery_count} times without being acknowledged (max_deliveries is "
            f"{self.options.max_deliveries}): it repeatedly crashed or stalled the consumer that held it; "
            "inspect it, then `interactionlog dlq replay` it once fixed"
        )

    def _maybe_crash(self, point: str) -> None:
        if self.options.crash_at == point:
            log.warning("test_crash_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    def _failed(self, error: TransientError, **context: object) -> None:
        self.metrics.transient_errors.labels(**self.metrics.labels(), component=error.component).inc()
        self.outages.failed(error, **context)
