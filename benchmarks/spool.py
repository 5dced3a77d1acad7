"""What a spool write costs, and whether it grows with what the spool holds.

    .venv/bin/python -m benchmarks.spool [--held 0,10000,100000]

For each size, a fresh spool directory is filled with that many ~700-byte entries, then the benchmark times
`Spool.append` of one entry (what `publish` does on a full queue, in the caller's thread) and of a 500-entry batch
(what the background thread does while Redis is away), and `Spool.depth` (read every `spool_interval_s`).
Prints the p50 and p99 of each in microseconds and the ratio to the empty spool's p50: a cost that does not grow
with the spool reads about 1.0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from benchmarks.records import encode, records
from interactionlog.client.spool import Spool

SAMPLES = 300


def _timed(call: Callable[[], object], count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def _measure(spool: Spool, entries: list[dict[bytes, bytes]]) -> tuple[tuple[float, float], ...]:
    """(p50, p99) of a one-entry append, a whole-batch append, and a depth read."""
    one = _timed(lambda: spool.append("s", entries[:1]), SAMPLES)
    batch = _timed(lambda: spool.append("s", entries), SAMPLES // 10)
    return one, batch, _timed(lambda: spool.depth("s"), SAMPLES)


def main() -> None:
    """Fill, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="0,10000,100000", help="comma-separated entry counts held beforehand")
    sizes = [int(size) for size in parser.parse_args().held.split(",")]
    entries = [{b"v": b"1", b"data": encode(record)} for record in records(500)]
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'held entries':>12} {'append 1 p50':>13} {'p99':>9} {'append 500 p50':>15} {'p99':>9} "
          f"{'depth p50':>10} {'ratio to empty (1 / 500 / depth)':>34}")  # fmt: skip
    baseline: tuple[float, float, float] | None = None
    for held in sizes:
        with tempfile.TemporaryDirectory() as directory:
            spool = Spool(directory, max_bytes=1 << 40)
            for start in range(0, held, 500):
                spool.append("s", entries[: min(500, held - start)])
            one, batch, depth = _measure(spool, entries)
            spool.close()
        medians = (one[0], batch[0], depth[0])
        baseline = baseline or medians
        ratios = " / ".join(f"{now / base:.2f}" for now, base in zip(medians, baseline, strict=True))
        print(f"{held:>12,} {one[0]:>10.1f} us {one[1]:>6.1f} us {batch[0]:>12.1f} us {batch[1]:>6.1f} us "
              f"{depth[0]:>7.1f} us {ratios:>34}")  # fmt: skip


if __name__ == "__main__":
    main()
