"""A producer publishing records with known sequential ids, recording each publish as ok, failed or unknown.

Each record is `mcp_id=<run id>, interaction_id=<seq>` with the seq repeated in its payload, so the checker can
tell a lost record from a duplicated, unexpected or corrupted one. The publisher's client makes exactly one
attempt per call, so an error can be classified soundly: *failed* means Redis never applied the XADD (the
connection could not be opened, or Redis answered with an error); *unknown* means it may have (a timeout or a
connection dropped after the command was sent). A record that is not ok is published again, with the same
ids, up to `attempts` times, as a careful MCP server would: the sink must then store it exactly once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from interactionlog import Publisher, PublishError


class Outcome(StrEnum):
    """What the producer knows about one record after all its attempts."""

    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


def classify(error: PublishError) -> Outcome:
    """FAILED when the XADD certainly never took effect, UNKNOWN when it may have."""
    cause = error.__cause__
    if isinstance(cause, ResponseError | BusyLoadingError):
        return Outcome.FAILED  # Redis answered with an error (LOADING, MISCONF, OOM): not applied
    if isinstance(cause, RedisConnectionError | RedisTimeoutError) and "connecting" in str(cause).lower():
        return Outcome.FAILED  # the connection was never opened, so the command was never sent
    return Outcome.UNKNOWN


def interaction_id(seq: int) -> str:
    """The interaction id of record `seq`."""
    return f"{seq:08d}"


def make_record(mcp_id: str, seq: int, pad_bytes: int = 64) -> dict[str, Any]:
    """Record `seq` of a run: realistic fields, its seq repeated in the payload to detect corruption, and its
    timestamp set once, so every attempt republishes the same record ((mcp_id, interaction_id, timestamp))."""
    return {
        "mcp_id": mcp_id,
        "interaction_id": interaction_id(seq),
        "timestamp": datetime.now(UTC).isoformat(),
        "method": "tools/call",
        "tool": "fault_probe",
        "session_id": f"session-{seq % 17}",
        "request": {"seq": seq, "pad": "x" * pad_bytes},
        "response": {"content": [{"type": "text", "text": f"answer {seq}"}]},
        "duration_ms": float(seq % 1000),
    }


def single_attempt_client(redis_url: str, timeout_s: float) -> redis.Redis:
    """A client that never retries behind our back, so every error is one attempt's outcome."""
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass
class Ledger:
    """Every record the producer tried, with its final outcome and when it was first known to be published."""

    mcp_id: str
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    ok_at: dict[int, float] = field(default_factory=dict)  # monotonic time of the successful XADD
    attempts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def settle(self, seq: int, outcome: Outcome, at: float) -> None:
        """Record the final outcome of `seq`."""
        with self._lock:
            self.outcomes[seq] = outcome
            if outcome is Outcome.OK:
                self.ok_at[seq] = at

    def with_outcome(self, outcome: Outcome) -> set[int]:
        """The seqs whose final outcome is `outcome`."""
        with self._lock:
            return {seq for seq, found in self.outcomes.items() if found is outcome}

    def ok_before(self, moment: float) -> set[int]:
        """The seqs published ok before the monotonic time `moment`."""
        with self._lock:
            return {seq for seq, at in self.ok_at.items() if at < moment}

    def counts(self) -> dict[str, int]:
        """How many records ended in each outcome, plus the total number of XADD attempts."""
        with self._lock:
            found = {outcome.value: 0 for outcome in Outcome}
            for outcome in self.outcomes.values():
                found[outcome.value] += 1
            return {**found, "attempts": self.attempts}


class Producer(threading.Thread):
    """Publishes `total` records at `rate_per_s` in a background thread, recording each in `ledger`."""

    def __init__(
        self,
        redis_url: str,
        *,
        mcp_id: str,
        total: int,
        rate_per_s: float,
        stream: str = "interactions",
        maxlen: int = 1_000_000,
        attempts: int = 3,
        retry_pause_s: float = 0.2,
        timeout_s: float = 1.0,
    ) -> None:
        super().__init__(name=f"producer-{mcp_id}", daemon=True)
        self.ledger = Ledger(mcp_id)
        self.total = total
        self.rate_per_s = rate_per_s
        self.attempts = attempts
        self.retry_pause_s = retry_pause_s
        self._publisher = Publisher(single_attempt_client(redis_url, timeout_s), stream=stream, maxlen=maxlen)
        self._stopping = threading.Event()
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Publish every record on schedule; an unexpected error is kept for `join_and_check`."""
        started = time.monotonic()
        try:
            for seq in range(self.total):
                if self._stopping.is_set():
                    break
                delay = started + seq / self.rate_per_s - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    break
                self._publish(seq)
        except BaseException as error:  # kept and re-raised in the test's thread, never swallowed
            self.error = error
        finally:
            self.finished_at = time.monotonic()
            self._publisher.close()

    def _publish(self, seq: int) -> None:
        record = make_record(self.ledger.mcp_id, seq)
        outcome = Outcome.FAILED
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_pause_s)
            self.ledger.attempts += 1
            try:
                self._publisher.publish(record)
            except PublishError as error:
                if classify(error) is Outcome.UNKNOWN:
                    outcome = Outcome.UNKNOWN  # once unknown, a later failure cannot make it certain
                continue
            self.ledger.settle(seq, Outcome.OK, time.monotonic())
            return
        self.ledger.settle(seq, outcome, time.monotonic())

    def stop(self) -> None:
        """Ask the thread to stop after the record in flight."""
        self._stopping.set()

    def join_and_check(self, timeout_s: float = 60.0) -> Ledger:
        """Wait for the thread; raise whatever broke it; return the ledger."""
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"the producer did not finish within {timeout_s}s")
        if self.error is not None:
            raise self.error
        return self.ledger
