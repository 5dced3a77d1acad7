"""Operator and author tools do what they say: a failed publish carries the interaction ids to retry with,
`publish_many` names every bad record, `publish FILE` can be run again without storing a line twice, a key of the
wrong type stops the worker with one line, `status` tells live consumers from departed ones, `migrate` names its
database, counters exist at 0 with the documented labels, and the worker runs behind PgBouncer in transaction
pooling mode."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from interactionlog import InvalidRecordError, Publisher, PublishUnavailableError

from .pipeline import (
    INTERACTIONLOG,
    WorkerProcess,
    count_rows,
    group_pending,
    migrate,
    record,
    running_worker,
    scrape,
    stored_rows,
    wait_until,
)
from .servers import PgBouncerServer, PostgresServer, free_port

STREAM, GROUP = "interactions", "interactionlog"
README = (Path(__file__).parent.parent / "README.md").read_text()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an interactionlog command."""
    return subprocess.run([*INTERACTIONLOG, *args], capture_output=True, text=True, check=False)


# --- publishing --------------------------------------------------------------------------------------------------


def test_a_failed_publish_carries_the_generated_id_and_a_retry_with_it_is_stored_once(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """PublishUnavailableError carries the interaction_id the helper generated (and the entry as sent), so the
    caller publishes the record again under the same id; however often that happens, one row is stored."""
    down = Publisher.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    sent = {"mcp_id": "weather", "tool": "get_forecast"}
    with pytest.raises(PublishUnavailableError) as raised:
        down.publish(sent)
    generated = raised.value.interaction_id
    assert generated
    assert generated in str(raised.value)
    assert [json.loads(entry[b"data"])["interaction_id"] for entry in raised.value.entries] == [generated]
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish({**sent, "interaction_id": generated})
        publisher.publish_encoded(raised.value.entries)
    migrate(database_url)
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: group_pending(redis.Redis.from_url(redis_url)) == 0 and count_rows(database_url) == 1)
    assert stored_rows(database_url) == [("weather", generated)]


def test_publish_many_names_the_index_of_every_bad_record_and_sends_nothing(redis_url: str) -> None:
    """An InvalidRecordError from publish_many lists each bad record by its index, with its field."""
    records = [record(0), {"tool": "no mcp_id"}, record(2), record(3, duration_ms="slow"), record(4)]
    with Publisher.from_url(redis_url) as publisher, pytest.raises(InvalidRecordError) as raised:
        publisher.publish_many(records)
    message = str(raised.value)
    assert "record 1: field 'mcp_id'" in message
    assert "record 3: field 'duration_ms'" in message
    assert sorted(raised.value.problems) == [1, 3]
    assert redis.Redis.from_url(redis_url).xlen(STREAM) == 0


def test_the_readme_and_the_helper_say_the_same_about_publish_many() -> None:
    """No promise of an atomic publish_many remains: validation is all or nothing, sending is not a transaction."""
    assert "(all or nothing)" not in README
    assert "not a transaction" in README
    doc = Publisher.publish_many.__doc__ or ""
    assert "not a transaction" in doc


