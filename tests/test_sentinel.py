"""The pipeline behind Sentinel on loopback (a master, a replica, 3 sentinels): a failover during load loses no
acknowledged record.

As with the cluster test, the publisher runs with `wait_replicas=1`, so an acknowledged record is on the replica
that Sentinel promotes; without it, what the master acknowledged in its last replication lag would be lost with
it, which is what Redis's asynchronous replication documents. The killed master is started again after the
failover; Sentinel turns it into a replica of the new master, and WAIT 1 can succeed again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from interactionlog.client.publisher import Publisher
from interactionlog.errors import PublishError
from interactionlog.settings import Settings
from tests.pipeline import count_rows, migrate, running_worker, stored_rows, wait_until
from tests.servers import RedisSentinels


def test_a_sentinel_url_is_accepted_and_a_malformed_one_refused_with_the_form() -> None:
    """`redis+sentinel://h:p,h:p/service` validates; one without a service name says the form to use."""
    Settings(redis_url="redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/interactionlog")
    with pytest.raises(ValueError, match="service_name"):
        Settings(redis_url="redis+sentinel://127.0.0.1:26379")


@pytest.mark.fault
def test_a_sentinel_failover_during_load_loses_no_acknowledged_record(
    redis_sentinels: RedisSentinels, database_url: str, tmp_path: Path
) -> None:
    """Publishing (WAIT 1) and consuming through a master killed mid-load: every acknowledged record is stored once."""
    migrate(database_url)
    url = redis_sentinels.url
    acknowledged: list[tuple[str, str]] = []
    attempted: set[tuple[str, str]] = set()  # sent at least once; one that raised may have been added anyway
    stopping = threading.Event()

    def publish() -> None:
        with Publisher.from_url(url, wait_replicas=1, wait_timeout_ms=500, timeout_s=1) as publisher:
            batch = 0
            while not stopping.is_set():
                records = [{"mcp_id": f"mcp-{i % 4}", "interaction_id": f"s-{batch}-{i}"} for i in range(20)]
                attempted.update((str(r["mcp_id"]), str(r["interaction_id"])) for r in records)
                try:
                    publisher.publish_many(records)
                except PublishError:
                    time.sleep(0.1)
                    continue  # the same records again: stored once either way
                acknowledged.extend((str(r["mcp_id"]), str(r["interaction_id"])) for r in records)
                batch += 1

    load = threading.Thread(target=publish, daemon=True)
    with running_worker(url, database_url, tmp_path, redis_timeout_s="1") as worker:
        load.start()
        wait_until(lambda: count_rows(database_url) > 200, timeout_s=60, what="records flowing")
        old = redis_sentinels.master()
        old.kill()
        wait_until(lambda: redis_sentinels.master() is not old, timeout_s=60, what="the sentinels' failover")
        old.start()  # back as a replica of the new master, so WAIT 1 succeeds again
        wait_until(lambda: len(acknowledged) > 0 and count_rows(database_url) > len(acknowledged) // 2, timeout_s=30)
        time.sleep(1)
        stopping.set()
        load.join(timeout=60)
        expected = set(acknowledged)
        wait_until(lambda: expected <= set(stored_rows(database_url)), timeout_s=90, what="every record stored")
        assert worker.stop() == 0
    stored = stored_rows(database_url)
    assert len(stored) == len(set(stored)), "a record was stored twice"
    assert expected <= set(stored) <= attempted
