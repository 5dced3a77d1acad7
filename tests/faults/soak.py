"""The long form of the fault suite, run on demand: `python -m tests.faults.soak --minutes 30 --seed 7`.

It starts its own Redis (append-only file on) and PostgreSQL, runs workers under a producer and a seeded fault
schedule for the given time, checks the outcome like the short form does, and samples the resident memory of the
workers every few seconds. One worker ("observed") is never killed or frozen by the schedule, so its memory covers
the whole run, through every Redis and PostgreSQL restart, connection kill and claim; after a warm-up, its growth
(least-squares slope times the span) must stay under a small bound. Exit status 0 when everything held, else 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import PostgresServer, RedisServer

from .scenario import ScenarioConfig, Servers, run_scenario
from .workers import WorkerFleet

WARMUP_FRACTION = 0.2  # imports, pools and allocator arenas settle during the first part of a run
MIN_WARMUP_S = 60.0
GROWTH_BOUND_KIB = 8 * 1024  # absolute: a leak of a few bytes per entry shows up well above this over a soak
GROWTH_BOUND_FRACTION = 0.10  # relative to the observed worker's median after warm-up


@dataclass
class MemorySampler:
    """Resident memory of the workers over time: of the observed ones by pid, and the range over all others."""

    interval_s: float = 5.0
    started: float = field(default_factory=time.monotonic)
    observed: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the run, KiB)
    others: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, min KiB, max KiB)
    _next: float = 0.0

    def maybe_sample(self, fleet: WorkerFleet) -> None:
        """Take a sample when one is due; called on every tick of the fault player."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        at = now - self.started
        readings = [(worker.observed, worker.rss_kib()) for worker in fleet.live() if not worker.frozen]
        observed = [kib for is_observed, kib in readings if is_observed and kib is not None]
        others = [kib for is_observed, kib in readings if not is_observed and kib is not None]
        if observed:
            self.observed.append((at, max(observed)))
        if others:
            self.others.append((at, min(others), max(others)))

    def growth_kib(self) -> tuple[float, float, float]:
        """(growth over the post-warm-up span by least squares, median after warm-up, warm-up end in seconds)."""
        if len(self.observed) < 3:
            return 0.0, 0.0, 0.0
        span = self.observed[-1][0]
        warmup = min(max(MIN_WARMUP_S, span * WARMUP_FRACTION), span / 2)
        points = [(at, kib) for at, kib in self.observed if at >= warmup]
        if len(points) < 3:
            return 0.0, 0.0, warmup
        mean_t = sum(at for at, _ in points) / len(points)
        mean_k = sum(kib for _, kib in points) / len(points)
        covariance = sum((at - mean_t) * (kib - mean_k) for at, kib in points)
        variance = sum((at - mean_t) ** 2 for at, _ in points)
        slope = covariance / variance if variance else 0.0
        median = sorted(kib for _, kib in points)[len(points) // 2]
        return slope * (points[-1][0] - points[0][0]), float(median), warmup

    def report(self, rows: int = 20) -> str:
        """A table of the samples (thinned to about `rows` lines) and the growth figure."""
        lines = ["memory of the workers (RSS, MiB): t, observed worker, others min-max"]
        step = max(len(self.observed) // rows, 1)
        others = {at: (low, high) for at, low, high in self.others}
        for at, kib in self.observed[::step]:
            low, high = others.get(at, (0, 0))
            lines.append(f"  t={at:7.1f}s  observed {kib / 1024:7.1f}  others {low / 1024:6.1f}-{high / 1024:6.1f}")
        growth, median, warmup = self.growth_kib()
        lines.append(
            f"observed worker after the {warmup:.0f}s warm-up: median {median / 1024:.1f} MiB, growth "
            f"{growth / 1024:+.2f} MiB (bound {self.bound_kib() / 1024:.1f} MiB)"
        )
        return "\n".join(lines)

    def bound_kib(self) -> float:
        """How much the observed worker may grow after warm-up."""
        _, median, _ = self.growth_kib()
        return max(GROWTH_BOUND_KIB, GROWTH_BOUND_FRACTION * median)

    def flat(self) -> bool:
        """Whether the observed worker's memory stayed flat after warm-up."""
        growth, _, _ = self.growth_kib()
        return growth <= self.bound_kib()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The soak's command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to publish and inject faults")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (random when omitted)")
    parser.add_argument("--rate", type=float, default=100.0, help="records published per second")
    parser.add_argument("--faults-per-minute", type=float, default=4.0, help="faults injected per minute")
    parser.add_argument("--workers", type=int, default=3, help="worker processes, the observed one included")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--log-dir", type=Path, default=None, help="where worker logs go (a temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; print the schedule, the faults as they happen, the figures and the memory table."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    span_s = args.minutes * 60
    config = ScenarioConfig(
        seed=seed,
        records=int(args.rate * span_s),
        span_s=span_s,
        faults=max(int(args.faults_per_minute * args.minutes), 1),
        workers=max(args.workers, 2),
        observed_workers=1,
        quiesce_timeout_s=max(120.0, span_s / 4),
    )
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix=f"interactionlog-soak-{seed}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.minutes} min, seed {seed}, {config.records} records, {config.faults} faults, logs {log_dir}")
    memory = MemorySampler(interval_s=args.sample_every)

    def say(line: str) -> None:
        print(line, flush=True)

    with RedisServer(appendonly=True) as redis_server, PostgresServer() as postgres_server:
        verdict = run_scenario(config, Servers(redis_server, postgres_server), log_dir, say, memory.maybe_sample)
    print(memory.report(), flush=True)
    problems = verdict.problems()
    if not memory.flat():
        problems.append("the observed worker's memory grew beyond the bound after warm-up")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"soak {'FAILED' if problems else 'passed'} (seed {seed}, {time.strftime('%Y-%m-%d %H:%M:%S')})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
