"""The publish side of another checkout, for a same-minute A/B (benchmarks/NOTES.md, round 4).

Run as a script, so that `interactionlog` is imported from PYTHONPATH while the suite's records come from here:

    PYTHONPATH=/work/wt/c17 .venv/bin/python benchmarks/publish_ab.py redis://127.0.0.1:6379/0
    .venv/bin/python benchmarks/publish_ab.py redis://127.0.0.1:6379/0        # this checkout; alternate the two

It prints `Publisher.publish_many` from dicts (records/s, this process's CPU per record) and
`BackgroundPublisher.publish` per call (in bursts of 1000, then paced: a pause after each call), over the suite's
records, onto scratch streams it deletes.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

import interactionlog
from interactionlog.client.background import BackgroundPublisher
from interactionlog.client.publisher import Publisher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `records`, this checkout's, as a plain module
from records import records

COUNT = 50_000
BATCH = 1000
PACED_CALLS = 5000  # benchmarks.publish_side's paced line
PACED_PAUSE_S = 0.0005


def main(redis_url: str) -> None:
    """Measure both ways and print one line."""
    items = list(records(COUNT, seed=7))
    client = redis.Redis.from_url(redis_url)
    publisher = Publisher.from_url(redis_url, stream="ab:many", maxlen=10 * COUNT)
    publisher.publish_many(items[:BATCH])
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, COUNT, BATCH):
        publisher.publish_many(items[start : start + BATCH])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    publisher.close()
    latencies: list[int] = []
    with tempfile.TemporaryDirectory() as spool_dir:
        background = BackgroundPublisher.from_url(redis_url, stream="ab:background", spool_dir=spool_dir)
        for item in items[:500]:
            background.publish(item)
        for start in range(0, COUNT, BATCH):
            for item in items[start : start + BATCH]:
                began = time.perf_counter_ns()
                background.publish(item)
                latencies.append(time.perf_counter_ns() - began)
            time.sleep(0.02)
        paced: list[int] = []
        for item in items[:PACED_CALLS]:  # as benchmarks.publish_side times it: a pause after each call
            began = time.perf_counter_ns()
            background.publish(item)
            paced.append(time.perf_counter_ns() - began)
            time.sleep(PACED_PAUSE_S)
        background.close()
    client.delete("ab:many", "ab:background")
    latencies.sort()
    paced.sort()
    print(
        f"{Path(interactionlog.__file__).parent.parent}: publish_many {COUNT / wall:,.0f}/s, "
        f"{cpu / COUNT * 1e6:.1f} us CPU a record; BackgroundPublisher.publish p50 "
        f"{latencies[COUNT // 2] / 1e3:.1f} us, p90 {latencies[int(COUNT * 0.9)] / 1e3:.1f} us; paced p50 "
        f"{paced[PACED_CALLS // 2] / 1e3:.1f} us"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
