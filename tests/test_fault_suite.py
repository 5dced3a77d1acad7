"""The fault-injection suite, short form: real workers, a producer with known ids, faults, and the checker.

Run with `pytest -m fault` (a few minutes). The random schedule's seed comes from INTERACTIONLOG_FAULT_SEED or
is drawn at random, and is always printed so a failing run can be replayed. The long form is
`python -m tests.faults.soak --minutes N --seed S`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis

from interactionlog import Publisher
from tests.faults.checker import group_state, stored_state, wait_for
from tests.faults.producer import make_record
from tests.faults.scenario import GROUP, STREAM, ScenarioConfig, Servers, migrate, run_scenario
from tests.faults.workers import FAST_FLAGS, WorkerFleet
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.fault

SEED_VARIABLE = "INTERACTIONLOG_FAULT_SEED"
CLAIM_IDLE_S = float(FAST_FLAGS["claim_idle_ms"]) / 1000
SWEEP_S = float(FAST_FLAGS["claim_interval_ms"]) / 1000
STARTUP_SLACK_S = 6.0  # a worker process starting on a loaded 2-core machine, plus its first round trips
LOSS_METRIC = "interactionlog_entries_lost_to_trimming_total"


def fault_seed() -> int:
    """The seed of this run: INTERACTIONLOG_FAULT_SEED when set, else a fresh random one."""
    configured = os.environ.get(SEED_VARIABLE)
    return int(configured) if configured else random.randrange(2**31)


def publish(redis_url: str, mcp_id: str, seqs: range, *, maxlen: int = 1_000_000) -> list[str]:
    """Publish records `seqs` of run `mcp_id` with the real helper; returns their entry ids."""
    with Publisher.from_url(redis_url, maxlen=maxlen) as publisher:
        return publisher.publish_many(make_record(mcp_id, seq) for seq in seqs)


def client_for(redis_url: str) -> redis.Redis:
    """A plain client for inspecting the stream."""
    return redis.Redis.from_url(redis_url, socket_timeout=10)


def rows(database_url: str, mcp_id: str) -> int:
    """Rows stored for run `mcp_id`."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM interaction_logs WHERE mcp_id = %s", (mcp_id,)).fetchone()
    return int(row[0]) if row else 0


def assert_stored_exactly_once(database_url: str, mcp_id: str, seqs: range) -> None:
    """Every seq has exactly one row with its own payload, and there is nothing else."""
    state = stored_state(database_url, mcp_id)
    assert not state.unexpected, f"rows nobody published: {state.unexpected[:5]}"
    assert not state.corrupted, f"rows with another record's payload: {state.corrupted[:5]}"
    missing = sorted(set(seqs) - set(state.rows))
    assert not missing, f"{len(missing)} records lost, e.g. {missing[:10]}"
    assert not state.duplicated, f"records stored twice: {state.duplicated[:10]}"


def read_group(client: redis.Redis, group: str, consumer: str, count: int) -> list[str]:
    """XREADGROUP `count` new entries as `consumer`, as a worker would; returns their ids."""
    reply = cast(list[Any], client.xreadgroup(group, consumer, {STREAM: ">"}, count=count))
    return [entry_id.decode() for entry_id, _ in reply[0][1]] if reply else []


def drained(client: redis.Redis) -> bool:
    """The group exists with nothing pending, nothing undelivered, and lag 0."""
    return group_state(client, STREAM, GROUP).drained


def settled(client: redis.Redis) -> bool:
    """The group exists with nothing pending and nothing undelivered; lag may still count trimmed entries."""
    return group_state(client, STREAM, GROUP).settled


def await_housekeeping_rounds(client: redis.Redis, rounds: int = 2) -> None:
    """Wait until housekeeping has run `rounds` more times, by planting departed consumers one after another and
    seeing each deleted (workers must run with --consumer-idle-timeout-ms 1000): a condition, not a sleep."""
    for _ in range(rounds):
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        client.xgroup_createconsumer(STREAM, GROUP, marker)
        wait_for(functools.partial(consumer_gone, client, marker), timeout_s=30, what="a housekeeping round")


