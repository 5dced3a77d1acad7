"""The background publisher: `publish` returns at once, a thread sends batches, a spool keeps what cannot be sent.

`publish(record)` validates the record in the caller's thread (a few microseconds, no network or disk I/O), puts
it on an in-memory queue and returns its `interaction_id`; `publish_deferred(build)` only appends. One daemon
thread takes batches off the queue, builds, scrubs and encodes them, and XADDs them, pipelined, through a
synchronous `Publisher` (whatever transport `Publisher.from_url` built). What cannot be sent goes to the `Spool`
on local disk:

- while Redis is unreachable (a circuit breaker stops the thread from trying on every batch);
- when the in-memory queue is full (`queue_max`): the caller's thread writes that record to the spool (one
  SQLite transaction, tens of microseconds whatever the spool holds);
- at exit (`close`, also run by `atexit`): what the thread could not send within `close_timeout_s`.

When the spool itself fails (its database locked past its busy timeout, a disk error), nothing raises into the
caller and nothing is lost at once: the entries wait in memory, at most `queue_max` of them, and the thread
spools or sends them first at its next step; beyond that bound the oldest are dropped, counted
(``records_dropped_total{reason="spool_error"}``) and logged once per episode.

While the spool holds entries for this stream, new batches are appended behind them and the thread replays the
spool oldest first, so records reach Redis in the order they were published. Replay is idempotent: each record
carries its `interaction_id`, and the worker stores a record once however often it is XADDed.

What a SIGKILL of the process can lose: the records still in the in-memory queue or in the batch being sent,
that is the records published since the thread last took a batch: while Redis answers, those of the last
`linger_s` (20 ms) plus the batch in flight; while it does not, the same, since each batch is spooled at once
(a frozen Redis holds one batch in flight for up to about 2 x the publisher's `timeout_s`). Everything the spool
committed survives
(see `client.spool` for its fsync policy).
"""

from __future__ import annotations

import atexit
import collections
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import msgspec
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from ..errors import InvalidRecordError, PublishError
from ..logs import library_logger
from ..record import (
    DATA_FIELD,
    Interaction,
    encode_record,
    entry_fields,
    format_timestamp,
    has_exact_identity,
    splice_fields,
    validate_record,
)
from ..redact import redact_text
from ..scrub import DEFAULT_SCRUBBER, SCRUBBED_NOTE, Scrubber, might_hold_secrets
from ..settings import DEFAULT_MAX_RECORD_BYTES, DEFAULT_REDIS_URL, DEFAULT_STREAM
from ..spans import Columns
from .breaker import CircuitBreaker
from .metrics import ClientMetrics
from .plain import check_valid, storable_as_written
from .publisher import Publisher, Record, encode_fields
from .spool import DEFAULT_MAX_BYTES, FsyncPolicy, FullPolicy, Spool
from .truncate import truncate_to_fit

log = library_logger(__name__)

Oversize = Literal["refuse", "truncate"]
_Item = TypeVar("_Item")
Entry = dict[bytes, bytes]

DEFAULT_QUEUE_MAX = 10_000
DEFAULT_BATCH_MAX = 500
DEFAULT_SPOOL_INTERVAL_S = 1.0
DEFAULT_CLOSE_TIMEOUT_S = 5.0
DEFAULT_LINGER_S = 0.02
# The longest the background thread encodes before it offers the GIL to the MCP's own threads.
YIELD_EVERY_S = 0.0001


# Interaction ids drawn from a PRNG seeded by the OS (and re-seeded in a forked child, so that two processes
# never share a sequence): unique like uuid4, several times cheaper, and they need not be secret.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


# The bits `uuid.UUID(int=..., version=4)` sets and clears: the variant (RFC 4122) and the version (4).
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def fast_interaction_id() -> str:
    """A random version-4 UUID as text, the text `str(uuid.UUID(int=<128 random bits>, version=4))` gives, cheaper
    than `uuid.uuid4()` and without building the UUID object (1.9 us against 0.6 on a loaded machine)."""
    digits = "%032x" % (_ids.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)  # the fastest format
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def invalid_fields(error: BaseException) -> list[str]:
    """The names of the fields a validation error or an encoding refusal is about, without their values (which may
    be secrets)."""
    cause = error.__cause__ if isinstance(error.__cause__, ValidationError) else error
    if isinstance(cause, ValidationError):
        return sorted({".".join(str(part) for part in item["loc"]) for item in cause.errors()})
    return list(error.fields) if isinstance(error, InvalidRecordError) else []


