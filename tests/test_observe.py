"""The metrics port and `status` checks: gauges that match a known backlog, one Redis read per interval shared by
every replica, honest unknown lag, and health endpoints that say what is wrong."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from interactionlog import probes
from interactionlog.cli import main
from interactionlog.client.publisher import encode_fields
from interactionlog.probes import MetricsServer
from interactionlog.worker.gauges import GaugeCollector, Snapshot, StreamGauges, lease_key, snapshot_key
from interactionlog.worker.health import Health
from interactionlog.worker.housekeeping import loss_key
from interactionlog.worker.state import collect_status
from interactionlog.worker.store import Store

from .pipeline import migrate, record, running_worker, wait_until
from .servers import free_port

STREAM, DLQ, GROUP = "interactions", "interactions:dlq", "interactionlog"
BEHIND, STUCK = "behind", "stuck"  # a second group whose only consumer read some entries and then hung
N_ENTRIES, N_READ, N_DEAD = 10, 4, 3
AGE_S = 120  # the backlog's entries were added this long ago

T = TypeVar("T")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def build_backlog(client: redis.Redis) -> list[str]:
    """N valid entries added AGE_S ago, the first M delivered to consumer `stuck` of group `behind` and never
    acknowledged, and K dead letters; returns the entry ids."""
    base_ms = int(time.time() * 1000) - AGE_S * 1000
    ids = []
    for index in range(N_ENTRIES):
        fields: Any = encode_fields(record(index), 256 * 1024)
        ids.append(cast(bytes, client.xadd(STREAM, fields, id=f"{base_ms + index}-0")).decode())
    client.xgroup_create(STREAM, BEHIND, id="0")
    client.xreadgroup(BEHIND, STUCK, {STREAM: ">"}, count=N_READ)
    for index in range(N_DEAD):
        client.xadd(DLQ, {"error_type": "invalid_record", "source_id": ids[index]})
    return ids


def http_get(port: int, path: str, accept: str = "") -> tuple[int, str, str]:
    """(status, content type, body) of GET `path` on the metrics port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples:
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    return parse(body)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((f"interactionlog_{name}", frozenset(labels.items())))


def scrape_until(port: int, condition: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until a snapshot satisfies `condition`, and return it."""
    found: list[Samples] = []

    def check() -> bool:
        try:
            found[:] = [scrape(port)]
        except ConnectionRefusedError:  # the worker is still starting
            return False
        return condition(found[0])

    wait_until(check, timeout_s=30, what=what)
    return found[0]


def test_a_running_worker_serves_each_gauge_of_a_known_backlog(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """With N entries, M delivered and unacknowledged, K dead letters, a worker's /metrics shows the exact stream
    length, lag, pending, oldest pending age, consumers and dead letters; XDEL of an unread entry makes that
    group's lag unknown (absent, lag_known 0) while the caught-up group's lag stays known."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    ids = build_backlog(client)
    port = free_port()
    flags = {"metrics_port": str(port), "metrics_interval_s": "0.2", "concurrency": "2"}
    with running_worker(redis_url, database_url, tmp_path, **flags) as worker:
        ours, behind = {"stream": STREAM, "group": GROUP}, {"stream": STREAM, "group": BEHIND}
        stuck = {**behind, "consumer": STUCK}
        samples = scrape_until(
            port,
            lambda s: (
                value(s, "stream_group_lag", **ours) == 0
                and value(s, "stream_group_pending_entries", **ours) == 0
                and (value(s, "stream_group_consumer_idle_seconds", **stuck) or 0) > 2
            ),  # past claim_idle_ms 1.5 s
            "the worker to drain its group and the stuck consumer to idle past claim_idle_ms",
        )
        assert value(samples, "stream_length", stream=STREAM) == N_ENTRIES
        assert value(samples, "dead_letter_stream_length", stream=STREAM) == N_DEAD
        assert value(samples, "stream_group_lag", **behind) == N_ENTRIES - N_READ
        assert value(samples, "stream_group_lag_known", **behind) == 1
        assert value(samples, "stream_group_pending_entries", **behind) == N_READ
        age = value(samples, "stream_group_oldest_pending_age_seconds", **behind)
        assert age is not None
        assert AGE_S <= age < AGE_S + 60
        assert value(samples, "stream_group_consumers", **behind) == 1
        assert value(samples, "stream_group_active_consumers", **behind) == 0
        assert value(samples, "stream_group_consumer_pending_entries", **stuck) == N_READ
        assert value(samples, "stream_group_lost_to_trimming_entries", **behind) == 0
        assert value(samples, "stream_group_consumers", **ours) == 2
        # Redis 7.0 resets idle only on delivery, 7.2+ on every read: count what this snapshot itself shows.
        idle_s = [
            seconds
            for (name, labels), seconds in samples.items()
            if name == "interactionlog_stream_group_consumer_idle_seconds" and ("group", GROUP) in labels
        ]
        assert len(idle_s) == 2
        assert value(samples, "stream_group_active_consumers", **ours) == sum(s < 1.5 for s in idle_s)
        assert value(samples, "stream_group_oldest_pending_age_seconds", **ours) == 0
        assert value(samples, "entries_persisted_total", **ours) == N_ENTRIES
        assert time.time() - (value(samples, "stream_collected_timestamp_seconds", stream=STREAM) or 0) < 10

        client.xdel(STREAM, ids[N_READ + 2])  # delivered to our group, never to `behind`
        samples = scrape_until(
            port, lambda s: value(s, "stream_group_lag_known", **behind) == 0, "the lag of `behind` to go unknown"
        )
        assert value(samples, "stream_group_lag", **behind) is None, "unknown lag is absent, never 0"
        assert value(samples, "stream_length", stream=STREAM) == N_ENTRIES - 1
        assert value(samples, "stream_group_lag", **ours) == 0
        assert value(samples, "stream_group_lag_known", **ours) == 1
        assert http_get(port, "/livez")[0] == 200
        status, content_type, body = http_get(port, "/readyz")
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body) == {"ready": True, "checks": {"redis": "ok", "postgres": "ok", "group": "ok"}}
        assert worker.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        http_get(port, "/livez")


