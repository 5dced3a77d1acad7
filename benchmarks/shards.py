"""Drain throughput on a Redis Cluster: 1 versus 6 shards, 1 versus 2 worker processes.

    .venv/bin/python -m benchmarks.shards [--records 30000] [--concurrency 2]

Starts a local cluster (3 masters, no replicas: replication would only add its own CPU to a 2-core box) and a
PostgreSQL, then for each contender: flushes the cluster, creates a fresh database, prefills `--records` records
through `Publisher(shards=N)` (not timed), starts the worker processes and polls the row count. One shard uses the
stream `{interactions}` (a hash tag, as a single stream on a cluster needs), so it lives on one master.

Prints, per contender: the steady drain rate (rows between 10 % and 90 % of the total, over the time between),
the workers' CPU per row (user + system of the worker processes, robust to other load on the machine), the
cluster's CPU per row, and the 1-minute load average at the end (other people's work shares the cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from benchmarks.records import records
from benchmarks.servers import cpu_seconds
from interactionlog.client.publisher import Publisher
from interactionlog.ops.servers import PostgresServer, RedisCluster

CONTENDERS = ((1, 1), (6, 1), (1, 2), (6, 2))  # (shards, worker processes)
POLL_S = 0.1


@dataclass(frozen=True)
class Result:
    """One contender's drain."""

    shards: int
    processes: int
    rate: float
    worker_us_per_row: float
    redis_us_per_row: float
    load: float


def _count(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM interaction_logs").fetchone()
        return int(row[0]) if row else 0


def _drain(
    cluster: RedisCluster, database_url: str, *, shards: int, processes: int, total: int, concurrency: int
) -> Result:
    stream = "interactions" if shards > 1 else "{interactions}"
    with Publisher.from_url(cluster.url, stream=stream, shards=shards, maxlen=10 * total) as publisher:
        batch: list[dict[str, object]] = []
        for index, record in enumerate(records(total)):
            record["mcp_id"] = f"mcp-{index % 50}"  # 50 MCPs, spread over the shards
            batch.append(record)
            if len(batch) == 1000:
                publisher.publish_many(batch)
                batch.clear()
        publisher.publish_many(batch)
    log_dir = Path(tempfile.mkdtemp(prefix="interactionlog-bench-shards-"))
    workers = []
    for index in range(processes):
        command = [
            sys.executable, "-m", "interactionlog", "worker",
            "--redis-url", cluster.url, "--database-url", database_url,
            "--stream", stream, "--shards", str(shards), "--concurrency", str(concurrency), "--metrics-port", "0",
            "--log-format", "json", "--log-level", "warning", "--consumer-prefix", f"bench-{index}",
        ]  # fmt: skip
        log = (log_dir / f"worker-{index}.log").open("wb")
        workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    redis_cpu_before = sum(cpu_seconds(node.pid) for node in cluster.nodes if node.pid)
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 600
    while (count := _count(database_url)) < total and time.monotonic() < deadline:
        samples.append((time.monotonic(), count))
        time.sleep(POLL_S)
    samples.append((time.monotonic(), count))
    worker_cpu = sum(cpu_seconds(worker.pid) for worker in workers)
    redis_cpu = sum(cpu_seconds(node.pid) for node in cluster.nodes if node.pid) - redis_cpu_before
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)
    shutil.rmtree(log_dir, ignore_errors=True)
    low = next(sample for sample in samples if sample[1] >= 0.1 * total)
    high = next(sample for sample in samples if sample[1] >= 0.9 * total)
    rate = (high[1] - low[1]) / max(high[0] - low[0], 1e-6)
    return Result(shards, processes, rate, worker_cpu / total * 1e6, redis_cpu / total * 1e6, os.getloadavg()[0])


def main() -> None:
    """Run every contender and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=2, help="consumers per shard in each worker process")
    arguments = parser.parse_args()
    results = []
    with RedisCluster(replicas_per_master=0) as cluster, PostgresServer() as postgres:
        client = redis.RedisCluster.from_url(cluster.url)
        for number, (shards, processes) in enumerate(CONTENDERS):
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
            database_url = postgres.create_database(f"bench_shards_{number}")
            subprocess.run(
                [sys.executable, "-m", "interactionlog", "migrate", "--database-url", database_url],
                check=True,
                capture_output=True,
            )
            results.append(
                _drain(
                    cluster,
                    database_url,
                    shards=shards,
                    processes=processes,
                    total=arguments.records,
                    concurrency=arguments.concurrency,
                )
            )
            postgres.drop_database(f"bench_shards_{number}")
        client.close()
    print(f"{arguments.records} records, --concurrency {arguments.concurrency} per shard, 3-master cluster, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print("| shards | worker processes | rows/s | worker CPU us/row | Redis CPU us/row | load avg (1 min) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r.shards} | {r.processes} | {r.rate:,.0f} | {r.worker_us_per_row:.0f} | "
            f"{r.redis_us_per_row:.0f} | {r.load:.2f} |"
        )


if __name__ == "__main__":
    main()
