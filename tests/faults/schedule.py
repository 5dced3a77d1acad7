"""Seeded random fault schedules: which fault, when, against which worker, for how long.

A schedule is a pure function of its seed and parameters, and prints as one line per fault, so a failing run
is replayed by running again with the same seed (`INTERACTIONLOG_FAULT_SEED=<seed>`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    """The faults the suite injects; the README's reliability section lists the same ones."""

    KILL_WORKER = "kill_worker"  # SIGKILL a worker at a random moment, start it again later
    CRASH_AFTER_READ = "crash_after_read"  # a worker SIGKILLs itself with a batch read and nothing stored
    CRASH_AFTER_COMMIT = "crash_after_commit"  # ... with the batch committed and nothing acknowledged
    FREEZE_WORKER = "freeze_worker"  # SIGSTOP past claim_idle_ms, then SIGCONT: it comes back a zombie
    KILL_REDIS_CLIENTS = "kill_redis_clients"  # CLIENT KILL TYPE normal: every connection dropped at once
    TERMINATE_POSTGRES_BACKENDS = "terminate_postgres_backends"  # pg_terminate_backend, in a burst, mid-batch
    RESTART_POSTGRES = "restart_postgres"  # a fast shutdown or a crash (SIGKILL), then a start
    RESTART_REDIS = "restart_redis"  # with the append-only file on: SIGTERM, or SIGKILL under appendfsync always


WORKER_FAULTS = frozenset(
    {FaultKind.KILL_WORKER, FaultKind.CRASH_AFTER_READ, FaultKind.CRASH_AFTER_COMMIT, FaultKind.FREEZE_WORKER}
)
ALL_FAULTS: tuple[FaultKind, ...] = tuple(FaultKind)


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule.

    `target` picks the worker (modulo the workers eligible when the fault starts); `duration_s` is how long the
    fault lasts (downtime before a restart, how long a worker stays frozen); `variant` is the fault's coin
    flip: a restarted worker keeps its consumer names (it finishes its own pending entries) or gets new ones
    (its entries must be claimed), PostgreSQL and Redis crash (SIGKILL) or shut down cleanly.
    """

    at_s: float
    kind: FaultKind
    target: int
    duration_s: float
    variant: bool

    def describe(self) -> str:
        """One line of the printed schedule."""
        return (
            f"t={self.at_s:7.2f}s {self.kind.value:<28} target={self.target:<3} "
            f"duration={self.duration_s:5.2f}s variant={'yes' if self.variant else 'no'}"
        )


def plan(
    seed: int,
    *,
    faults: int,
    span_s: float,
    claim_idle_s: float,
    kinds: tuple[FaultKind, ...] = ALL_FAULTS,
    start_s: float = 2.0,
    final_claim: bool = True,
) -> list[Fault]:
    """`faults` faults between `start_s` and `span_s`, each kind at least once when there are enough faults.

    With `final_claim`, one more fault follows once all others are over: a worker crashing right after a read,
    restarted under new consumer names, so the batch it held can only come back through another consumer's
    claim. The recovery time measured from it is then the claim path's, the slowest one, on every seed.
    """
    rng = random.Random(seed)
    chosen = list(kinds)[:faults]
    chosen += [rng.choice(kinds) for _ in range(faults - len(chosen))]
    rng.shuffle(chosen)
    times = sorted(rng.uniform(start_s, span_s) for _ in chosen)
    schedule = [
        Fault(round(at, 2), kind, rng.randrange(1000), round(_duration(rng, kind, claim_idle_s), 2), rng.random() < 0.5)
        for at, kind in zip(times, chosen, strict=True)
    ]
    if final_claim:
        quiet_from = max((fault.at_s + fault.duration_s for fault in schedule), default=start_s)
        schedule.append(Fault(round(quiet_from + 1.0, 2), FaultKind.CRASH_AFTER_READ, rng.randrange(1000), 0.5, False))
    return schedule


def _duration(rng: random.Random, kind: FaultKind, claim_idle_s: float) -> float:
    if kind is FaultKind.FREEZE_WORKER:
        return claim_idle_s + rng.uniform(0.5, 2.0)  # longer than the claim idle time, by design
    if kind in {FaultKind.RESTART_POSTGRES, FaultKind.RESTART_REDIS}:
        return rng.uniform(0.2, 2.5)
    if kind in WORKER_FAULTS:
        return rng.uniform(0.2, 2.0)  # how long the process stays down before it is started again
    return 0.0


def describe(seed: int, schedule: list[Fault]) -> str:
    """The printed form of a schedule, headed by the seed that replays it."""
    header = f"fault schedule (seed {seed}; replay with INTERACTIONLOG_FAULT_SEED={seed}): {len(schedule)} faults"
    return "\n".join([header, *(f"  {fault.describe()}" for fault in schedule)])