def collectors(redis_url: str, count: int, interval_s: float) -> list[GaugeCollector]:
    return [
        GaugeCollector(
            aioredis.Redis.from_url(redis_url),
            StreamGauges(STREAM, active_idle_s=30, stale_after_s=60),
            stream=STREAM,
            dead_letter_stream=DLQ,
            owner=f"replica-{index}",
            interval_s=interval_s,
        )
        for index in range(count)
    ]


def test_replicas_share_one_redis_read_per_interval(redis_url: str) -> None:
    """Three replicas refreshing in the same interval read Redis once between them and serve one snapshot."""
    build_backlog(redis.Redis.from_url(redis_url))
    replicas = collectors(redis_url, 3, interval_s=0.5)

    async def scenario() -> list[list[Snapshot]]:
        rounds = []
        for _ in range(3):
            rounds.append([await replica.refresh() for replica in replicas])
            await asyncio.sleep(0.6)  # past the lease
        for replica in replicas:
            await replica.redis.aclose()
        return rounds

    rounds = asyncio.run(scenario())
    assert sum(replica.collected for replica in replicas) == 3
    assert sum(replica.shared for replica in replicas) == 6
    for snapshots in rounds:
        assert all(snapshot == snapshots[0] for snapshot in snapshots)
    assert len({snapshots[0].collected_at for snapshots in rounds}) == 3


def test_a_replica_reads_redis_itself_when_the_lease_holder_published_nothing(redis_url: str) -> None:
    """When the lease is held by a replica that died before publishing, another one reads Redis and publishes."""
    client = redis.Redis.from_url(redis_url)
    build_backlog(client)
    client.set(lease_key(STREAM), "a-replica-that-died", px=60_000)
    (replica,) = collectors(redis_url, 1, interval_s=5)

    async def scenario() -> Snapshot:
        try:
            return await replica.refresh()
        finally:
            await replica.redis.aclose()

    snapshot = asyncio.run(scenario())
    assert (replica.collected, replica.shared) == (1, 0)
    assert snapshot.status.length == N_ENTRIES
    published = client.get(snapshot_key(STREAM))
    assert published is not None
    assert Snapshot.from_json(cast(bytes, published)) == snapshot


