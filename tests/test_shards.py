"""Shards on a single Redis: key names, routing, identities that do not collide, and changing the shard count."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import redis
from redis.crc import key_slot

from interactionlog.client.background import BackgroundPublisher
from interactionlog.client.publisher import Publisher
from interactionlog.errors import ConfigurationError
from interactionlog.shards import Layout, check_one_slot, shard_index
from tests.pipeline import INTERACTIONLOG, count_rows, migrate, running_worker, stored_rows, stream_entries, wait_until
from tests.servers import free_port

GROUP = "interactionlog"


def test_one_shard_keeps_every_key_name_of_an_existing_install() -> None:
    """With one shard the stream and dead-letter stream are named exactly as before sharding existed."""
    (shard,) = Layout("interactions").all()
    assert (shard.stream, shard.dead_letter_stream, shard.identity_prefix) == ("interactions", "interactions:dlq", "")
    (custom,) = Layout("events", 1, "events-dead").all()
    assert custom.dead_letter_stream == "events-dead"


@pytest.mark.parametrize("shards", [2, 3, 6, 16, 256])
def test_each_shard_lies_in_its_own_equal_slot_range_with_its_dead_letters(shards: int) -> None:
    """Shard i's keys share one slot, inside the i-th of N equal ranges, so an evenly split cluster spreads them."""
    for shard in Layout("interactions", shards).all():
        slot = key_slot(shard.stream.encode())
        assert shard.index * 16384 // shards <= slot < (shard.index + 1) * 16384 // shards
        assert key_slot(shard.dead_letter_stream.encode()) == slot
        assert key_slot(f"{shard.stream}:interactionlog:lost".encode()) == slot
        check_one_slot(shard)


def test_routing_is_a_stable_hash_of_the_mcp_id() -> None:
    """crc32 mod N, the same in every process: a record's shard never depends on Python's salted hash()."""
    # zlib.crc32 of the UTF-8 names: 1288754030, 3035683751, 104153177, fixed by the CRC-32 standard.
    assert [shard_index(mcp_id, 6) for mcp_id in ("weather", "search", "files")] == [
        1288754030 % 6,
        3035683751 % 6,
        104153177 % 6,
    ]
    assert shard_index("anything", 1) == 0


def test_a_single_stream_without_a_hash_tag_is_refused_for_a_cluster() -> None:
    """On a cluster, the legacy single-stream names would put stream and dead letters in two slots."""
    with pytest.raises(ConfigurationError, match="hash tag"):
        check_one_slot(Layout("interactions").shard(0))
    check_one_slot(Layout("{interactions}").shard(0))
    with pytest.raises(ConfigurationError, match="braces"):
        Layout("{interactions}", 2)


def test_a_publisher_sends_each_mcps_records_to_its_shard_in_order(redis_url: str) -> None:
    """`shards=` routes by mcp_id: every record of one MCP is in one shard's stream, in publish order."""
    layout = Layout("interactions", 4)
    with Publisher.from_url(redis_url, shards=4) as publisher:
        publisher.publish_many([{"mcp_id": f"mcp-{i % 5}", "interaction_id": f"r{i:03d}"} for i in range(40)])
    client = redis.Redis.from_url(redis_url)
    seen: dict[str, list[str]] = {}
    for shard in layout.all():
        for _, fields in stream_entries(client, shard.stream):
            data = json.loads(fields[b"data"])
            assert layout.route(data["mcp_id"]) == shard.index
            seen.setdefault(data["mcp_id"], []).append(data["interaction_id"])
    assert sum(len(ids) for ids in seen.values()) == 40
    assert all(ids == sorted(ids) for ids in seen.values())
    assert not client.exists("interactions")


