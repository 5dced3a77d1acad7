"""The whole path with real processes: publish -> Redis stream -> worker -> PostgreSQL, and its recovery paths."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import redis

from interactionlog import Publisher
from interactionlog.worker.daemon import CRASH_HOOK_VARIABLE

from .pipeline import (
    INTERACTIONLOG,
    WorkerProcess,
    count_rows,
    group_info,
    group_pending,
    migrate,
    record,
    running_worker,
    stored_rows,
    stream_entries,
    wait_until,
)
from .servers import PostgresServer, free_port

STREAM, GROUP = "interactions", "interactionlog"


def publish(redis_url: str, indexes: range, **extra: str) -> list[str]:
    with Publisher.from_url(redis_url) as publisher:
        return publisher.publish_many(record(i, **extra) for i in indexes)


def expected(indexes: range) -> list[tuple[str, str]]:
    return [("weather", f"rec-{i:06d}") for i in indexes]


def assert_stored_exactly_once(database_url: str, indexes: range) -> None:
    rows = stored_rows(database_url)
    assert sorted(rows) == expected(indexes), "every record stored, none twice, nothing else"


def test_round_trip_from_publisher_to_table(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """Records published with the helper end up as rows with their columns filled and the record in data."""
    migrate(database_url)
    publish(redis_url, range(300))
    with running_worker(redis_url, database_url, tmp_path) as worker:
        wait_until(lambda: count_rows(database_url) == 300, what="300 rows")
        wait_until(lambda: group_pending(redis.Redis.from_url(redis_url)) == 0, what="everything acknowledged")
        assert worker.stop() == 0
    assert_stored_exactly_once(database_url, range(300))
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT method, tool, duration_ms, data->'request'->>'city', stream_entry_id, stored_at IS NOT NULL"
            " FROM interaction_logs WHERE interaction_id = 'rec-000007'"
        ).fetchone()
    assert row is not None
    assert row[:4] == ("tools/call", "get_forecast", 12.5, "Oslo")
    assert row[4].count("-") == 1
    assert row[5] is True
    batch_lines = [json.loads(line) for line in worker.log_text().splitlines() if '"batch_processed"' in line]
    assert sum(line["persisted"] for line in batch_lines) == 300


def test_publishing_the_same_record_twice_stores_one_row(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """(mcp_id, interaction_id, timestamp) identifies a record: the second copy is skipped as a duplicate."""
    migrate(database_url)
    sent_at = "2026-11-30T10:00:00.123456+00:00"  # a republished record carries its first timestamp
    publish(redis_url, range(50), timestamp=sent_at)
    publish(redis_url, range(50), timestamp=sent_at)
    with running_worker(redis_url, database_url, tmp_path) as worker:
        wait_until(
            lambda: group_pending(redis.Redis.from_url(redis_url)) == 0 and "batch_processed" in worker.log_text(),
            what="drain",
        )
        wait_until(
            lambda: (
                sum(
                    json.loads(line)["duplicates"]
                    for line in worker.log_text().splitlines()
                    if '"batch_processed"' in line
                )
                == 50
            ),
            what="50 duplicates counted",
        )
    assert_stored_exactly_once(database_url, range(50))


def test_cli_publish_reports_bad_lines_and_publishes_the_rest(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """`interactionlog publish FILE` skips bad lines, naming their numbers, exits 1, and the good ones are stored."""
    lines = [json.dumps(record(0)), "{not json", json.dumps({"tool": "no id"}), "", json.dumps(record(1))]
    source = tmp_path / "records.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [*INTERACTIONLOG, "publish", str(source), "--redis-url", redis_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "line 2:" in result.stderr
    assert "Invalid JSON" in result.stderr
    assert "line 3: field 'mcp_id'" in result.stderr
    assert "published 2 record(s)" in result.stderr
    assert "rejected 2" in result.stderr
    migrate(database_url)
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: count_rows(database_url) == 2, what="2 rows")
    assert_stored_exactly_once(database_url, range(2))


@pytest.mark.fault
@pytest.mark.parametrize("crash_at", ["after_read", "after_commit"])
def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    crash_at: str, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """SIGKILL before the commit or between commit and XACK: another worker claims the entries after
    claim_idle_ms and each record is stored exactly once."""
    migrate(database_url)
    publish(redis_url, range(200))
    doomed = WorkerProcess(
        redis_url, database_url, tmp_path, env={CRASH_HOOK_VARIABLE: crash_at}, concurrency="1", batch_size="200"
    )
    assert doomed.wait() == -signal.SIGKILL
    assert "test_crash_injected" in doomed.log_text()
    client = redis.Redis.from_url(redis_url)
    assert group_pending(client) == 200, "the killed worker acknowledged nothing"
    assert count_rows(database_url) == (200 if crash_at == "after_commit" else 0)
    with running_worker(redis_url, database_url, tmp_path, concurrency="1") as rescuer:
        wait_until(lambda: group_pending(client) == 0, what="claimed entries acknowledged")
        assert rescuer.stop() == 0
    assert_stored_exactly_once(database_url, range(200))
    assert "claimed" in rescuer.log_text()


BAD_ENTRIES: dict[str, dict[str, str]] = {
    "not_wire_format": {"hello": "world"},
    "unsupported_version": {"v": "9", "data": '{"mcp_id": "a"}'},
    "invalid_json": {"v": "1", "data": "{broken"},
    "not_json_object": {"v": "1", "data": "[1, 2, 3]"},
    "invalid_record": {"v": "1", "data": '{"mcp_id": "a", "duration_ms": "slow"}'},
    "unstorable_value": {"v": "1", "data": '{"mcp_id": "a", "request": "nul \\u0000 here"}'},
    "too_large": {"v": "1", "data": json.dumps({"mcp_id": "a", "request": "x" * 300_000})},
    "refused_by_database": {"v": "1", "data": '{"mcp_id": "a", "interaction_id": "f", "tool": "forbidden"}'},
}


def test_each_kind_of_bad_entry_is_dead_lettered_while_its_batch_mates_are_stored(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Bad entries interleaved with good ones go to <stream>:dlq with their reason and original fields; the good
    entries of the same batch are stored; nothing stays pending."""
    migrate(database_url)
    with psycopg.connect(database_url) as conn:  # an operator's constraint: a value valid JSON but refused by SQL
        conn.execute("ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool <> 'forbidden')")
    client = redis.Redis.from_url(redis_url)
    good = 0
    for fields in BAD_ENTRIES.values():
        publish(redis_url, range(good, good + 3))
        good += 3
        client.xadd(STREAM, fields)  # type: ignore[arg-type]
    with running_worker(redis_url, database_url, tmp_path, batch_size="1000") as worker:
        wait_until(lambda: client.xlen(f"{STREAM}:dlq") == len(BAD_ENTRIES), what="dead letters")
        wait_until(lambda: group_pending(client) == 0, what="nothing pending")
        assert worker.stop() == 0
    assert_stored_exactly_once(database_url, range(good))
    letters = {fields[b"error_type"].decode(): fields for _, fields in stream_entries(client, f"{STREAM}:dlq")}
    assert set(letters) == set(BAD_ENTRIES)
    for reason, original in BAD_ENTRIES.items():
        letter = letters[reason]
        for name, value in original.items():
            assert letter[name.encode()] == value.encode(), f"{reason}: original field {name} kept"
        assert letter[b"error"], f"{reason}: a readable error"
        assert letter[b"group"] == GROUP.encode()
        assert letter[b"deliveries"] == b"1"
        assert {b"source_id", b"consumer", b"failed_at"} <= set(letter)
    assert b"forbidden" in letters["refused_by_database"][b"data"]
    assert b"no_forbidden" in letters["refused_by_database"][b"error"]