def test_gauges_go_absent_when_the_snapshot_is_too_old_to_trust(redis_url: str) -> None:
    """A snapshot older than stale_after_s is not served; only its timestamp remains, for the staleness alert."""
    build_backlog(redis.Redis.from_url(redis_url))

    async def read_status() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await collect_status(client, STREAM, DLQ)
        finally:
            await client.aclose()

    gauges = StreamGauges(STREAM, active_idle_s=30, stale_after_s=45)
    registry = CollectorRegistry()
    registry.register(gauges)
    gauges.snapshot = Snapshot(time.time() - 100, asyncio.run(read_status()))
    stale = parse(generate_latest(registry).decode())
    assert {name for name, _ in stale} == {"interactionlog_stream_collected_timestamp_seconds"}
    gauges.snapshot = Snapshot(time.time(), gauges.snapshot.status)
    fresh = parse(generate_latest(registry).decode())
    assert value(fresh, "stream_group_lag", stream=STREAM, group=BEHIND) == N_ENTRIES - N_READ


def test_recorded_trim_losses_are_served_per_group_and_zero_until_then(redis_url: str) -> None:
    """The all-time losses housekeeping records in Redis reach their group's gauge; a group without losses shows 0,
    not an absent series, so the first loss is a visible step."""
    client = redis.Redis.from_url(redis_url)
    build_backlog(client)
    client.xgroup_create(STREAM, "unharmed", id="$")
    client.hset(loss_key(STREAM), BEHIND, 7)
    (replica,) = collectors(redis_url, 1, interval_s=5)

    async def scenario() -> None:
        try:
            replica.gauges.snapshot = await replica.refresh()
        finally:
            await replica.redis.aclose()

    asyncio.run(scenario())
    registry = CollectorRegistry()
    registry.register(replica.gauges)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "stream_group_lost_to_trimming_entries", stream=STREAM, group=BEHIND) == 7
    assert value(samples, "stream_group_lost_to_trimming_entries", stream=STREAM, group="unharmed") == 0


def serve(
    redis_url: str,
    database_url: str,
    probe: Callable[[int], Awaitable[T]],
    *,
    stopping: asyncio.Event | None = None,
    group: str = BEHIND,
) -> T:
    """Serve the metrics port in-process, with a Health on the given URLs, and return what `probe(port)` found."""

    async def scenario() -> T:
        client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1)
        store = await Store.open(database_url, max_connections=1, timeout_s=0.5)
        health = Health(client, store, stream=STREAM, group=group, stopping=stopping or asyncio.Event(), timeout_s=1)
        beating = asyncio.create_task(health.beat())
        server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), health)
        try:
            return await probe(server.port)
        finally:
            await asyncio.to_thread(server.close)
            beating.cancel()
            await store.close()
            await client.aclose()

    return asyncio.run(scenario())


def in_thread(function: Callable[[int], T]) -> Callable[[int], Awaitable[T]]:
    """A probe running blocking HTTP calls in a thread, so the event loop keeps turning meanwhile."""
    return lambda port: asyncio.to_thread(function, port)


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = http_get(port, "/readyz")
    return status, json.loads(body)


def test_readyz_is_200_when_redis_postgres_and_the_group_are_there(redis_url: str, database_url: str) -> None:
    """Ready means Redis answers, PostgreSQL answers and would take rows, and the worker's group exists."""
    migrate(database_url)
    build_backlog(redis.Redis.from_url(redis_url))
    status, body = serve(redis_url, database_url, in_thread(readiness))
    assert status == 200
    assert body["checks"] == {"redis": "ok", "postgres": "ok", "group": "ok"}


def test_readyz_is_503_naming_the_missing_group(redis_url: str, database_url: str) -> None:
    """With Redis and PostgreSQL up but no such group, readiness fails and says which group is missing."""
    migrate(database_url)
    build_backlog(redis.Redis.from_url(redis_url))
    status, body = serve(redis_url, database_url, in_thread(readiness), group="nobody")
    assert status == 503
    assert body["checks"]["group"] == f"missing: no group nobody on stream {STREAM}"
    assert body["checks"]["redis"] == body["checks"]["postgres"] == "ok"


def test_readyz_is_503_naming_unreachable_dependencies_without_secrets() -> None:
    """With nothing listening where Redis and PostgreSQL should be, both checks fail, and no password leaks."""
    redis_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    database_url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/app"
    status, body = serve(redis_url, database_url, in_thread(readiness))
    assert status == 503
    assert body["checks"]["redis"].startswith("unreachable")
    assert body["checks"]["postgres"].startswith("PostgreSQL is unreachable")
    assert "hunter2" not in json.dumps(body)