def _validated(body: bytes, defaults: dict[str, str]) -> Interaction:
    """The record whose JSON is `body` (as `to_json` wrote a dict of JSON's own types), with `defaults` (text)
    spliced in, validated by the model straight from the JSON: the same record as the model makes of the dict,
    without decoding it to Python first (3 us of the thread's time for a 700-byte record, on a loaded machine)."""
    if not defaults:
        return Interaction.model_validate_json(body)
    record = Interaction.model_validate_json(splice_fields(body.decode(), defaults).encode())
    # Made by the publisher, not written by the caller: unset, as the model's own defaults would be (a stamped
    # timestamp must not mark the entry `identity exact`, see record.has_exact_identity).
    record.__pydantic_fields_set__.difference_update(defaults)
    return record


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """A plain record `plain.check_valid` accepted: its JSON `body` as `to_json` wrote it (the scrubbed note in it
    when the publisher scrubs), the `defaults` it lacks as text to splice in, its `interaction_id`, and whether its
    author wrote the timestamp (`exact`, see record.has_exact_identity)."""

    body: bytes
    defaults: dict[str, str]
    interaction_id: str
    exact: bool

    def validated(self) -> Interaction:
        """The record as the model makes it (see `_validated`), for the model's path."""
        return _validated(self.body, self.defaults)

    def data(self) -> bytes:
        """The record's JSON with its defaults spliced in: the caller's own values, as written."""
        if not self.defaults:
            return self.body
        return splice_fields(self.body.decode(), self.defaults).encode()


def _checked_record(body: bytes, columns: Columns) -> CheckedRecord:
    """`check_valid`'s answer as a queue item, with the defaults the record lacks made now."""
    defaults: dict[str, str] = {}
    interaction_id = columns.interaction_id
    if interaction_id is msgspec.UNSET:
        interaction_id = defaults["interaction_id"] = fast_interaction_id()
    exact = columns.timestamp is not msgspec.UNSET
    if not exact:  # as text, which the model reads back as the same instant
        defaults["timestamp"] = format_timestamp(datetime.now(UTC))
    return CheckedRecord(body, defaults, interaction_id, exact)


# What the queue holds: a record the model made, one `check_valid` accepted, or a builder (`publish_deferred`).
_QueueItem = Interaction | CheckedRecord | Callable[[], Mapping[str, Any]]


