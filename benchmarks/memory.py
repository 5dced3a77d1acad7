"""Peak worker memory draining a backlog of maximum-size records: `python -m benchmarks.memory [--records N]`.

Fills a throwaway Redis with N records of just under the default 256 KiB cap, then drains it with a real
`interactionlog worker` process at its default settings and once more with the byte bound lifted (the old
behaviour: only batch_size x concurrency entries bounded a batch), sampling the worker's resident memory from
/proc every 50 ms. Prints the peak RSS of each, the deploy manifests' 1 GiB limit, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import redis

from interactionlog import Publisher
from interactionlog.ops.servers import PostgresServer, RedisServer
from interactionlog.worker.store import migrate

DEPLOY_LIMIT_BYTES = 2**30  # deploy/kubernetes/deployment.yaml: resources.limits.memory
RECORD_TEXT_BYTES = 256 * 1024 - 512  # under max_record_bytes with the envelope


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fill(redis_url: str, records: int) -> None:
    text = "x" * RECORD_TEXT_BYTES
    with Publisher.from_url(redis_url, maxlen=10 * records) as publisher:
        for start in range(0, records, 50):
            publisher.publish_many(
                {"mcp_id": "big", "interaction_id": f"r-{index}", "response": {"text": text}}
                for index in range(start, min(start + 50, records))
            )


def _drain(redis_url: str, database_url: str, records: int, extra: list[str]) -> tuple[int, float]:
    """Run a worker until `records` rows are stored; (peak RSS in bytes, seconds)."""
    command = [sys.executable, "-m", "interactionlog", "worker", "--redis-url", redis_url, "--database-url",
               database_url, "--metrics-port", "0", "--log-format", "json", *extra]  # fmt: skip
    started = time.monotonic()
    worker = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    peak = 0
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            while True:
                peak = max(peak, _rss_bytes(worker.pid))
                row = conn.execute("SELECT count(*) FROM interaction_logs").fetchone()
                if row and row[0] >= records:
                    break
                time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return peak, elapsed


def main() -> None:
    """Run both drains and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=2000)
    records = parser.parse_args().records
    results: dict[str, tuple[int, float]] = {}
    with RedisServer() as redis_server, PostgresServer() as postgres:
        for label, extra in (
            ("default settings (batch_max_bytes 64 MiB)", []),
            ("byte bound lifted (count bound only, as before)", ["--batch-max-bytes", str(2**40)]),
        ):
            client = redis.Redis.from_url(redis_server.url)
            client.flushall()
            client.close()
            database_url = postgres.create_database(f"memory_{len(results)}")
            asyncio.run(migrate(database_url))
            _fill(redis_server.url, records)
            results[label] = _drain(redis_server.url, database_url, records, extra)
    print(f"backlog: {records} records of {RECORD_TEXT_BYTES / 1024:.0f} KiB, worker at concurrency 2")
    for label, (peak, elapsed) in results.items():
        print(
            f"  {label}: peak RSS {peak / 2**20:.0f} MiB ({peak / DEPLOY_LIMIT_BYTES:.2f} of the 1 GiB limit), "
            f"drained in {elapsed:.1f} s"
        )


if __name__ == "__main__":
    main()