def test_readyz_is_503_while_the_worker_drains(redis_url: str, database_url: str) -> None:
    """Once a stop signal arrived, readiness fails even though every dependency is fine."""
    build_backlog(redis.Redis.from_url(redis_url))
    stopping = asyncio.Event()
    stopping.set()
    status, body = serve(redis_url, database_url, in_thread(readiness), stopping=stopping)
    assert status == 503
    assert body["checks"] == {"worker": "draining after a stop signal"}


def test_livez_fails_while_the_event_loop_is_blocked(
    redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/livez answers 200 while the loop turns and 503 once it has been blocked longer than the threshold."""
    monkeypatch.setattr(probes, "LIVENESS_STALE_S", 0.5)

    def late_livez(port: int) -> int:
        time.sleep(3)  # by now the loop has been blocked for 3 s
        return http_get(port, "/livez")[0]

    async def probe(port: int) -> tuple[int, int]:
        healthy = (await asyncio.to_thread(http_get, port, "/livez"))[0]
        late = asyncio.create_task(asyncio.to_thread(late_livez, port))
        await asyncio.sleep(0.1)  # the thread starts
        time.sleep(4)  # noqa: ASYNC251  # blocking the event loop is what this test is about
        return healthy, await late

    assert serve(redis_url, database_url, probe) == (200, 503)


def test_metrics_speaks_openmetrics_when_asked_and_404_names_the_real_paths(redis_url: str, database_url: str) -> None:
    """/metrics answers Prometheus text by default and OpenMetrics on request; other paths get a helpful 404."""

    def probe(port: int) -> list[tuple[int, str, str]]:
        return [
            http_get(port, "/metrics"),
            http_get(port, "/metrics", accept="application/openmetrics-text; version=1.0.0"),
            http_get(port, "/health"),
        ]

    plain, openmetrics, missing = serve(redis_url, database_url, in_thread(probe))
    assert plain[0] == 200
    assert plain[1].startswith("text/plain")
    assert openmetrics[0] == 200
    assert openmetrics[1].startswith("application/openmetrics-text")
    assert openmetrics[2].endswith("# EOF\n")
    assert missing[0] == 404
    assert "/metrics" in missing[2]
    assert "/readyz" in missing[2]


@pytest.fixture
def backlog(redis_url: str) -> Iterator[list[str]]:
    client = redis.Redis.from_url(redis_url)
    yield build_backlog(client)
    client.close()


def run_status(redis_url: str, *flags: str) -> Any:
    return CliRunner().invoke(main, ["status", "--redis-url", redis_url, "--group", BEHIND, *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--max-lag", "5"), f"lag {N_ENTRIES - N_READ} exceeds --max-lag 5"),
        (("--max-pending-age-s", "60"), "over --max-pending-age-s 60"),
        (("--max-dead-letters", "2"), f"{N_DEAD} dead letters in {DLQ} exceed --max-dead-letters 2"),
        (("--group", "nobody", "--max-lag", "100"), "no group nobody"),
    ],
)
def test_status_exits_3_naming_the_exceeded_threshold(
    backlog: list[str], redis_url: str, flags: Any, message: str
) -> None:
    """A threshold the backlog exceeds makes `status` exit 3 and say which one on stderr; stdout is unchanged."""
    result = run_status(redis_url, "--json", *flags)
    assert result.exit_code == 3
    assert message in result.stderr
    assert json.loads(result.stdout)["stream"] == STREAM


def test_status_exits_0_when_every_threshold_holds(backlog: list[str], redis_url: str) -> None:
    """Thresholds equal to the backlog's figures pass: exceeding means strictly more."""
    result = run_status(
        redis_url,
        "--max-lag",
        str(N_ENTRIES - N_READ),
        "--max-pending-age-s",
        "600",
        "--max-dead-letters",
        str(N_DEAD),
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_status_fails_on_unknown_lag_only_when_asked(backlog: list[str], redis_url: str) -> None:
    """With the lag unknown, --max-lag warns and passes; --fail-on-unknown-lag turns that into a failure."""
    redis.Redis.from_url(redis_url).xdel(STREAM, backlog[N_READ + 2])
    lenient = run_status(redis_url, "--max-lag", "100")
    assert lenient.exit_code == 0
    assert "warning: group behind: Redis reports the lag as unknown" in lenient.stderr
    strict = run_status(redis_url, "--max-lag", "100", "--fail-on-unknown-lag")
    assert strict.exit_code == 3
    assert "check failed: group behind: Redis reports the lag as unknown" in strict.stderr
