"""Housekeeping: trimming never removes what a group still needs, guard-rail losses are counted exactly once,
and departed consumers are removed only when they hold nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from interactionlog.entry_ids import next_id
from interactionlog.worker.housekeeping import Housekeeper, HousekeepingReport, recorded_losses
from interactionlog.worker.presence import live_until

from .pipeline import stream_entries

STREAM = "interactions"


def run_round(redis_url: str, *, idle_ms: int = 60_000, prefix: str = "me", group: str = "g") -> HousekeepingReport:
    """One housekeeping round for `group`, as a worker of that group runs it."""

    async def scenario() -> HousekeepingReport:
        client = aioredis.Redis.from_url(redis_url)
        try:
            housekeeper = Housekeeper(client, stream=STREAM, group=group, consumer_idle_ms=idle_ms, own_prefix=prefix)
            return await housekeeper.run_once()
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def fill(client: redis.Redis, count: int, stream: str = STREAM) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.xadd(stream, {"v": "1", "data": f'{{"mcp_id":"m","interaction_id":"{index}"}}'})
    ids: list[bytes] = pipe.execute()
    return [entry_id.decode() for entry_id in ids]


def read(client: redis.Redis, group: str, consumer: str, count: int) -> list[str]:
    reply: Any = client.xreadgroup(group, consumer, {STREAM: ">"}, count=count)
    return [entry_id.decode() for entry_id, _ in reply[0][1]] if reply else []


def test_next_id_is_the_successor_within_the_millisecond() -> None:
    """The id right after 5-3 is 5-4."""
    assert next_id("5-3") == "5-4"


def test_trimming_keeps_pending_and_undelivered_entries_of_every_group(redis_url: str) -> None:
    """Entries are trimmed only once every group has acknowledged them; pending and unread ones stay."""
    client = redis.Redis.from_url(redis_url)
    ids = fill(client, 3000)
    client.xgroup_create(STREAM, "fast", id="0")
    client.xgroup_create(STREAM, "slow", id="0")
    client.xack(STREAM, "fast", *read(client, "fast", "c", 2500))
    slow = read(client, "slow", "c", 2000)
    client.xack(STREAM, "slow", *slow[:1500])  # entries 1500..1999 stay pending for "slow"
    run_round(redis_url, group="fast")
    remaining = [entry_id for entry_id, _ in stream_entries(client)]
    assert set(ids[1500:]) <= set(remaining), "pending (slow) and undelivered entries survive"
    assert len(remaining) < 3000, "acknowledged entries are trimmed"
    assert remaining == ids[len(ids) - len(remaining) :], "only a prefix is removed"


def test_a_stream_without_groups_is_never_trimmed(redis_url: str) -> None:
    """Before any worker created its group, nothing has been processed, so nothing is trimmed."""
    client = redis.Redis.from_url(redis_url)
    fill(client, 500)
    assert run_round(redis_url).trimmed == 0
    assert client.xlen(STREAM) == 500


def test_entries_trimmed_before_the_group_read_them_are_counted_once(redis_url: str) -> None:
    """A MAXLEN cap that cuts into the unread backlog is reported as an exact loss, counted by one round only."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, "g", id="0", mkstream=True)
    fill(client, 10)
    client.xack(STREAM, "g", *read(client, "g", "c", 2))
    client.xtrim(STREAM, maxlen=3, approximate=False)  # removes 7 entries, 5 of them never read
    first = run_round(redis_url)
    assert first.lost == {"g": 5}
    assert run_round(redis_url).lost == {}, "the same loss is not counted twice"
    read(client, "g", "c", 100)
    assert run_round(redis_url).lost == {}, "reading the rest does not look like more loss"
    fill(client, 10)
    client.xtrim(STREAM, maxlen=4, approximate=False)  # 3 unread read-but-pending... and new unread entries cut
    report = run_round(redis_url)
    assert report.lost == {"g": 6}, "only the 6 newly added entries trimmed unread are new losses"
    assert asyncio.run(_losses(redis_url)) == {"g": 11}


async def _losses(redis_url: str) -> dict[str, int]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await recorded_losses(client, STREAM)
    finally:
        await client.aclose()


def test_trimming_by_workers_is_never_counted_as_loss(redis_url: str) -> None:
    """Our own MINID trimming removes only acknowledged entries, so it never registers as a loss."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, "g", id="0", mkstream=True)
    for _ in range(5):
        fill(client, 400)
        client.xack(STREAM, "g", *read(client, "g", "c", 300))
        assert run_round(redis_url).lost == {}


def test_departed_consumers_are_removed_but_never_one_holding_entries(redis_url: str) -> None:
    """Idle consumers with nothing pending are deleted; one with pending entries stays until they are claimed."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, "g", id="0", mkstream=True)
    fill(client, 150)
    for index in range(100):  # a hundred restarts, each leaving a consumer behind
        client.xack(STREAM, "g", *read(client, "g", f"old-{index}", 1))
    read(client, "g", "crashed", 5)  # died holding 5 entries
    read(client, "g", "me-0", 1)  # this process's own consumer
    time.sleep(0.3)
    report = run_round(redis_url, idle_ms=200, prefix="me")
    assert sorted(report.deleted_consumers) == sorted(f"old-{index}" for index in range(100))
    names = {consumer["name"].decode() for consumer in client.xinfo_consumers(STREAM, "g")}
    assert names == {"crashed", "me-0"}
    assert client.xpending(STREAM, "g")["pending"] == 6


def test_own_consumers_stay_announced_before_their_first_read(redis_url: str) -> None:
    """A round run before this process's consumers have read (so before the group knows them) keeps their
    presence: `status` shows them live from the start, not without a live/departed split until the next round."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, "g", id="0", mkstream=True)

    async def scenario() -> dict[str, int] | None:
        connection = aioredis.Redis.from_url(redis_url)
        try:
            housekeeper = Housekeeper(
                connection, stream=STREAM, group="g", consumer_idle_ms=60_000, own_prefix="me", own_consumers=["me-0"]
            )
            await housekeeper.run_once()  # me-0 announced, and not in the group yet
            return await live_until(connection, STREAM, "g")
        finally:
            await connection.aclose()

    announced = asyncio.run(scenario())
    assert announced is not None
    assert announced["me-0"] > time.time() * 1000
