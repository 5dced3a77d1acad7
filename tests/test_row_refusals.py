"""PostgreSQL's refusals, told apart: a row refused on its own merits (any SQLSTATE, a trigger's included) is
dead-lettered with PostgreSQL's message while its batch-mates are stored; a failure that would hit every row (a
missing table or column, a permission, a read-only database) is never dead-lettered, makes the worker unready,
is said once at error level with what to do, and is retried until fixed."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import psycopg
import pytest
import redis
from psycopg import sql

from interactionlog import Publisher

from .pipeline import WorkerProcess, count_rows, group_pending, migrate, record, running_worker, wait_until
from .servers import PostgresServer, free_port

DEAD_LETTERS = "interactions:dlq"


def execute(database_url: str, *statements: str | sql.Composed) -> None:
    """Run statements, each committed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode() if isinstance(statement, str) else statement)


def readyz(port: int) -> tuple[int, dict[str, str]]:
    """The worker's /readyz status and its checks."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            return reply.status, json.loads(reply.read())["checks"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["checks"]
    except urllib.error.URLError:  # not serving yet
        return 0, {}


def publish(redis_url: str, indexes: range, **extra: str) -> None:
    """Publish records `indexes` with the helper."""
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish_many(record(index, **extra) for index in indexes)


TRIGGERS = {
    "raise exception (P0001)": "RAISE EXCEPTION 'tool % is not allowed here', NEW.tool",
    "assert (P0004)": "ASSERT NEW.tool <> 'bad', 'tool bad is not allowed here'",
    "an operator's own SQLSTATE": "RAISE EXCEPTION 'tool bad is not allowed here' USING ERRCODE = 'XY123'",
}


@pytest.mark.parametrize("body", TRIGGERS.values(), ids=TRIGGERS.keys())
def test_a_trigger_refusing_one_row_dead_letters_it_and_stores_its_batch_mates_within_seconds(
    redis_url: str, database_url: str, tmp_path: Path, body: str
) -> None:
    """A BEFORE INSERT trigger raising for one row of a batch of 3: that row is dead-lettered with PostgreSQL's
    message, the two others are stored, within seconds, and the worker never reports an outage."""
    migrate(database_url)
    execute(
        database_url,
        "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.tool = 'bad' THEN {body}; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON interaction_logs FOR EACH ROW EXECUTE FUNCTION refuse_bad()",
    )
    publish(redis_url, range(1))
    publish(redis_url, range(1, 2), tool="bad")
    publish(redis_url, range(2, 3))
    client = redis.Redis.from_url(redis_url)
    with running_worker(redis_url, database_url, tmp_path) as worker:
        started = time.monotonic()
        wait_until(
            lambda: count_rows(database_url) == 2 and client.xlen(DEAD_LETTERS) == 1 and group_pending(client) == 0,
            timeout_s=15,
            what="two rows stored and one dead letter",
        )
        assert time.monotonic() - started < 10
    [(_, letter)] = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTERS))
    assert letter[b"error_type"] == b"refused_by_database"
    assert b"tool bad is not allowed here" in letter[b"error"]
    assert "dependency_unavailable" not in worker.log_text()
    assert "dependency_refusing" not in worker.log_text()


def role_without_insert(server: PostgresServer, database_url: str) -> tuple[str, Callable[[], None]]:
    """A URL logging in as a new role that may read but not insert, and how to grant it INSERT."""
    role = f"limited_{uuid.uuid4().hex[:8]}"
    execute(
        database_url,
        sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)),
        sql.SQL("GRANT SELECT ON interaction_logs TO {}").format(sql.Identifier(role)),
    )
    url = database_url.replace("postgres@", f"{role}@")
    return url, lambda: execute(
        database_url, sql.SQL("GRANT INSERT ON interaction_logs TO {}").format(sql.Identifier(role))
    )


SYSTEMIC = ["missing table", "missing column", "no INSERT privilege", "read-only database"]


@pytest.mark.parametrize("cause", SYSTEMIC)
def test_a_failure_hitting_every_row_is_never_dead_lettered_makes_the_worker_unready_and_is_said_once(
    redis_url: str, database_url: str, postgres_server: PostgresServer, tmp_path: Path, cause: str
) -> None:
    """Systemic refusals: nothing is dead-lettered, /readyz answers 503 naming the cause, one error line says what
    to do, and once the cause is fixed every record is stored and the worker is ready again."""
    worker_url = database_url
    fix: Callable[[], None]
    dbname = database_url.rsplit("/", 1)[1]
    if cause == "missing table":
        fix = lambda: migrate(database_url)  # noqa: E731
    else:
        migrate(database_url)
    if cause == "missing column":
        execute(database_url, "ALTER TABLE interaction_logs DROP COLUMN trace_id")
        fix = lambda: execute(database_url, "ALTER TABLE interaction_logs ADD COLUMN trace_id TEXT")  # noqa: E731
    elif cause == "no INSERT privilege":
        worker_url, fix = role_without_insert(postgres_server, database_url)
    elif cause == "read-only database":
        execute(database_url, f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")

        def fix() -> None:  # a failover: the setting goes, and the workers reconnect
            execute(postgres_server.url(), f"ALTER DATABASE {dbname} RESET default_transaction_read_only")
            postgres_server.terminate_backends(dbname)

    publish(redis_url, range(20))
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    with running_worker(redis_url, worker_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1") as worker:
        wait_until(lambda: "dependency_refusing" in worker.log_text(), what="the refusal logged")
        wait_until(lambda: readyz(port)[0] == 503, what="/readyz 503")
        assert readyz(port)[1]["postgres"] != "ok"
        time.sleep(2)  # several retries
        assert client.xlen(DEAD_LETTERS) == 0, "a systemic failure is never dead-lettered"
        assert count_rows(database_url) == 0 if cause != "missing table" else True
        refusals = [line for line in worker.log_text().splitlines() if '"dependency_refusing"' in line]
        assert len(refusals) == 1, "said once, not per retry or per consumer"
        said = json.loads(refusals[0])
        assert said["level"] == "error"
        fix()
        wait_until(lambda: count_rows(database_url) == 20 and group_pending(client) == 0, what="stored once fixed")
        wait_until(lambda: readyz(port)[0] == 200, what="ready again")
        assert worker.stop() == 0
    assert client.xlen(DEAD_LETTERS) == 0
    assert said["error"]


@pytest.mark.parametrize(
    ("cause", "hint"),
    [("missing table", "interactionlog migrate"), ("no INSERT privilege", "GRANT"), ("missing column", "column")],
)
def test_a_systemic_refusal_says_what_to_do(  # noqa: PLR0917 - pytest fixtures and parameters
    redis_url: str, database_url: str, postgres_server: PostgresServer, tmp_path: Path, cause: str, hint: str
) -> None:
    """The one error line of a systemic refusal names the remedy, and /readyz says the same."""
    worker_url = database_url
    if cause != "missing table":
        migrate(database_url)
    if cause == "missing column":
        execute(database_url, "ALTER TABLE interaction_logs DROP COLUMN session_id")
    if cause == "no INSERT privilege":
        worker_url, _ = role_without_insert(postgres_server, database_url)
    publish(redis_url, range(3))
    port = free_port()
    with running_worker(redis_url, worker_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1") as worker:
        wait_until(lambda: "dependency_refusing" in worker.log_text(), what="the refusal logged")
        [line] = [json.loads(text) for text in worker.log_text().splitlines() if '"dependency_refusing"' in text]
        assert hint.lower() in line["error"].lower()
        _, checks = readyz(port)
        assert hint.lower() in checks["postgres"].lower() or cause == "missing column"


def test_a_worker_whose_table_is_missing_is_unready_from_the_start(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Before any record arrives, a worker pointed at a database that was never migrated answers /readyz 503."""
    port = free_port()
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1"):
        wait_until(lambda: readyz(port)[1].get("redis") == "ok", what="Redis checked")
        status, checks = readyz(port)
        assert status == 503
        assert "interactionlog migrate" in checks["postgres"]


def test_sigterm_stops_a_worker_stuck_on_a_missing_table_within_the_shutdown_timeout(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A worker retrying a batch the database refuses as a whole still exits within --shutdown-timeout-s."""
    publish(redis_url, range(5))
    worker = WorkerProcess(redis_url, database_url, tmp_path, shutdown_timeout_s="3")
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: group_pending(client) == 5, what="the batch delivered")
        time.sleep(1)  # a few refused attempts
        worker.signal(signal.SIGTERM)
        started = time.monotonic()
        code = worker.wait(timeout_s=15)
        assert time.monotonic() - started < 3 + 2
        assert code in (0, 1)
    finally:
        worker.kill()
    assert group_pending(client) == 5, "nothing acknowledged: the batch stays for later"