def default_spool_dir() -> Path:
    """`$XDG_STATE_HOME/interactionlog/spool`, else `~/.local/state/interactionlog/spool`."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "interactionlog" / "spool"


def _drained(items: collections.deque[_Item]) -> Iterator[_Item]:
    """Pop `items` oldest first until it is empty; safe while another thread pops from it too (a deque's
    `popleft` is atomic: what the other thread took is simply not yielded here)."""
    while True:
        try:
            yield items.popleft()
        except IndexError:
            return


class BackgroundPublisher:
    """Publishes records from any thread without waiting on the network; see the module docstring.

    `sender` is a synchronous `Publisher` (used from the background thread only); `spool` may be None, in which
    case records that cannot be sent are dropped, counted and logged. `oversize="truncate"` (the default) truncates
    the payloads of a record over the size cap, with a marker and the original size; "refuse" drops it, counted.
    """

    def __init__(
        self,
        sender: Publisher,
        *,
        spool: Spool | None,
        queue_max: int = DEFAULT_QUEUE_MAX,
        batch_max: int = DEFAULT_BATCH_MAX,
        scrubber: Scrubber = DEFAULT_SCRUBBER,
        oversize: Oversize = "truncate",
        breaker: CircuitBreaker | None = None,
        spool_interval_s: float = DEFAULT_SPOOL_INTERVAL_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        linger_s: float = DEFAULT_LINGER_S,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if queue_max < 1 or batch_max < 1:
            raise ValueError(f"queue_max and batch_max must be at least 1, got {queue_max} and {batch_max}")
        if oversize not in ("refuse", "truncate"):
            raise ValueError(f"oversize must be 'refuse' or 'truncate', got {oversize!r}")
        self.sender = sender
        self.stream: str = sender.stream
        self.spool = spool
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.scrubber = scrubber
        self.oversize: Oversize = oversize
        self.breaker = breaker if breaker is not None else CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0)
        self.spool_interval_s = spool_interval_s
        self.close_timeout_s = close_timeout_s
        self.linger_s = linger_s
        self.metrics = ClientMetrics.create(registry)
        self.url: str | None = None  # set by from_url: its secrets are masked in what this publisher logs
        self.metrics.queue_depth.set_function(lambda: len(self._queue))
        self._queue: collections.deque[_QueueItem] = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stopping = threading.Event()
        self._closed = False
        # Entries of this stream wait in the spool (ours, or left by another process or an earlier run):
        # new batches then queue up behind them so that order is kept.
        self._backlog = spool is not None
        self._unavailable_since: float | None = None
        self._dropping = False
        # Entries a failed spool write could not keep, oldest first; the thread tries them first at its next step.
        self._unsaved: collections.deque[Entry] = collections.deque()
        self._spool_failing = False
        self._thread = threading.Thread(target=self._run, name=f"interactionlog-publisher-{self.stream}", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_REDIS_URL,
        *,
        stream: str = DEFAULT_STREAM,
        spool_dir: str | os.PathLike[str] | Literal[False] | None = None,
        spool_max_bytes: int = DEFAULT_MAX_BYTES,
        spool_full_policy: FullPolicy = "drop_newest",
        spool_fsync: FsyncPolicy = "normal",
        queue_max: int = DEFAULT_QUEUE_MAX,
        batch_max: int = DEFAULT_BATCH_MAX,
        scrubber: Scrubber = DEFAULT_SCRUBBER,
        oversize: Oversize = "truncate",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        registry: CollectorRegistry | None = None,
        **publisher_options: Any,
    ) -> Self:
        """A background publisher sending through `Publisher.from_url(url, stream=..., **publisher_options)`.

        `spool_dir` None means `default_spool_dir()`; False means no spool (what cannot be sent is dropped,
        counted and logged). Raises ValueError for a bad option, OSError if the spool directory is unusable.
        """
        sender = Publisher.from_url(url, stream=stream, max_record_bytes=max_record_bytes, **publisher_options)
        spool = None
        if spool_dir is not False:
            spool = Spool(
                spool_dir if spool_dir is not None else default_spool_dir(),
                max_bytes=spool_max_bytes,
                full_policy=spool_full_policy,
                fsync=spool_fsync,
            )
        publisher = cls(
            sender, spool=spool, queue_max=queue_max, batch_max=batch_max, scrubber=scrubber,
            oversize=oversize, registry=registry,
        )  # fmt: skip
        publisher.url = url
        return publisher

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry holding this publisher's metrics."""
        return self.metrics.registry

    # -- the caller's side: no network I/O ------------------------------------------------------------------

    def publish(self, record: Record) -> str:
        """Validate and enqueue `record`; returns its `interaction_id` without waiting on the network.

        Scrubbing, encoding and the size check happen on the background thread (an oversize record is truncated,
        or with `oversize="refuse"` dropped, counted and logged). Raises `InvalidRecordError` (nothing enqueued)
        and `PublishError` after `close()`. A full queue spools the record from this thread (a local disk write).
        """
        if isinstance(record, Interaction):
            interaction = record
        else:
            checked = check_valid(self._noted(record))  # a dict of JSON's own types the model accepts, or None
            if checked is not None:  # the model accepts it: its JSON is the snapshot the thread encodes
                return self._enqueue_checked(*checked)
            fields = dict(record)
            # Cheaper than the model's own defaults (uuid4 reads the OS's random source on every call).
            fields.setdefault("interaction_id", fast_interaction_id())
            # The timestamp stays the model's default: unset, so the entry is not marked `identity exact`.
            interaction = validate_record(fields)
        self._enqueue(interaction)
        return interaction.interaction_id

    def _noted(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
        """`record` (a dict) with the scrubbed note in its `metadata`, as `encode` adds it on the model's path, when
        this publisher scrubs: then the JSON `check_valid` writes holds it already. Anything else as it is."""
        if not self.scrubber.enabled or type(record) is not dict:
            return record
        metadata = record.get("metadata")
        if metadata is None:
            return {**record, "metadata": {SCRUBBED_NOTE: True}}
        if type(metadata) is dict:
            return {**record, "metadata": {**metadata, SCRUBBED_NOTE: True}}
        return record  # not an object: invalid, which the model's path says

    def _enqueue_checked(self, body: bytes, columns: Columns) -> str:
        """Enqueue a plain record that `plain.check_valid` found valid, as its JSON `body` (a copy the caller can
        no longer change, as the model's copy was) and the defaults it lacks, made now as `publish` makes them."""
        checked = _checked_record(body, columns)
        self._enqueue(checked)
        return checked.interaction_id

    def publish_deferred(self, build: Callable[[], Mapping[str, Any]]) -> None:
        """Enqueue a record that `build` makes later, on the background thread; for instrumentation.

        The caller pays only for the append: converting results to JSON, scrubbing, validating and encoding all
        happen on the background thread. A record `build` fails to make, or that is invalid, is counted as
        dropped (`reason="invalid"`) and logged by field name, never by value.
        """
        self._enqueue(build)

    def _enqueue(self, item: _QueueItem) -> None:
        if self._closed:
            raise PublishError("this BackgroundPublisher is closed; create a new one to publish")
        if len(self._queue) >= self.queue_max:
            self._overflow(item)
        else:
            self._queue.append(item)
        # Event.set takes a lock (half a microsecond); while the flag is up, the thread has yet to clear it and
        # will see this item when it drains, so the many calls of one linger set it once.
        if not self._busy and not self._wake.is_set():
            self._wake.set()

    def _overflow(self, item: _QueueItem) -> None:
        entry = self._encode_item(item)
        if entry is not None:
            self._store([entry], "overflow")
            self._backlog = self.spool is not None

    def encode(self, record: Record) -> Entry:
        """The stream entry for `record`: scrubbed, validated, encoded, and truncated if `oversize="truncate"`.

        Raises `InvalidRecordError`, or `RecordTooLargeError` when `oversize="refuse"`.
        """
        interaction = validate_record(record if isinstance(record, Interaction) else dict(record))
        exact = has_exact_identity(interaction.model_fields_set)  # before scrubbing sets every field
        if self.scrubber.enabled:  # tell the worker's pass that this publisher's scrubber has had its say
            metadata: dict[str, Any] = {**(interaction.metadata or {}), SCRUBBED_NOTE: True}
            interaction = interaction.model_copy(update={"metadata": metadata})
        data = encode_record(interaction).encode()
        # The walk over every value runs only for a record whose JSON holds some trace of a secret.
        if self.scrubber.enabled and might_hold_secrets(self.scrubber, data):
            fields, counts = self.scrubber.scrub_record(interaction.model_dump(exclude_none=True))
            for kind, count in counts.items():
                self.metrics.redacted.labels(kind).inc(count)
            if counts or self.scrubber.callback is not None:
                interaction = validate_record(fields)
                data = encode_record(interaction).encode()
        if len(data) <= self.sender.max_record_bytes:
            return entry_fields(data, exact=exact)
        if self.oversize == "refuse":
            return encode_fields(interaction, self.sender.max_record_bytes)  # raises RecordTooLargeError
        self.metrics.truncated.inc()
        cap = self.sender.max_record_bytes
        return entry_fields(encode_fields(truncate_to_fit(interaction, cap), cap)[DATA_FIELD], exact=exact)

    def _encode_checked(self, record: CheckedRecord) -> Entry | None:
        """The entry of a record `check_valid` accepted, straight from its JSON: the same entry `encode` makes of
        it but for the JSON text, which keeps the caller's own (key order, nulls, as `Publisher` stores a dict).
        None when the model's path must make it: a scrubber with a callback, a payload that may hold a secret, a
        record over the size cap, or text the model must judge (`plain.storable_as_written`)."""
        if self.scrubber.callback is not None:
            return None
        data = record.data()
        if (
            len(data) > self.sender.max_record_bytes
            or not storable_as_written(data)
            or (self.scrubber.enabled and might_hold_secrets(self.scrubber, data))
        ):
            return None
        return entry_fields(data, exact=record.exact)

    def _encode_item(self, item: _QueueItem) -> Entry | None:
        """Encode a queued item; an item that cannot be encoded is counted, logged without values, and None."""
        try:
            record: Record | CheckedRecord
            if isinstance(item, Interaction | CheckedRecord):
                record = item
            else:  # a builder's record: a dict is checked as `publish` checks it, here on the thread
                built = item()
                checked = check_valid(self._noted(built))
                record = built if checked is None else _checked_record(*checked)
            if isinstance(record, CheckedRecord):
                return self._encode_checked(record) or self.encode(record.validated())
            return self.encode(record)
        except Exception as error:  # a bad record must not stop the thread or lose its batch-mates
            self.metrics.dropped.labels("invalid").inc()
            # No traceback and no message: both would echo the values, which may be secrets.
            log.error("record_dropped_invalid", stream=self.stream, error_type=type(error).__name__,  # noqa: TRY400
                      fields=invalid_fields(error))  # fmt: skip
            return None

    # -- the background thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        last_check = 0.0
        while True:
            self._wake.wait(timeout=self.spool_interval_s)
            self._wake.clear()
            stopping = self._stopping.is_set()
            if not stopping and len(self._queue) < self.batch_max:
                # Linger so that records arriving together leave together: one pipelined round trip and one
                # turn of this thread per batch, instead of a GIL hand-over per record in the request path.
                self._stopping.wait(self.linger_s)
            try:
                if self.spool is not None and time.monotonic() - last_check >= self.spool_interval_s:
                    last_check = time.monotonic()
                    self._check_spool()
                self._drain_queue(stopping)
                self._replay()
            except Exception:  # one outer guard: the thread must outlive any bug or disk error
                log.exception("background_publisher_step_failed", stream=self.stream)
                time.sleep(0.1)
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
            if stopping and (not self._queue or self._spool_failing):
                if self._queue or self._unsaved:  # the spool failed at exit: what it could not keep is lost, said so
                    self._count_dropped(len(self._take_unsaved()) + self._discard_queue(), "spool_error")
                return

    def _mark_busy(self) -> None:
        """Tell `flush` that records are in this thread's hands (neither queued nor yet sent or spooled)."""
        with self._idle:
            self._busy = True

    def _take_batch(self) -> list[Entry]:
        self._mark_busy()
        batch: list[Entry] = []
        taken = 0
        yielded = time.perf_counter()
        while self._queue and taken < self.batch_max:
            entry = self._encode_item(self._queue.popleft())
            taken += 1
            if entry is not None:
                batch.append(entry)
            # Let a waiting request thread take the GIL every YIELD_EVERY_S of encoding, not only after the whole
            # batch; a yield after every record cost the callers more than it spared them (benchmarks/NOTES.md).
            if time.perf_counter() - yielded >= YIELD_EVERY_S:
                time.sleep(0)
                yielded = time.perf_counter()
        return batch

    def _drain_queue(self, stopping: bool) -> None:
        pending = self._take_unsaved()  # older than anything queued: first, to keep the order
        while pending or self._queue:
            batch, pending = pending or self._take_batch(), []
            if not batch:
                continue
            if self._backlog or not self.breaker.allow():
                self._store(batch, "exit" if stopping else ("backlog" if self._backlog else "unavailable"))
                self._backlog = self.spool is not None
            elif self._send(batch):
                self.metrics.published.inc(len(batch))
            else:
                self._store(batch, "unavailable")
                self._backlog = self.spool is not None
            if self._spool_failing:  # leave the rest queued (bounded) rather than move it into unbounded memory
                return

    def _send(self, entries: list[Entry]) -> bool:
        """XADD `entries`; reports the outcome to the breaker; False when Redis did not confirm them."""
        try:
            self.sender.publish_encoded(entries)
        except PublishError as error:
            self.breaker.failed()
            if self._unavailable_since is None:
                self._unavailable_since = time.monotonic()
                # The error names Redis's complaint and the stream, never a payload value.
                log.error("publish_unavailable_spooling", stream=self.stream, error=self._masked(str(error)),  # noqa: TRY400
                          spool=str(self.spool.path) if self.spool else None)  # fmt: skip
            return False
        self.breaker.succeeded()
        if self._unavailable_since is not None:
            log.warning("publish_recovered", stream=self.stream,
                        unavailable_s=round(time.monotonic() - self._unavailable_since, 3))  # fmt: skip
            self._unavailable_since = None
        return True

    def _masked(self, text: str) -> str:
        """`text` with the secrets of this publisher's URL (a password, a token) masked."""
        return redact_text(text, self.url) if self.url else text

    def _store(self, entries: list[Entry], reason: str) -> None:
        """Spool `entries`, counting what the spool kept and what it (or its absence) dropped.

        Never raises: when the spool fails (its database busy past its timeout, a disk error) the entries wait in
        memory (`_unsaved`) and the thread spools or sends them first at its next step, ahead of newer records.
        """
        if self.spool is None:
            self._count_dropped(len(entries), "no_spool")
            return
        try:
            dropped = self.spool.append(self.stream, entries)
        except (sqlite3.Error, OSError) as error:
            self._keep_unsaved(entries, reason, error)
            return
        self.metrics.spooled.labels(reason).inc(len(entries) - dropped)
        if self._spool_failing:
            self._spool_failing = False
            log.warning("spool_write_recovered", stream=self.stream)
        if dropped:
            self._count_dropped(dropped, "spool_full")
        elif self._dropping:
            self._dropping = False

    def _keep_unsaved(self, entries: list[Entry], reason: str, error: BaseException) -> None:
        """Hold `entries` the spool refused for the next attempt, at most `queue_max` of them (the oldest beyond
        that are dropped, counted as ``spool_error``); the failure is logged once per episode."""
        if not self._spool_failing:
            self._spool_failing = True
            log.error("spool_write_failed_keeping_in_memory", stream=self.stream, reason=reason,
                      error_type=type(error).__name__, error=str(error),
                      spool=str(self.spool.path) if self.spool else None)  # fmt: skip
        self._unsaved.extend(entries)
        excess = len(self._unsaved) - self.queue_max
        if excess > 0:
            for _ in range(excess):
                self._unsaved.popleft()
            self._count_dropped(excess, "spool_error")

    def _discard_queue(self) -> int:
        """Empty the queue without encoding it; returns how many records it held."""
        return sum(1 for _ in _drained(self._queue))

    def _take_unsaved(self) -> list[Entry]:
        """The entries a failed spool write left in memory, oldest first (the deque is shared with callers)."""
        if self._unsaved:
            self._mark_busy()
        return list(_drained(self._unsaved))

    def _count_dropped(self, count: int, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc(count)
        if not self._dropping:  # logged once per episode, the count stays exact in the metric
            self._dropping = True
            log.error("records_dropped", stream=self.stream, reason=reason, count=count,
                      spool_max_bytes=self.spool.max_bytes if self.spool else None,
                      spool_full_policy=self.spool.full_policy if self.spool else None)  # fmt: skip

    def _check_spool(self) -> int:
        """Refresh the spool gauges and the backlog flag; returns the entries held for this stream."""
        assert self.spool is not None
        depth = self.spool.depth(self.stream)
        self.metrics.spool_depth.set(depth.entries)
        self.metrics.spool_bytes.set(depth.bytes)
        self.metrics.spool_oldest_age.set(depth.oldest_age_s)
        self._backlog = depth.entries > 0
        return depth.entries

    def _replay(self) -> None:
        """Send spooled entries of this stream oldest first while Redis confirms them."""
        replayed = 0
        while self._backlog and self.spool is not None and self.breaker.state != "open":
            if self._queue:  # keep order: what was published meanwhile goes behind the spooled entries
                self._drain_queue(stopping=False)
            rows = self.spool.take(self.stream, self.batch_max)
            if not rows:
                self._check_spool()  # the rest (if any) is leased by another process
                break
            seqs = [row.seq for row in rows]
            if not self.breaker.allow() or not self._send([row.fields for row in rows]):
                self.spool.release(seqs)
                break
            self.spool.remove(seqs)
            replayed += len(rows)
            self.metrics.replayed.inc(len(rows))
        if replayed:
            log.info("spool_replayed", stream=self.stream, count=replayed, left=self._check_spool())

    # -- flushing and closing ------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record published so far was sent to Redis or spooled; False if `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while self._queue or self._busy or self._unsaved:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return not self._queue and not self._busy and not self._unsaved
                self._wake.set()
                self._idle.wait(min(remaining, 0.05))
        return True

    def drain_spool(self, timeout_s: float = 10.0) -> bool:
        """Wait until this stream's spool is empty (replayed to Redis); False if `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        while self.spool is not None:
            self.flush(max(0.0, deadline - time.monotonic()))
            if self.spool.depth(self.stream).entries == 0:
                return True
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Send or spool what is queued, stop the thread, close the spool and the connection; idempotent.

        Runs at interpreter exit too. Waits at most `timeout_s` (default `close_timeout_s`) for the thread; what it
        has not handled by then is spooled from this thread.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stopping.set()
        self._wake.set()
        self._thread.join(self.close_timeout_s if timeout_s is None else timeout_s)
        if self._thread.is_alive():
            # The thread is stuck on a frozen Redis: spool what is still queued ourselves.
            leftovers = [entry for item in _drained(self._queue) if (entry := self._encode_item(item)) is not None]
            if leftovers:
                self._store(leftovers, "exit")
            log.warning("background_publisher_close_timed_out", stream=self.stream, unsent=len(leftovers),
                        spooled=self.spool is not None)  # fmt: skip
            return  # the thread still uses the sender and the spool; the process is going away
        if self.spool is not None:
            self.spool.close()
        self.sender.close()
