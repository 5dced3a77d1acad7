"""The checker: after the faults stop, wait for the pipeline to quiesce, then compare the table with the ledger.

What must hold (Jepsen's queue checker, adapted to an idempotent sink): every record published ok is stored
(lost = 0); no record is stored twice (duplicated = 0); nothing is stored that was never published
(unexpected = 0) or stored with another record's payload (corrupted = 0); a record whose publish failed for
certain is absent, and one whose outcome is unknown is stored at most once; no valid record is dead-lettered;
the group has nothing pending and nothing undelivered; the group holds no consumers of departed processes; and
the pipeline was caught up within a bound of the last fault.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import psycopg
import redis
from redis.exceptions import RedisError, ResponseError

from tests.pipeline import wait_until

from .producer import Ledger, Outcome, user_of

POLL_S = 0.1

_T = TypeVar("_T")


@dataclass(frozen=True)
class GroupState:
    """The consumer group as Redis sees it right now."""

    exists: bool
    pending: int = 0
    lag: int | None = None
    undelivered: int = 0
    consumers: dict[str, int] = field(default_factory=dict)  # name -> pending entries
    length: int = 0

    @property
    def settled(self) -> bool:
        """Nothing pending, nothing left to deliver (whatever `lag` says: after a trim loss Redis keeps counting
        the trimmed entries in it for good)."""
        return self.exists and self.pending == 0 and self.undelivered == 0

    @property
    def drained(self) -> bool:
        """Settled, and Redis agrees: lag 0 (or unknown, which `undelivered` then stands in for)."""
        return self.settled and self.lag in (0, None)


def group_state(client: redis.Redis, stream: str, group: str) -> GroupState:
    """Read pending, lag, undelivered entries and consumers of `group` (absent group: exists=False)."""
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    except ResponseError as error:
        if "no such key" in str(error).lower():
            return GroupState(exists=False)
        raise
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return GroupState(exists=False)
    last = _text(info["last-delivered-id"])
    # Counted directly as well as read from `lag`: Redis reports lag as nil when it cannot tell.
    undelivered = len(cast(list[Any], client.xrange(stream, min=f"({last}", max="+", count=100_000)))
    listed: list[dict[str, Any]] = client.xinfo_consumers(stream, group)
    consumers = {_text(c["name"]): int(c["pending"]) for c in listed}
    lag = info.get("lag")
    return GroupState(
        exists=True,
        pending=int(info["pending"]),
        lag=None if lag is None else int(lag),
        undelivered=undelivered,
        consumers=consumers,
        length=int(client.xlen(stream)),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class StoredState:
    """What the table holds for a run: rows per seq, and rows that should not be there at all."""

    rows: Counter[int]
    unexpected: list[str]
    corrupted: list[str]

    @property
    def duplicated(self) -> list[int]:
        """Seqs stored more than once."""
        return sorted(seq for seq, count in self.rows.items() if count > 1)


def stored_state(database_url: str, mcp_id: str) -> StoredState:
    """Every row of the table, sorted into the run's records and everything else."""
    rows: Counter[int] = Counter()
    unexpected: list[str] = []
    corrupted: list[str] = []
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "SELECT mcp_id, interaction_id, data->'request'->>'seq', tool, data->>'user_id' FROM interaction_logs"
        )
        for row_mcp_id, interaction_id, payload_seq, tool, user_id in cursor:
            if row_mcp_id != mcp_id or not interaction_id.isdigit():
                unexpected.append(f"{row_mcp_id}/{interaction_id}")
                continue
            seq = int(interaction_id)
            rows[seq] += 1
            if payload_seq != str(seq) or tool != "fault_probe" or user_id != user_of(seq):
                corrupted.append(f"{interaction_id} carries seq {payload_seq!r}, tool {tool!r}, user_id {user_id!r}")
    return StoredState(rows, unexpected, corrupted)


def stored_count(database_url: str, mcp_id: str, seqs: set[int]) -> int:
    """How many of `seqs` have a row."""
    ids = [f"{seq:08d}" for seq in seqs]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM interaction_logs WHERE mcp_id = %s AND interaction_id = ANY(%s)", (mcp_id, ids)
        ).fetchone()
    return int(row[0]) if row else 0


def dead_lettered_records(client: redis.Redis, dead_letters: str, mcp_id: str) -> list[str]:
    """Dead letters holding one of the run's (valid) records, as 'seq: reason'."""
    found = []
    for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(dead_letters)):
        try:
            record = json.loads(fields.get(b"data", b"{}"))
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("mcp_id") == mcp_id:
            reason = fields.get(b"error_type", b"?").decode()
            found.append(f"{record.get('interaction_id')}: {reason}: {fields.get(b'error', b'').decode()[:120]}")
    return found


def await_quiescence(
    client: redis.Redis,
    database_url: str,
    ledger: Ledger,
    *,
    stream: str,
    group: str,
    since: float,
    timeout_s: float,
) -> float | None:
    """Wait until every ok record is stored and the group has nothing pending or undelivered; seconds from `since`,
    None on timeout. Redis's `lag` is judged afterwards, on its own: a wrong lag must not hide the recovery time."""
    ok = ledger.with_outcome(Outcome.OK)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            settled = group_state(client, stream, group).settled
            if settled and stored_count(database_url, ledger.mcp_id, ok) == len(ok):
                return time.monotonic() - since
        except (RedisError, psycopg.Error):
            pass  # a server still coming back counts as not quiesced yet
        time.sleep(POLL_S)
    return None