def test_records_without_an_interaction_id_keep_apart_across_shards(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Two shards hand out the same entry id; records identified by it are both stored, told apart by shard."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    layout = Layout("interactions", 2)
    data = json.dumps({"mcp_id": "raw", "method": "tools/call"})
    for shard in layout.all():
        client.xadd(shard.stream, {"v": "1", "data": data}, id="1700000000000-1")
    with running_worker(redis_url, database_url, tmp_path, shards="2"):
        wait_until(lambda: count_rows(database_url) == 2, what="both records stored")
    ids = sorted(interaction_id for _, interaction_id in stored_rows(database_url))
    assert ids == sorted(f"{shard.tag}/1700000000000-1" for shard in layout.all())


def test_changing_the_shard_count_loses_nothing_while_workers_drain_the_old_layout(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Records left in 1-shard and 3-shard streams are all stored by workers run with --shards 5 --drain-shards 1,3."""
    migrate(database_url)
    published = 0
    for shards in (1, 3, 5):
        with Publisher.from_url(redis_url, shards=shards) as publisher:
            publisher.publish_many([{"mcp_id": f"mcp-{i % 7}", "interaction_id": f"s{shards}-{i}"} for i in range(30)])
            published += 30
    with running_worker(redis_url, database_url, tmp_path, shards="5", drain_shards="1,3") as worker:
        wait_until(lambda: count_rows(database_url) == published, what="every record stored")
        assert worker.stop() == 0
    client = redis.Redis.from_url(redis_url)
    for layout in (Layout("interactions"), Layout("interactions", 3), Layout("interactions", 5)):
        for shard in layout.all():
            assert client.xpending(shard.stream, GROUP)["pending"] == 0
    assert len(set(stored_rows(database_url))) == published


def test_status_and_dlq_list_cover_every_shard(redis_url: str) -> None:
    """`status --shards 3` reports each shard's stream; `dlq list` finds dead letters in any shard."""
    client = redis.Redis.from_url(redis_url)
    layout = Layout("interactions", 3)
    for shard in layout.all():
        client.xgroup_create(shard.stream, GROUP, id="0", mkstream=True)
    last = layout.shard(2)
    client.xadd(last.dead_letter_stream, {"error_type": "invalid_json", "error": "bad", "source_id": "1-1"})
    shown = subprocess.run(
        [*INTERACTIONLOG, "status", "--redis-url", redis_url, "--shards", "3", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [item["stream"] for item in json.loads(shown.stdout)] == [shard.stream for shard in layout.all()]
    listed = subprocess.run(
        [*INTERACTIONLOG, "dlq", "list", "--redis-url", redis_url, "--shards", "3"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "source 1-1 [invalid_json]" in listed.stdout


def test_the_background_publisher_routes_by_shard_through_its_sender(redis_url: str, tmp_path: Path) -> None:
    """`BackgroundPublisher.from_url(shards=3)` sends each record to its MCP's shard, like the other helpers."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=tmp_path, shards=3)
    try:
        for index in range(30):
            publisher.publish({"mcp_id": f"mcp-{index % 6}", "interaction_id": f"b{index}"})
        assert publisher.flush(10)
    finally:
        publisher.close()
    client = redis.Redis.from_url(redis_url)
    layout = Layout("interactions", 3)
    found = 0
    for shard in layout.all():
        for _, fields in stream_entries(client, shard.stream):
            assert layout.route(json.loads(fields[b"data"])["mcp_id"]) == shard.index
            found += 1
    assert found == 30


def test_worker_metrics_and_gauges_carry_each_shards_stream(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """Counters and stream gauges of a 2-shard worker come per shard, told apart by the `stream` label."""
    migrate(database_url)
    with Publisher.from_url(redis_url, shards=2) as publisher:
        publisher.publish_many([{"mcp_id": f"mcp-{i}", "interaction_id": f"m{i}"} for i in range(20)])
    port = free_port()
    layout = Layout("interactions", 2)
    with running_worker(
        redis_url, database_url, tmp_path, shards="2", metrics_port=str(port), metrics_interval_s="0.2"
    ):
        wait_until(lambda: count_rows(database_url) == 20, what="every record stored")

        def scraped() -> str:
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""
            return body if all(f'stream_length{{stream="{s.stream}"}}' in body for s in layout.all()) else ""

        body = wait_until(scraped, what="both shards' gauges")
    persisted = {
        shard.stream: _sample(
            body, f'interactionlog_entries_persisted_total{{group="{GROUP}",stream="{shard.stream}"}}'
        )
        for shard in layout.all()
    }
    assert sum(persisted.values()) == 20
    assert all(count > 0 for count in persisted.values())


def _sample(body: str, series: str) -> float:
    line = next(line for line in body.splitlines() if line.startswith(series + " "))
    return float(line.rsplit(" ", 1)[1])
