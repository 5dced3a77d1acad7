"""Dead-letter replay: a record keeps the identity and time of the entry it was first published as, however often
and however concurrently it is replayed, and a replay that finds nothing to do says so and fails."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import redis

from interactionlog import entry_ids
from interactionlog.replies import text

from .pipeline import INTERACTIONLOG, count_rows, group_pending, migrate, running_worker, wait_until

STREAM, DEAD_LETTERS = "interactions", "interactions:dlq"
REFUSE_FORBIDDEN = "ALTER TABLE interaction_logs ADD CONSTRAINT no_forbidden CHECK (tool <> 'forbidden')"
RAW = b'{"mcp_id":"m","tool":"forbidden","request":{"f":12.50,"n":1.00000000000000001}}'


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an interactionlog command against `redis_url`."""
    return subprocess.run(
        [*INTERACTIONLOG, *args, "--redis-url", redis_url], capture_output=True, text=True, check=False
    )


def execute(database_url: str, statement: str) -> None:
    """Run one statement, committed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(statement.encode())


def settle(redis_url: str, database_url: str, tmp_path: Path, *, dead: int, rows: int) -> None:
    """Run a worker until `dead` dead letters and `rows` rows exist and nothing is pending."""
    client = redis.Redis.from_url(redis_url)
    with running_worker(redis_url, database_url, tmp_path) as worker:
        wait_until(
            lambda: (
                client.xlen(DEAD_LETTERS) == dead and count_rows(database_url) == rows and group_pending(client) == 0
            ),
            what=f"{dead} dead letters and {rows} rows",
        )
        assert worker.stop() == 0


def test_a_replayed_raw_record_keeps_the_id_and_time_of_its_first_entry(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A record without interaction_id/timestamp, dead-lettered twice and replayed twice, is stored under the id and
    time of the entry it was first published as, with its JSON as sent."""
    migrate(database_url)
    execute(database_url, REFUSE_FORBIDDEN)
    client = redis.Redis.from_url(redis_url)
    first_id = text(client.xadd(STREAM, {"v": "1", "data": RAW}))
    settle(redis_url, database_url, tmp_path, dead=1, rows=0)
    assert cli(redis_url, "dlq", "replay", "--all").returncode == 0  # the constraint still refuses it
    settle(redis_url, database_url, tmp_path, dead=1, rows=0)
    execute(database_url, "ALTER TABLE interaction_logs DROP CONSTRAINT no_forbidden")
    assert cli(redis_url, "dlq", "replay", "--all").returncode == 0
    settle(redis_url, database_url, tmp_path, dead=0, rows=1)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT interaction_id, \"timestamp\", data->'request'->>'f', data->'request'->>'n' FROM interaction_logs"
        ).fetchone()
    assert row is not None
    assert row[0] == first_id
    assert row[1] == entry_ids.added_at(first_id)
    assert row[2:] == ("12.50", "1.00000000000000001")


def test_concurrent_replays_of_every_dead_letter_store_each_record_once(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Two `dlq replay --all` running at once over 200 raw dead letters move each once, and 200 rows are stored."""
    migrate(database_url)
    execute(database_url, REFUSE_FORBIDDEN)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for index in range(200):
        pipe.xadd(STREAM, {"v": "1", "data": b'{"mcp_id":"m","tool":"forbidden","n":%d}' % index})
    pipe.execute()
    settle(redis_url, database_url, tmp_path, dead=200, rows=0)
    execute(database_url, "ALTER TABLE interaction_logs DROP CONSTRAINT no_forbidden")
    command = [*INTERACTIONLOG, "dlq", "replay", "--all", "--redis-url", redis_url]
    replays = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [replay.communicate(timeout=60) for replay in replays]
    assert [replay.returncode for replay in replays] == [0, 0], outputs
    replayed = sum(stdout.count("replayed ") for stdout, _ in outputs)
    assert replayed == 200, "each dead letter moved by exactly one of the two replays"
    settle(redis_url, database_url, tmp_path, dead=0, rows=200)
    with psycopg.connect(database_url) as conn:
        numbers: list[Any] = [n for (n,) in conn.execute("SELECT (data->>'n')::int FROM interaction_logs ORDER BY 1")]
    assert numbers == list(range(200))


def test_replaying_an_unknown_id_or_an_absent_reason_fails_and_says_so(redis_url: str) -> None:
    """`dlq replay <missing id>` and `dlq replay --all --reason <none such>` exit 1 naming what was not found."""
    client = redis.Redis.from_url(redis_url)
    client.xadd(DEAD_LETTERS, {"v": "1", "data": "{}", "error_type": "invalid_record", "source_id": "1-1"})
    missing = cli(redis_url, "dlq", "replay", "1-999")
    assert missing.returncode == 1
    assert "no dead letter 1-999 in interactions:dlq" in missing.stderr
    absent = cli(redis_url, "dlq", "replay", "--all", "--reason", "invalid_jsn")
    assert absent.returncode == 1
    assert "error_type 'invalid_jsn'" in absent.stderr
    assert client.xlen(DEAD_LETTERS) == 1, "nothing was replayed"
    malformed = cli(redis_url, "dlq", "replay", "yesterday")
    assert malformed.returncode == 2
    assert "not an entry id" in malformed.stderr