def test_running_publish_file_again_stores_no_line_twice(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """`publish FILE` after a partial run (the first lines only), then again with a bad line fixed: each line is
    stored once, identical lines stay distinct records, and lines with their own ids keep them."""
    lines = [
        '{"mcp_id":"m","tool":"a"}',
        '{"mcp_id":"m","tool":"b","request":{"x":1.50}}',
        '{"mcp_id":"m","tool":"a"}',  # the same text again: a second record
        '{"mcp_id":"m","interaction_id":"own","tool":"c"}',
        '{"mcp_id":"m","tool":"d","duration_ms":"slow"}',  # bad: fixed before the last run
        '{"mcp_id":"m","tool":"e"}',
    ]
    partial, full, fixed = tmp_path / "partial.jsonl", tmp_path / "full.jsonl", tmp_path / "fixed.jsonl"
    partial.write_text("\n".join(lines[:3]) + "\n")
    full.write_text("\n".join(lines) + "\n")
    fixed.write_text("\n".join([*lines[:4], '{"mcp_id":"m","tool":"d","duration_ms":5}', lines[5]]) + "\n")
    assert cli("publish", str(partial), "--redis-url", redis_url).returncode == 0
    assert cli("publish", str(full), "--redis-url", redis_url).returncode == 1  # the bad line is rejected
    assert cli("publish", str(fixed), "--redis-url", redis_url).returncode == 0
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    with running_worker(redis_url, database_url, tmp_path):
        wait_until(lambda: group_pending(client) == 0 and client.xinfo_groups(STREAM)[0]["lag"] == 0, what="drain")
    with psycopg.connect(database_url) as conn:
        tools = sorted(tool for (tool,) in conn.execute("SELECT tool FROM interaction_logs"))
        own = conn.execute("SELECT count(*) FROM interaction_logs WHERE interaction_id = 'own'").fetchone()
    assert tools == ["a", "a", "b", "c", "d", "e"]
    assert own == (1,)


# --- the worker and the operator commands -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "role"), [(STREAM, "stream"), (f"{STREAM}:dlq", "dead-letter stream")])
def test_a_key_of_the_wrong_type_stops_the_worker_with_one_line_naming_it(
    redis_url: str, database_url: str, tmp_path: Path, key: str, role: str
) -> None:
    """The stream or the dead-letter key holding a string: the worker exits 2 with one JSON log line naming the
    key, and no traceback."""
    redis.Redis.from_url(redis_url).set(key, "not a stream")
    worker = WorkerProcess(redis_url, database_url, tmp_path)
    assert worker.wait(timeout_s=30) == 2
    output = worker.log_text()
    assert "Traceback" not in output
    [line] = [json.loads(text) for text in output.splitlines() if "key_has_wrong_type" in text]
    assert (line["level"], line["key"], line["role"]) == ("error", key, role)
    assert all(text.startswith("{") for text in output.splitlines()), "every line in the chosen (JSON) format"


def test_status_tells_live_consumers_from_departed_ones(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """Nine consumers left by departed workers and two of a running one: status says 2 live, 9 departed; once the
    worker stops, all are departed."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for index in range(9):
        client.xgroup_createconsumer(STREAM, GROUP, f"gone-{index}")
    with running_worker(redis_url, database_url, tmp_path, consumer_prefix="alive") as worker:
        wait_until(lambda: "consumer_started" in worker.log_text(), what="the worker started")
        wait_until(lambda: "2 live, 9 departed" in cli("status", "--redis-url", redis_url).stdout, what="2 live")
        listing = cli("status", "--redis-url", redis_url).stdout
        assert re.search(r"consumer alive-0: live", listing)
        assert re.search(r"consumer gone-3: departed", listing)
        snapshot = json.loads(cli("status", "--json", "--redis-url", redis_url).stdout)
        live = {c["name"]: c["live"] for c in snapshot["groups"][0]["consumers"]}
        assert live["alive-1"] is True
        assert live["gone-0"] is False
        assert worker.stop() == 0
    assert "0 live, 11 departed" in cli("status", "--redis-url", redis_url).stdout


def test_migrate_says_which_database_it_migrated_without_the_password(database_url: str) -> None:
    """`migrate` names the database, host and user it migrated (as the server says), never a password."""
    with_password = database_url.replace("postgres@", "postgres:s3cret@")
    dbname = database_url.rsplit("/", 1)[1]
    first = cli("migrate", "--database-url", with_password)
    assert first.returncode == 0, first.stderr
    assert f"database {dbname} on 127.0.0.1:" in first.stdout
    assert "applied migration 1" in first.stdout
    again = cli("migrate", "--database-url", with_password)
    assert f"schema of database {dbname} on 127.0.0.1:" in again.stdout
    assert "s3cret" not in first.stdout + first.stderr + again.stdout + again.stderr


def documented_metrics() -> dict[str, set[str]]:
    """Each counter and histogram the README's metrics table lists, with the labels it names for it."""
    section = README.split("Counters and histograms are counted by each worker process", 1)[1].split("Gauges", 1)[0]
    found = {}
    for name, labels in re.findall(r"^\| `(\w+)(?:\{([\w, ]*)\})?` \|", section, re.MULTILINE):
        found[f"interactionlog_{name}"] = {"stream", "group", *filter(None, re.split(r"[, ]+", labels or ""))}
    return found


def test_counters_exist_at_zero_from_the_start_with_the_documented_labels(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Before any record, a worker's /metrics has every documented counter and histogram, counters at 0, each with
    exactly the labels the README names (so `increase(...) > 0` alerts see the first event)."""
    migrate(database_url)
    port = free_port()
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1"):
        text = wait_until(lambda: scrape(port), what="/metrics served")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    documented = documented_metrics()
    assert len(documented) >= 14
    for name, labels in documented.items():
        base = name.removesuffix("_total")
        assert base in families, f"{name} is not exported before the first event"
        samples = [sample for sample in families[base].samples if not sample.name.endswith("_created")]
        assert samples, f"{name} has no sample at start"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, f"{sample.name} labels {sorted(sample.labels)}"
            if families[base].type == "counter":
                assert sample.value == 0, f"{sample.name} starts at {sample.value}"


# --- PgBouncer ---------------------------------------------------------------------------------------------------


@pytest.fixture
def pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    """PgBouncer in transaction pooling mode in front of the session's PostgreSQL."""
    with PgBouncerServer(postgres_server, pool_mode="transaction", pool_size=2) as server:
        yield server


def test_the_worker_runs_behind_pgbouncer_in_transaction_pooling_mode(
    redis_url: str, database_url: str, pgbouncer: PgBouncerServer, tmp_path: Path
) -> None:
    """Through PgBouncer (transaction mode, 2 server connections for 2 workers of 2 consumers): migrate, the COPY
    path, the idempotent staging path (records published twice) and the row-by-row path (a CHECK refusing some
    rows) all work: every record stored once, the refused ones dead-lettered, no failure logged."""
    through = pgbouncer.url(database_url.rsplit("/", 1)[1])
    assert cli("migrate", "--database-url", through).returncode == 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool <> 'forbidden')")
    client = redis.Redis.from_url(redis_url)
    with Publisher.from_url(redis_url) as publisher:
        for _ in range(2):  # every record twice: the second copies take the staging path
            publisher.publish_many(record(index) for index in range(200))
        publisher.publish_many(record(index, tool="forbidden") for index in range(200, 220))
    flags = {"batch_size": "25", "concurrency": "2"}
    with (
        running_worker(redis_url, through, tmp_path, **flags) as first,
        running_worker(redis_url, through, tmp_path, **flags) as second,
    ):
        wait_until(
            lambda: group_pending(client) == 0 and client.xinfo_groups(STREAM)[0]["lag"] == 0,
            timeout_s=60,
            what="drained through PgBouncer",
        )
        logs = first.log_text() + second.log_text()
    assert sorted(stored_rows(database_url)) == [("weather", f"rec-{index:06d}") for index in range(200)]
    assert client.xlen(f"{STREAM}:dlq") == 20
    for failure in ("dependency_unavailable", "dependency_refusing", "consumer_step_crashed", "does not exist"):
        assert failure not in logs, failure