def consumer_gone(client: redis.Redis, name: str) -> bool:
    """Whether the group no longer lists consumer `name`."""
    return name not in group_state(client, STREAM, GROUP).consumers


@pytest.fixture
def fleet(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[WorkerFleet]:
    """Workers on the shared servers, the table migrated; every worker is stopped afterwards."""
    migrate(database_url)
    workers = WorkerFleet(redis_url, database_url, tmp_path, concurrency=1)
    try:
        yield workers
    finally:
        workers.stop_all()


def assert_no_worker_crashed(workers: WorkerFleet) -> None:
    """No consumer step or housekeeping round crashed, and no traceback escaped the structured logs."""
    for name in ("consumer_step_crashed", "housekeeping_crashed"):
        found = list(workers.events(name))
        assert not found, f"{name}: {found[0][1]}"
    assert not workers.tracebacks()


# --- the random schedule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("own_redis", [{"appendonly": True}], indirect=True)
def test_a_random_fault_schedule_loses_nothing_and_duplicates_nothing(
    own_redis: RedisServer, own_postgres: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a seeded schedule of every fault: lost, duplicated, unexpected 0, drained, recovery bounded."""
    seed = fault_seed()
    with capsys.disabled():
        print(f"\nfault suite seed {seed} (replay: {SEED_VARIABLE}={seed} pytest -m fault)")
    lines: list[str] = []
    verdict = run_scenario(ScenarioConfig(seed=seed), Servers(own_redis, own_postgres), tmp_path, lines.append)
    with capsys.disabled():
        print(verdict.summary())
    problems = verdict.problems()
    assert not problems, "\n".join([*problems, "", *lines, f"worker logs: {tmp_path}"])


# --- crashes at the exact moments of a batch ------------------------------------------------------------


def test_a_worker_killed_after_reading_a_batch_loses_nothing(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """A batch read by a worker SIGKILLed before storing it is claimed by another and stored once, in time."""
    publish(redis_url, "after-read", range(300))
    doomed = fleet.start(crash_at="after_read")
    wait_for(lambda: not doomed.running, timeout_s=60, what="the worker to SIGKILL itself after its first read")
    assert doomed.process.returncode == -9
    assert doomed.events("test_crash_injected")
    client = client_for(redis_url)
    held = group_state(client, STREAM, GROUP).consumers.get(f"{doomed.prefix}-0", 0)
    assert held > 0, "the dead consumer still holds the batch it read"
    assert rows(database_url, "after-read") == 0, "nothing was stored before the crash"

    started = time.monotonic()
    heir = fleet.start()
    wait_for(lambda: rows(database_url, "after-read") == 300 and drained(client), timeout_s=90, what="all 300 stored")
    elapsed = time.monotonic() - started
    assert elapsed <= CLAIM_IDLE_S + SWEEP_S + STARTUP_SLACK_S, f"took {elapsed:.2f}s to recover"
    assert_stored_exactly_once(database_url, "after-read", range(300))
    assert sum(event["entries"] for event in heir.events("batch_processed") if event["source"] == "claimed") == held
    assert_no_worker_crashed(fleet)


def test_a_worker_killed_after_commit_before_the_ack_stores_each_record_once(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """Committed but unacknowledged rows are re-read on restart, skipped as duplicates and acknowledged."""
    publish(redis_url, "after-commit", range(300))
    doomed = fleet.start(crash_at="after_commit")
    wait_for(lambda: not doomed.running, timeout_s=60, what="the worker to SIGKILL itself after its first commit")
    assert doomed.process.returncode == -9
    assert doomed.events("test_crash_injected")
    client = client_for(redis_url)
    committed = rows(database_url, "after-commit")
    held = group_state(client, STREAM, GROUP).consumers.get(f"{doomed.prefix}-0", 0)
    assert committed > 0
    assert held == committed, "the committed batch is still pending, none of it acknowledged"

    started = time.monotonic()
    again = fleet.start(doomed.prefix)
    wait_for(lambda: rows(database_url, "after-commit") == 300 and drained(client), timeout_s=90, what="all 300 stored")
    assert time.monotonic() - started <= STARTUP_SLACK_S, "its own pending entries need no claim"
    assert_stored_exactly_once(database_url, "after-commit", range(300))
    replayed = [event for event in again.events("batch_processed") if event["source"] == "pending"]
    assert sum(event["duplicates"] for event in replayed) == committed
    assert_no_worker_crashed(fleet)


def test_a_frozen_worker_comes_back_as_a_harmless_zombie(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A worker frozen past claim idle loses its batch to another; resumed, it stores nothing twice."""
    database_url = own_postgres.create_database("zombie")
    migrate(database_url)
    publish(redis_url, "zombie", range(300))
    client = client_for(redis_url)
    workers = WorkerFleet(redis_url, database_url, tmp_path, concurrency=1)
    try:
        own_postgres.pause()  # the batch the zombie reads cannot be stored until it is frozen
        zombie = workers.start()
        name = f"{zombie.prefix}-0"
        wait_for(lambda: group_state(client, STREAM, GROUP).consumers.get(name), timeout_s=60, what="a batch read")
        read_at = time.monotonic()
        # Freeze it only once it holds the batch in hand: its heartbeat has reset the entries' idle time. Frozen
        # while Redis's reply was still on its way, it would never receive the batch it is meant to finish.
        wait_for(lambda: holds_its_batch(client, name, read_at), timeout_s=30, what="the zombie holding its batch")
        zombie.freeze()
        held = group_state(client, STREAM, GROUP).consumers[name]
        own_postgres.resume()

        workers.start()
        wait_for(lambda: rows(database_url, "zombie") == 300 and drained(client), timeout_s=90, what="all stored")
        assert group_state(client, STREAM, GROUP).consumers.get(name, 0) == 0, "the zombie's entries were claimed"

        zombie.thaw()
        wait_for(lambda: zombie.events("batch_processed"), timeout_s=60, what="the zombie to finish its batch")
        wait_for(lambda: drained(client), timeout_s=30, what="nothing pending")
        stale = zombie.events("batch_processed")[0]
        assert (stale["entries"], stale["persisted"], stale["duplicates"]) == (held, 0, held)
        assert zombie.running, "the zombie carries on"
        assert_stored_exactly_once(database_url, "zombie", range(300))
        assert_no_worker_crashed(workers)
    finally:
        own_postgres.resume()
        workers.stop_all()


def holds_its_batch(client: redis.Redis, consumer: str, read_at: float) -> bool:
    """Whether `consumer` has reset the idle time of its oldest pending entry since it read it at `read_at`
    (monotonic): only a consumer holding the batch in `handle` does that (XCLAIM JUSTID, every claim_idle/3)."""
    rows = client.xpending_range(STREAM, GROUP, "-", "+", 1, consumername=consumer)
    since_read_ms = (time.monotonic() - read_at) * 1000
    return bool(rows) and int(rows[0]["time_since_delivered"]) + 300 < since_read_ms


def backend_pids(postgres: PostgresServer, dbname: str) -> list[int]:
    """The client backends connected to `dbname` right now."""
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        found = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'", (dbname,)
        ).fetchall()
    return [int(pid) for (pid,) in found]


def test_a_batch_stuck_on_a_hung_database_connection_is_taken_over_by_another_worker(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A batch stuck on a hung PostgreSQL connection is claimed and stored by another worker, in time."""
    # A frozen backend stands for a half-open TCP connection: no error, no progress. A holder that cannot make
    # progress must not keep its entries from every other consumer, whatever keeps them from being claimed.
    database_url = own_postgres.create_database("hung")
    migrate(database_url)
    client = client_for(redis_url)
    workers = WorkerFleet(redis_url, database_url, tmp_path, concurrency=1)
    frozen: list[int] = []
    try:
        stuck = workers.start()
        wait_for(lambda: backend_pids(own_postgres, "hung"), timeout_s=60, what="the worker's pool connected")
        wait_for(lambda: stuck.events("consumer_started"), timeout_s=60, what="the worker reading")
        frozen = backend_pids(own_postgres, "hung")
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        publish(redis_url, "hung", range(300))
        name = f"{stuck.prefix}-0"
        wait_for(lambda: group_state(client, STREAM, GROUP).consumers.get(name), timeout_s=60, what="a batch held")

        started = time.monotonic()
        workers.start()
        deadline_s = CLAIM_IDLE_S + SWEEP_S + STARTUP_SLACK_S + 10
        wait_for(lambda: rows(database_url, "hung") == 300, timeout_s=deadline_s, what="another worker storing it")
        assert time.monotonic() - started <= deadline_s
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        workers.stop_all()
    wait_for(lambda: drained(client), timeout_s=30, what="nothing pending once the connection is back")
    assert_stored_exactly_once(database_url, "hung", range(300))


def test_every_line_a_worker_logs_through_a_postgres_restart_is_json(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """With --log-format json, every line a worker writes through a PostgreSQL restart is a JSON object."""
    # The connection pool's own warnings included: log pipelines must be able to parse the outage.
    database_url = own_postgres.create_database("json_logs")
    migrate(database_url)
    client = client_for(redis_url)
    workers = WorkerFleet(redis_url, database_url, tmp_path, concurrency=1)
    try:
        worker = workers.start()
        publish(redis_url, "json", range(50))
        wait_for(lambda: rows(database_url, "json") == 50 and drained(client), timeout_s=60, what="50 stored")
        own_postgres.kill()
        publish(redis_url, "json", range(50, 100))
        wait_for(lambda: worker.events("dependency_unavailable"), timeout_s=60, what="the outage noticed")
        own_postgres.start()
        wait_for(lambda: rows(database_url, "json") == 100 and drained(client), timeout_s=60, what="100 stored")
    finally:
        workers.stop_all()
    not_json = [line for line in worker.log_lines() if not is_json_object(line)]
    assert not not_json, f"{len(not_json)} lines are not JSON, e.g. {not_json[:3]}"


def is_json_object(line: str) -> bool:
    """Whether `line` is one JSON object."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# --- Redis restarted without persistence ------------------------------------------------------------------


def test_a_redis_restart_without_persistence_recreates_the_group_and_reports_the_loss(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """Redis restarted empty: the group comes back, and the loss shows in an error log and a metric."""
    # No AOF, no snapshot: what Redis held and no worker had stored is gone. That is Redis's durability setting, not
    # the pipeline's doing, but the pipeline must say so: in a warning or error line and in a counter.
    migrate(database_url)
    client = client_for(own_redis.url)
    workers = WorkerFleet(own_redis.url, database_url, tmp_path, concurrency=1)
    try:
        worker = workers.start(metrics=True)
        publish(own_redis.url, "before", range(100))
        wait_for(lambda: rows(database_url, "before") == 100 and drained(client), timeout_s=60, what="100 stored")
        metrics_before = worker.metrics()

        worker.freeze()  # so that entries are still in Redis, unprocessed, when it goes
        publish(own_redis.url, "unprocessed", range(50))
        own_redis.restart()
        worker.thaw()
        publish(own_redis.url, "after", range(100))
        wait_for(lambda: rows(database_url, "after") == 100 and drained(client), timeout_s=60, what="100 stored")

        assert group_state(client, STREAM, GROUP).exists
        # The blocked read may hand the first of them to the frozen worker before Redis goes; the rest are lost.
        assert rows(database_url, "unprocessed") < 50, "the restart did lose some: this test is about seeing it"
        loud = [
            event
            for event in worker.events()
            if event.get("level") in ("warning", "error") and re.search(r"group|lost|loss", str(event.get("event")))
        ]
        assert loud, "a warning or error names the vanished group or the loss"
        names = {key.partition("{")[0] for key in worker.metrics()}
        counters = sorted(name for name in names if name.endswith("_total"))
        assert changed_loss_metrics(metrics_before, worker.metrics()), (
            f"a counter reports the vanished group or the lost entries; the worker's counters: {counters}"
        )
        assert_no_worker_crashed(workers)
    finally:
        workers.stop_all()


def changed_loss_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters about lost data or a vanished group (by name) that went up between two scrapes."""
    pattern = re.compile(r"^interactionlog_\w*(lost|loss|recreat|reset|vanish|missing)\w*_total\b")
    return {name: value for name, value in after.items() if pattern.match(name) and value > before.get(name, 0.0)}


# --- trimming ------------------------------------------------------------------------------------------------


def test_workers_trim_acknowledged_entries_but_keep_those_pending_for_a_departed_consumer(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """Workers trim acknowledged entries, never those pending for a departed consumer."""
    client = client_for(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    publish(redis_url, "done", range(500))
    client.xack(STREAM, GROUP, *read_group(client, GROUP, "early", 500))  # processed long ago
    publish(redis_url, "trim", range(50))
    ghost_ids = read_group(client, GROUP, "ghost", 50)  # its process then died
    publish(redis_url, "trim", range(50, 550))

    fleet.start(claim_idle_ms="8000", housekeeping_interval_ms="200")
    wait_for(lambda: rows(database_url, "trim") == 500, timeout_s=60, what="the 500 new records stored")
    wait_for(lambda: int(client.xlen(STREAM)) <= 650, timeout_s=30, what="acknowledged entries trimmed")
    for _ in range(10):  # several housekeeping rounds while the ghost's entries wait to be claimed
        entries = cast(list[Any], client.xrange(STREAM, min=ghost_ids[0], max=ghost_ids[-1]))
        present = {entry_id.decode() for entry_id, _ in entries}
        pending = group_state(client, STREAM, GROUP).consumers.get("ghost", 0)
        if pending:
            assert set(ghost_ids) <= present, "an entry pending for a departed consumer was trimmed"
        time.sleep(0.3)
    wait_for(lambda: rows(database_url, "trim") == 550 and drained(client), timeout_s=60, what="all 550 stored")
    assert_stored_exactly_once(database_url, "trim", range(550))
    assert not list(fleet.events("pending_entries_deleted"))
    assert_no_worker_crashed(fleet)


def test_workers_never_trim_entries_another_group_has_not_read(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """Workers never trim entries another group has not read; without that group they do trim."""
    client = client_for(redis_url)
    publish(redis_url, "audit", range(500))
    client.xgroup_create(STREAM, "audit", id="0")
    fleet.start(housekeeping_interval_ms="200", consumer_idle_timeout_ms="1000")
    wait_for(lambda: rows(database_url, "audit") == 500 and drained(client), timeout_s=60, what="500 stored")
    await_housekeeping_rounds(client)  # the trim we guard against would have happened by now
    assert int(client.xlen(STREAM)) == 500
    assert len(read_group(client, "audit", "auditor", 1000)) == 500, "the other group still receives every entry"

    client.xgroup_destroy(STREAM, "audit")
    wait_for(lambda: int(client.xlen(STREAM)) < 200, timeout_s=30, what="acknowledged entries trimmed")
    assert_no_worker_crashed(fleet)


def warm_up_group(fleet: WorkerFleet, client: redis.Redis, redis_url: str, database_url: str) -> None:
    """Have a worker create the group and store a few records, then stop it cleanly: the group has read
    something, so later guard-rail trims cut into entries it has not read."""
    first = fleet.start()
    publish(redis_url, "warmup", range(10))
    wait_for(lambda: settled(client) and rows(database_url, "warmup") == 10, timeout_s=60, what="warm-up stored")
    assert first.terminate() == 0


def test_entries_the_guard_rail_trims_unread_are_counted_logged_and_exported(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """Entries the MAXLEN guard rail trims unread are counted exactly, once, in the metric and an error log."""
    client = client_for(redis_url)
    warm_up_group(fleet, client, redis_url, database_url)

    publish(redis_url, "burst", range(1000), maxlen=100)  # no worker running: the cap drops most of them
    worker = fleet.start(metrics=True, housekeeping_interval_ms="200", consumer_idle_timeout_ms="1000")
    wait_for(lambda: settled(client) and rows(database_url, "burst") > 0, timeout_s=60, what="the survivors stored")
    lost = 1000 - rows(database_url, "burst")
    assert lost >= 800, "the cap did drop most of the burst"
    wait_for(lambda: worker.metric_total(LOSS_METRIC) == lost, timeout_s=30, what=f"{LOSS_METRIC} == {lost}")
    logged = [event for event in worker.events("entries_lost_to_trimming") if event.get("level") == "error"]
    assert sum(event["lost"] for event in logged) == lost
    await_housekeeping_rounds(client)  # later rounds must not count the same loss again
    assert worker.metric_total(LOSS_METRIC) == lost
    assert_no_worker_crashed(fleet)


def test_a_guard_rail_loss_after_the_group_was_recreated_is_still_counted(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """A guard-rail loss is counted even after a larger one was counted for an earlier incarnation of the group."""
    # An operator deletes the group and a worker recreates it; the new group's losses start from zero.
    client = client_for(redis_url)
    warm_up_group(fleet, client, redis_url, database_url)
    publish(redis_url, "big-loss", range(1000), maxlen=100)
    counting = fleet.start(housekeeping_interval_ms="200")
    wait_for(lambda: counting.events("entries_lost_to_trimming"), timeout_s=60, what="the first loss counted")
    wait_for(lambda: settled(client), timeout_s=60, what="the survivors stored")
    assert counting.terminate() == 0

    client.xgroup_destroy(STREAM, GROUP)  # an operator resets the group; the next worker recreates it
    recreating = fleet.start()
    wait_for(lambda: settled(client), timeout_s=60, what="the recreated group caught up")
    assert recreating.terminate() == 0
    stored_before = rows(database_url, "small-loss")
    publish(redis_url, "small-loss", range(300), maxlen=100)
    worker = fleet.start(metrics=True, housekeeping_interval_ms="200")
    wait_for(lambda: settled(client) and rows(database_url, "small-loss") > stored_before, timeout_s=60, what="stored")
    lost = 300 - rows(database_url, "small-loss")
    assert lost >= 100, "the cap did drop part of the second burst"
    wait_for(lambda: worker.metric_total(LOSS_METRIC) == lost, timeout_s=20, what=f"{LOSS_METRIC} == {lost}")


def test_after_a_guard_rail_loss_the_reported_lag_is_what_is_left_to_read(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """After a counted guard-rail loss and a full catch-up, the group's lag is 0, not the lost entries forever."""
    # `status --max-lag`, the stream_group_lag gauge and KEDA's lag trigger all read XINFO's lag; the lost entries
    # belong in lost-to-trimming, not in a lag that never goes back to 0.
    client = client_for(redis_url)
    warm_up_group(fleet, client, redis_url, database_url)
    publish(redis_url, "burst", range(1000), maxlen=100)
    worker = fleet.start(housekeeping_interval_ms="200", consumer_idle_timeout_ms="1000")
    wait_for(lambda: worker.events("entries_lost_to_trimming"), timeout_s=60, what="the loss counted")
    wait_for(lambda: settled(client), timeout_s=60, what="the survivors stored")
    await_housekeeping_rounds(client)
    state = group_state(client, STREAM, GROUP)
    assert state.undelivered == 0
    status = subprocess.run(
        [sys.executable, "-m", "interactionlog", "status", "--redis-url", redis_url, "--max-lag", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert state.lag == 0, f"Redis reports lag {state.lag} with nothing left to deliver"
    assert status.returncode == 0, f"status --max-lag 0 fails after the loss: {status.stderr.strip()}"


@pytest.mark.parametrize("own_redis", [{"appendonly": True}], indirect=True)
def test_a_redis_restart_after_an_aof_rewrite_reports_no_phantom_loss_or_lag(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """A Redis restart after an AOF rewrite loses nothing, so no loss may be counted and the lag must come back to 0."""
    # Redis rewrites the append-only file by itself as it grows; Redis 7.0 then reloads the group's entries-read
    # counter as of the rewrite, so XINFO's lag counts every entry read since as unread.
    migrate(database_url)
    client = client_for(own_redis.url)
    workers = WorkerFleet(own_redis.url, database_url, tmp_path, concurrency=1)
    try:
        worker = workers.start(metrics=True, housekeeping_interval_ms="200", consumer_idle_timeout_ms="1000")
        publish(own_redis.url, "aof", range(500))
        wait_for(lambda: rows(database_url, "aof") == 500 and drained(client), timeout_s=60, what="500 stored")
        client.bgrewriteaof()
        wait_for(lambda: not aof_rewriting(client), timeout_s=30, what="the AOF rewrite")
        publish(own_redis.url, "aof", range(500, 1000))
        wait_for(lambda: rows(database_url, "aof") == 1000 and drained(client), timeout_s=60, what="1000 stored")
        own_redis.restart()  # SIGTERM: a clean shutdown, the append-only file complete
        publish(own_redis.url, "aof", range(1000, 1100))
        wait_for(lambda: rows(database_url, "aof") == 1100 and settled(client), timeout_s=60, what="1100 stored")
        await_housekeeping_rounds(client)
        assert_stored_exactly_once(database_url, "aof", range(1100))
        assert not worker.events("entries_lost_to_trimming"), worker.events("entries_lost_to_trimming")[0]
        assert worker.metric_total(LOSS_METRIC) == 0
        assert group_state(client, STREAM, GROUP).lag == 0, "lag counts entries that were read and stored"
    finally:
        workers.stop_all()


def aof_rewriting(client: redis.Redis) -> bool:
    """Whether an append-only file rewrite is in progress or scheduled."""
    info: dict[str, Any] = client.info("persistence")
    return bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])


# --- consumer hygiene ----------------------------------------------------------------------------------------


def test_consumers_of_departed_processes_are_deleted_after_a_hundred_restarts(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """After a hundred departed consumers, the group holds only the live worker's, and every record is stored once."""
    client = client_for(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for index in range(95):  # what a departed process leaves: a consumer with nothing pending
        client.xgroup_createconsumer(STREAM, GROUP, f"departed-{index}")
    for round_ in range(5):
        worker = fleet.start(consumer_idle_timeout_ms="600000")  # these must not tidy up before the survivor
        publish(redis_url, "hygiene", range(round_ * 100, round_ * 100 + 100))
        wait_for(lambda: drained(client), timeout_s=60, what="the batch acknowledged")
        worker.kill()
    assert len(group_state(client, STREAM, GROUP).consumers) == 100

    survivor = fleet.start(consumer_idle_timeout_ms="1000", housekeeping_interval_ms="200")
    publish(redis_url, "hygiene", range(500, 600))
    wait_for(
        lambda: set(group_state(client, STREAM, GROUP).consumers) <= survivor.consumers,
        timeout_s=30,
        what="only the live worker's consumers left",
    )
    wait_for(lambda: rows(database_url, "hygiene") == 600 and drained(client), timeout_s=60, what="all stored")
    assert_stored_exactly_once(database_url, "hygiene", range(600))
    assert_no_worker_crashed(fleet)


def test_a_consumer_holding_pending_entries_is_kept_until_they_are_claimed(
    fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """A departed consumer holding pending entries is kept until they are claimed, then deleted."""
    # Deleting a consumer deletes its pending entries from the group: they would never be delivered again.
    client = client_for(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    publish(redis_url, "held", range(100))
    read_group(client, GROUP, "ghost", 100)  # then its process died
    read_at = time.monotonic()
    fleet.start(consumer_idle_timeout_ms="1000", housekeeping_interval_ms="200", claim_idle_ms="6000")
    observations: list[tuple[float, int | None]] = []
    while rows(database_url, "held") < 100 and time.monotonic() - read_at < 60:
        observations.append((time.monotonic() - read_at, group_state(client, STREAM, GROUP).consumers.get("ghost")))
        time.sleep(0.1)
    assert rows(database_url, "held") == 100, "the ghost's entries were claimed and stored, not dropped"
    # Until the claim idle time has passed (less a margin) nobody may have claimed them, so the ghost must be
    # there holding all 100, although it has been idle past the 1 s hygiene threshold since second one.
    before_claim = [(at, pending) for at, pending in observations if 1.5 < at < 5.0]
    assert before_claim, "observed between the hygiene threshold and the claim"
    assert all(pending == 100 for _, pending in before_claim), f"ghost deleted or emptied early: {before_claim}"
    wait_for(
        lambda: "ghost" not in group_state(client, STREAM, GROUP).consumers,
        timeout_s=30,
        what="the ghost deleted once empty",
    )
    assert_stored_exactly_once(database_url, "held", range(100))
    assert drained(client)
    assert_no_worker_crashed(fleet)
