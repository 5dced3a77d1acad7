"""The pipeline on a real Redis Cluster on loopback (3 masters, 1 replica each): 6 shards spread over every master,
two worker processes, a worker SIGKILLed and a master killed under load, and every acknowledged record stored once.

What replication can lose, and how the test accounts for it: Redis replicates asynchronously, so a master killed
right after acknowledging an XADD can take it with it when its replica is promoted. The publishers here run with
`wait_replicas=1` (the gateway with --wait-replicas 1): a publish is acknowledged only once the replica holds the
entries, and one that was not confirmed raised and is published again (stored once either way). With one replica
per master the promoted replica is the one that confirmed, so nothing acknowledged may be missing. The workers'
XACKs and group state are replicated asynchronously too; what the promoted replica lacks of them is delivered
again and skipped as a duplicate by the table's unique key, which the test checks by counting rows.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import cast

import httpx
import pytest
import redis
from redis.crc import key_slot

from interactionlog.client.publisher import Publisher
from interactionlog.errors import PublishError
from interactionlog.replies import text
from interactionlog.shards import Layout
from tests.gateway import INGEST, running_gateway
from tests.pipeline import WorkerProcess, count_rows, migrate, record, stored_rows, wait_until
from tests.servers import RedisCluster

SHARDS = 6


def start_worker(url: str, database_url: str, log_dir: Path) -> WorkerProcess:
    """A worker consuming all 6 shards with one consumer each."""
    return WorkerProcess(
        url, database_url, log_dir, shards=str(SHARDS), concurrency="1", redis_timeout_s="1", batch_size="200"
    )


class Load:
    """Publishes records in batches from a thread until stopped, republishing a batch until it is acknowledged."""

    def __init__(self, url: str, prefix: str) -> None:
        self.publisher = Publisher.from_url(url, shards=SHARDS, wait_replicas=1, wait_timeout_ms=500, timeout_s=1)
        self.prefix = prefix
        self.acknowledged: list[tuple[str, str]] = []  # (mcp_id, interaction_id)
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        batch = 0
        while not self.stopping.is_set():
            records = [record(batch * 20 + i, mcp_id=f"mcp-{i % 12}") for i in range(20)]
            for item in records:
                item["interaction_id"] = f"{self.prefix}-{item['interaction_id']}"
            while True:
                try:
                    self.publisher.publish_many(records)
                    break
                except PublishError:
                    self.failures += 1
                    time.sleep(0.1)
            self.acknowledged += [(str(item["mcp_id"]), str(item["interaction_id"])) for item in records]
            batch += 1

    def stop(self) -> list[tuple[str, str]]:
        self.stopping.set()
        self.thread.join(timeout=60)
        self.publisher.close()
        return self.acknowledged


def _post_until_accepted(base_url: str, body: str) -> None:
    deadline = time.monotonic() + 60
    answer = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(f"{base_url}{INGEST}", content=body, timeout=10)
        except httpx.HTTPError as error:
            answer = repr(error)
        else:
            if response.status_code == 202:
                return
            answer = response.text
        time.sleep(0.2)
    raise AssertionError(f"the gateway never accepted the record; it last said {answer}")


@pytest.mark.fault
def test_a_cluster_stores_every_acknowledged_record_once_through_a_worker_kill_and_a_failover(
    redis_cluster: RedisCluster, database_url: str, tmp_path: Path
) -> None:
    """6 shards on 3 masters, 2 workers; SIGKILL a worker, kill a master: every acknowledged record is stored once."""
    migrate(database_url)
    layout = Layout("interactions", SHARDS)
    masters = redis_cluster.masters()
    owners = {
        port
        for shard in layout.all()
        for port, ranges in masters.items()
        if any(start <= key_slot(shard.stream.encode()) <= end for start, end in ranges)
    }
    assert owners == set(masters), "the shards do not spread over every master"

    url = redis_cluster.url
    workers = [start_worker(url, database_url, tmp_path) for _ in range(2)]
    expected: set[tuple[str, str]] = set()
    try:
        with running_gateway(url, database_url, tmp_path, no_auth=True, shards=str(SHARDS), wait_replicas="1") as gw:
            load = Load(url, "helper")
            wait_until(lambda: count_rows(database_url) > 200, timeout_s=60, what="records flowing")
            workers[0].kill()
            workers[0] = start_worker(url, database_url, tmp_path)
            # A master other than the node named in the URL (new processes start from that node).
            victim_port = next(port for port in masters if port != redis_cluster.nodes[0].port)
            victim = redis_cluster.node_on(victim_port)
            for index in range(40):
                _post_until_accepted(gw.http_url, f'{{"mcp_id": "gw-{index % 5}", "interaction_id": "gw-{index}"}}')
                expected.add((f"gw-{index % 5}", f"gw-{index}"))
                if index == 10:
                    victim.kill()
                    wait_until(lambda: victim_port not in masters_now(redis_cluster), timeout_s=60, what="failover")
                    # The promoted replica has no replica of its own, so WAIT 1 refuses its shard's writes until
                    # the old master is back, as a replica now (its nodes.conf is kept).
                    victim.start()
            redis_cluster.wait_until_healthy(timeout_s=60)
            assert victim_port not in redis_cluster.masters()
            time.sleep(1)  # the helper's load goes on a little under the new master
            expected |= set(load.stop())
        wait_until(
            lambda: expected <= set(stored_rows(database_url)), timeout_s=120, what="every acknowledged record stored"
        )
        wait_until(lambda: no_pending(url, layout), timeout_s=60, what="nothing pending")
    finally:
        for worker in workers:  # every one, even when a stop times out: none may outlive the test
            try:
                if worker.process.poll() is None:
                    worker.stop()
            finally:
                worker.kill()
    stored = stored_rows(database_url)
    assert len(stored) == len(set(stored)) == len(expected), "a record was stored twice, or one never published"
    assert load.failures >= 0  # publishes refused during the failover were republished, each stored once


def masters_now(cluster: RedisCluster) -> set[int]:
    """Ports of the masters a live node reports, or nothing while the cluster cannot say."""
    try:
        return set(cluster.masters())
    except (redis.RedisError, OSError, StopIteration):
        return set()


def no_pending(url: str, layout: Layout) -> bool:
    """Every shard's group has nothing pending (read through the cluster client)."""
    client = redis.RedisCluster.from_url(url)
    try:
        return all(int(client.xpending(shard.stream, "interactionlog")["pending"]) == 0 for shard in layout.all())
    finally:
        client.close()