def test_an_entry_delivered_too_often_is_dead_lettered_as_poison(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """An entry whose delivery count exceeds max_deliveries is dead-lettered instead of retried forever."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    publish(redis_url, range(1))
    client.xreadgroup(GROUP, "crashy", {STREAM: ">"})
    for _ in range(4):  # a consumer that keeps crashing on it: each history read is one more delivery
        client.xreadgroup(GROUP, "crashy", {STREAM: "0"})
    with running_worker(redis_url, database_url, tmp_path, max_deliveries="3"):
        wait_until(lambda: client.xlen(f"{STREAM}:dlq") == 1, what="poison dead-lettered")
        wait_until(lambda: group_pending(client) == 0, what="nothing pending")
    [(_, letter)] = stream_entries(client, f"{STREAM}:dlq")
    assert letter[b"error_type"] == b"max_deliveries"
    assert int(letter[b"deliveries"]) > 3
    assert count_rows(database_url) == 0


@pytest.mark.fault
def test_postgres_outage_acknowledges_nothing_and_stores_everything_after(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """While PostgreSQL is down nothing is acknowledged; when it returns every record is stored once."""
    server = own_postgres
    database_url = server.create_database("outage")
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    server.stop()
    publish(redis_url, range(400))
    with running_worker(redis_url, database_url, tmp_path, claim_idle_ms="60000") as worker:
        wait_until(lambda: group_pending(client) > 0, what="entries delivered to the worker")
        wait_until(lambda: "dependency_unavailable" in worker.log_text(), what="outage logged")
        assert group_pending(client) + group_info(client)["lag"] == 400
        server.start()
        wait_until(
            lambda: group_pending(client) == 0 and group_info(client)["lag"] == 0,
            timeout_s=60,
            what="drained after recovery",
        )
        assert worker.stop() == 0
    assert_stored_exactly_once(database_url, range(400))
    log_text = worker.log_text()
    assert log_text.count('"dependency_unavailable"') == 1, "an outage is logged once, not per retry"
    assert '"dependency_recovered"' in log_text


@pytest.mark.fault
def test_a_long_outage_does_not_turn_held_batches_into_poison(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """Batches held through an outage several times longer than claim_idle_ms are heartbeated, not claimed
    round and round by idle consumers of other workers, so none reaches max_deliveries and is dead-lettered."""
    database_url = own_postgres.create_database("long_outage")
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    own_postgres.stop()
    publish(redis_url, range(40))
    flags = {"batch_size": "10", "concurrency": "4", "max_deliveries": "2"}
    with (
        running_worker(redis_url, database_url, tmp_path, **flags),
        running_worker(redis_url, database_url, tmp_path, **flags),
    ):
        wait_until(lambda: group_pending(client) == 40, what="every entry held by some consumer")
        time.sleep(6)  # keep PostgreSQL away for 4x claim_idle_ms while idle consumers sweep
        own_postgres.start()
        wait_until(lambda: group_pending(client) == 0, timeout_s=60, what="drained after the outage")
    assert client.xlen(f"{STREAM}:dlq") == 0, "no healthy entry was dead-lettered as poison"
    assert_stored_exactly_once(database_url, range(40))


@pytest.mark.fault
def test_sigterm_finishes_the_batch_in_flight_and_exits_zero(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """SIGTERM mid-drain: the worker stops reading, acknowledges what it stored, and exits 0 in time."""
    migrate(database_url)
    publish(redis_url, range(20_000))
    client = redis.Redis.from_url(redis_url)
    worker = WorkerProcess(redis_url, database_url, tmp_path, batch_size="200", shutdown_timeout_s="10")
    wait_until(lambda: count_rows(database_url) > 1000, what="drain under way")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout_s=12) == 0
    assert group_pending(client) == 0, "the batch in flight was finished and acknowledged"
    stored = count_rows(database_url)
    assert stored + group_info(client)["lag"] == 20_000
    assert '"worker_stopped"' in worker.log_text()


def test_a_deleted_group_is_recreated_and_nothing_is_lost(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """XGROUP DESTROY under a running worker: it recreates the group at 0, keeps storing records, and counts the
    recreation in its metrics, marked as a group (not the whole stream) having vanished."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    publish(redis_url, range(10))
    port = free_port()
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1") as worker:
        wait_until(lambda: count_rows(database_url) == 10, what="first records")
        client.xgroup_destroy(STREAM, GROUP)
        publish(redis_url, range(10, 20))
        wait_until(lambda: count_rows(database_url) == 20, what="records after the group was destroyed")
        assert worker.process.poll() is None, "the worker is still running"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert_stored_exactly_once(database_url, range(20))
    assert "group_missing_recreated" in worker.log_text()
    assert (
        'interactionlog_group_recreated_total{group="interactionlog",stream="interactions",stream_vanished="false"} 1.0'
        in metrics
    )


def test_status_and_dead_letter_commands(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """`status --json` reports lag, pending and dead letters; `dlq list` shows why; `dlq replay` puts a fixed
    entry back so it is stored, and removes it from the dead-letter stream."""
    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool <> 'forbidden')")
    publish(redis_url, range(5))
    publish(redis_url, range(5, 6), tool="forbidden")
    client = redis.Redis.from_url(redis_url)
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: client.xlen(f"{STREAM}:dlq") == 1 and group_pending(client) == 0, what="settled")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*INTERACTIONLOG, *args, "--redis-url", redis_url],
            capture_output=True,
            text=True,
            check=False,
        )

    status = json.loads(cli("status", "--json").stdout)
    assert status["length"] == 6
    assert status["dead_letters"] == 1
    [group] = status["groups"]
    assert (group["name"], group["lag"], group["pending"]) == (GROUP, 0, 0)
    listing = cli("dlq", "list").stdout
    assert "refused_by_database" in listing
    assert "no_forbidden" in listing
    with psycopg.connect(database_url) as conn:  # the operator fixes the cause, then replays
        conn.execute("ALTER TABLE interaction_logs DROP CONSTRAINT no_forbidden")
    replay = cli("dlq", "replay", "--all")
    assert replay.returncode == 0
    assert "replayed 1 dead letter" in replay.stderr
    assert client.xlen(f"{STREAM}:dlq") == 0
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: count_rows(database_url) == 6, what="replayed record stored")
    assert_stored_exactly_once(database_url, range(6))


