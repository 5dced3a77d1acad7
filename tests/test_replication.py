"""`wait_replicas`: a publish is acknowledged only once that many replicas hold its entries."""

from __future__ import annotations

import asyncio

import pytest
import redis

from interactionlog.client.publisher import AsyncPublisher, Publisher
from interactionlog.errors import PublishUnavailableError
from tests.pipeline import wait_until
from tests.servers import RedisServer


def test_a_publish_no_replica_confirms_raises_with_the_entries_to_send_again(redis_url: str) -> None:
    """With no replica, WAIT 1 times out: the error says so and carries the entries (which were added)."""
    publisher = Publisher.from_url(redis_url, wait_replicas=1, wait_timeout_ms=50)
    with publisher, pytest.raises(PublishUnavailableError, match="0 of 1 replicas") as raised:
        publisher.publish({"mcp_id": "m", "interaction_id": "w1"})
    assert len(raised.value.entries) == 1
    assert raised.value.interaction_ids == ("w1",)
    assert redis.Redis.from_url(redis_url).xlen("interactions") == 1


def test_a_publish_a_replica_confirms_is_acknowledged_by_both_publishers(own_redis: RedisServer) -> None:
    """With a replica attached, WAIT 1 returns 1 and both the sync and the asyncio publisher return entry ids."""
    with RedisServer(extra_args=["--replicaof", "127.0.0.1", str(own_redis.port)]) as replica:
        client = redis.Redis(port=replica.port)
        wait_until(lambda: client.info("replication").get("master_link_status") == "up", what="the replica linked")
        with Publisher.from_url(own_redis.url, wait_replicas=1, wait_timeout_ms=2000, shards=3) as publisher:
            ids = publisher.publish_many([{"mcp_id": f"m{i}", "interaction_id": f"r{i}"} for i in range(9)])

        async def publish_async() -> list[str]:
            async with AsyncPublisher.from_url(own_redis.url, wait_replicas=1, wait_timeout_ms=2000) as publisher:
                return await publisher.publish_many([{"mcp_id": "a", "interaction_id": "a1"}])

        assert len(ids) == 9
        assert all(ids)
        assert len(asyncio.run(publish_async())) == 1