def test_a_cluster_dead_letters_each_bad_entry_once_in_its_shards_dead_letter_stream(
    redis_cluster: RedisCluster, database_url: str, tmp_path: Path
) -> None:
    """6 shards over 3 masters, each holding 3 records the worker must dead-letter and 2 good ones: the settle's
    WATCH, XLEN and MULTI/EXEC run on the slot's master, and every shard's dead-letter stream holds exactly its
    own bad entries, once each, with nothing left pending."""
    migrate(database_url)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    bad: dict[str, list[str]] = {}
    try:
        for shard in Layout("interactions", SHARDS).all():
            bad[shard.dead_letter_stream] = [
                text(client.xadd(shard.stream, {"v": "1", "data": f'{{"mcp_id":"m","duration_ms":"slow-{index}"}}'}))
                for index in range(3)
            ]
            for index in range(2):
                client.xadd(
                    shard.stream, {"v": "1", "data": f'{{"mcp_id":"m","interaction_id":"{shard.stream}-{index}"}}'}
                )
        worker = start_worker(redis_cluster.url, database_url, tmp_path)
        try:
            wait_until(lambda: count_rows(database_url) == 2 * SHARDS, timeout_s=60, what="the good records stored")
            layout = Layout("interactions", SHARDS)
            wait_until(lambda: no_pending(redis_cluster.url, layout), timeout_s=60, what="nothing pending")
        finally:
            worker.kill()
        for dead_letter_stream, ids in bad.items():
            letters = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(dead_letter_stream))
            sources = [fields[b"source_id"].decode() for _, fields in letters]
            assert sources == ids, dead_letter_stream
    finally:
        client.close()