def test_passwords_never_appear_in_worker_output(tmp_path: Path) -> None:
    """A worker given URLs with passwords, unable to connect, logs the outage without the passwords."""
    worker = WorkerProcess("redis://:redis-s3cret@127.0.0.1:1/0", "postgresql://u:pg-s3cret@127.0.0.1:1/db", tmp_path)
    wait_until(lambda: "dependency_unavailable" in worker.log_text(), what="outage logged")
    worker.signal(signal.SIGTERM)
    worker.wait()
    output = worker.log_text()
    assert "worker_starting" in output
    assert "***" in output
    assert "s3cret" not in output


def test_a_worker_whose_metrics_port_is_taken_keeps_consuming_and_says_so_once(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A second worker on a host whose metrics port is in use stores records like the first, and logs once, without
    a traceback, that it runs without its metrics port and what to do about it."""
    migrate(database_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        with running_worker(redis_url, database_url, tmp_path, metrics_port=port, metrics_host="127.0.0.1") as worker:
            with Publisher.from_url(redis_url) as publisher:
                publisher.publish_many([record(index) for index in range(20)])
            wait_until(lambda: count_rows(database_url) == 20, what="20 rows stored without a metrics port")
            assert worker.stop() == 0
    output = worker.log_text()
    assert output.count('"metrics_unavailable"') == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output
    assert "--processes" in output
    assert "Traceback" not in output