def await_consumers_within(
    client: redis.Redis, *, stream: str, group: str, allowed: set[str], timeout_s: float
) -> list[str]:
    """Wait until the group holds only `allowed` consumers; returns the others still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        stray = sorted(set(group_state(client, stream, group).consumers) - allowed)
        if not stray or time.monotonic() > deadline:
            return stray
        time.sleep(POLL_S * 3)


@dataclass
class Verdict:
    """The figures of one run and everything that must hold about them."""

    seed: int
    published: dict[str, int]
    faults_applied: int
    stored: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    unknown_stored: int = 0
    failed_stored: list[int] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    final_group: GroupState = field(default_factory=lambda: GroupState(exists=False))
    consumer_bound: int = 0
    stray_consumers: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    recovery_bound_s: float = 0.0
    worker_problems: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Every violated property, each naming what went wrong; empty when the run passed."""
        found = []
        if self.lost:
            found.append(f"lost {len(self.lost)} records published ok, e.g. seqs {self.lost[:10]}")
        if self.duplicated:
            found.append(f"duplicated {len(self.duplicated)} records, e.g. seqs {self.duplicated[:10]}")
        if self.unexpected:
            found.append(f"{len(self.unexpected)} unexpected rows, e.g. {self.unexpected[:5]}")
        if self.corrupted:
            found.append(f"{len(self.corrupted)} corrupted rows, e.g. {self.corrupted[:5]}")
        if self.failed_stored:
            found.append(
                f"{len(self.failed_stored)} records whose publish certainly failed were stored, e.g. "
                f"{self.failed_stored[:10]}"
            )
        if self.dead_lettered:
            found.append(f"{len(self.dead_lettered)} valid records dead-lettered, e.g. {self.dead_lettered[:3]}")
        group = self.final_group
        if not group.exists:
            found.append("the consumer group does not exist after the run")
        elif group.pending or group.undelivered:
            found.append(f"group not drained: pending {group.pending}, undelivered {group.undelivered}")
        elif group.lag not in (0, None):
            found.append(f"Redis reports lag {group.lag} for the group although nothing is left to deliver")
        if len(group.consumers) > self.consumer_bound or self.stray_consumers:
            found.append(
                f"{len(group.consumers)} consumers in the group (bound {self.consumer_bound}); "
                f"departed ones still there: {self.stray_consumers[:10]}"
            )
        if self.recovery_s is None:
            found.append("the pipeline never caught up after the last fault")
        elif self.recovery_s > self.recovery_bound_s:
            found.append(f"recovery took {self.recovery_s:.2f}s, over the {self.recovery_bound_s:.2f}s bound")
        found += self.worker_problems
        return found

    def summary(self) -> str:
        """The figures, one line each, for the test output and the soak report."""
        recovery = "never" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        group = self.final_group
        return "\n".join(
            [
                f"seed {self.seed}: replay with INTERACTIONLOG_FAULT_SEED={self.seed}",
                f"records: ok {self.published.get('ok', 0)}, failed {self.published.get('failed', 0)}, "
                f"unknown {self.published.get('unknown', 0)} ({self.published.get('attempts', 0)} XADD attempts)",
                f"faults injected: {self.faults_applied}",
                f"stored {self.stored}; lost {len(self.lost)}, duplicated {len(self.duplicated)}, unexpected "
                f"{len(self.unexpected)}, corrupted {len(self.corrupted)}, unknown stored {self.unknown_stored}, "
                f"failed stored {len(self.failed_stored)}, valid dead-lettered {len(self.dead_lettered)}",
                f"group: pending {group.pending}, lag {group.lag}, undelivered {group.undelivered}, consumers "
                f"{len(group.consumers)} (bound {self.consumer_bound}), stream length {group.length}",
                f"recovery after the last fault: {recovery} (bound {self.recovery_bound_s:.2f}s)",
            ]
        )


def judge(
    verdict: Verdict,
    client: redis.Redis,
    database_url: str,
    ledger: Ledger,
    *,
    stream: str,
    group: str,
    dead_letters: str,
) -> Verdict:
    """Fill `verdict` with the table's and the group's state against the ledger."""
    state = stored_state(database_url, ledger.mcp_id)
    ok = ledger.with_outcome(Outcome.OK)
    verdict.stored = sum(state.rows.values())
    verdict.lost = sorted(seq for seq in ok if seq not in state.rows)
    verdict.duplicated = state.duplicated
    attempted = set(ledger.outcomes)
    verdict.unexpected = state.unexpected + [f"seq {seq} never published" for seq in state.rows if seq not in attempted]
    verdict.corrupted = state.corrupted
    verdict.unknown_stored = sum(1 for seq in ledger.with_outcome(Outcome.UNKNOWN) if seq in state.rows)
    verdict.failed_stored = sorted(seq for seq in ledger.with_outcome(Outcome.FAILED) if seq in state.rows)
    verdict.dead_lettered = dead_lettered_records(client, dead_letters, ledger.mcp_id)
    verdict.final_group = group_state(client, stream, group)
    return verdict


def wait_for(condition: Callable[[], _T], *, timeout_s: float, what: str) -> _T:
    """`wait_until` at the fault suite's poll interval, with the deadline and its description required."""
    return wait_until(condition, timeout_s=timeout_s, what=what, interval_s=POLL_S)
