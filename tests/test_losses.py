"""No loss is silent and no key grows without bound: entries a cold group never read, pending entries trimmed away,
and dead letters removed by their own cap are counted and logged; Redis refusals are retried in place without
raising delivery counts; refused housekeeping is said once and counted; other groups are never changed."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from interactionlog import Publisher
from interactionlog.replies import text

from .pipeline import WorkerProcess, count_rows, group_pending, migrate, record, running_worker, wait_until
from .servers import RedisServer, free_port

STREAM, GROUP, DEAD_LETTERS = "interactions", "interactionlog", "interactions:dlq"


def metrics(port: int) -> dict[str, float]:
    """Every sample of a worker's /metrics, keyed `name{label="value",...}` (labels sorted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        exposition = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def own_sample(name: str, **extra: str) -> str:
    """The key of a sample of the worker's own stream and group."""
    labels = {"stream": STREAM, "group": GROUP, **extra}
    joined = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return name + "{" + joined + "}"


def events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    """The worker's JSON log lines of `event`."""
    return [json.loads(line) for line in worker.log_text().splitlines() if f'"{event}"' in line]


def fill(client: redis.Redis, count: int, **xadd: Any) -> list[str]:
    """XADD `count` valid raw records; returns their ids."""
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        pipe.xadd(STREAM, {"v": "1", "data": f'{{"mcp_id":"m","interaction_id":"r{index}"}}'}, **xadd)
    return [entry_id.decode() for entry_id in pipe.execute()]


def command(client: redis.Redis, *args: str) -> Any:
    """Send a raw command (REPLICAOF, ACL SETUSER: redis-py's typed helpers add options of their own)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def metrics_worker(redis_url: str, database_url: str, tmp_path: Path, **flags: str) -> tuple[WorkerProcess, int]:
    """A worker serving metrics on a free port."""
    port = free_port()
    worker = WorkerProcess(
        redis_url, database_url, tmp_path, env=None, metrics_port=str(port), metrics_host="127.0.0.1", **flags
    )
    return worker, port


def test_a_cold_group_counts_what_maxlen_trimmed_before_its_first_read(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A group created on an empty stream that never read: MAXLEN trims 4,000 of 5,000 records before a worker
    starts; the worker counts exactly 4,000 in entries_lost_to_trimming_total and says so at error level."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    fill(client, 5000, maxlen=1000, approximate=False)
    worker, port = metrics_worker(redis_url, database_url, tmp_path)
    try:
        wait_until(lambda: count_rows(database_url) == 1000 and group_pending(client) == 0, what="1000 stored")
        wait_until(lambda: metrics(port).get(own_sample("interactionlog_entries_lost_to_trimming_total")) == 4000)
        [said] = events(worker, "entries_lost_to_trimming")
        assert (said["level"], said["lost"]) == ("error", 4000)
        time.sleep(1.5)  # more housekeeping rounds count nothing more
        assert metrics(port)[own_sample("interactionlog_entries_lost_to_trimming_total")] == 4000
    finally:
        worker.kill()


def test_pending_entries_removed_by_trimming_are_counted_as_lost_and_said_at_error(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Entries a crashed consumer held, then trimmed by XTRIM: found by the claim sweep (another consumer's) and by
    re-reading one's own pending entries (the same consumer name), counted as lost, logged at error."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    fill(client, 15)
    client.xreadgroup(GROUP, "gone-0", {STREAM: ">"}, count=10)  # another process's consumer, crashed
    client.xreadgroup(GROUP, "mine-0", {STREAM: ">"}, count=5)  # this worker's own name, from before a crash
    client.xtrim(STREAM, maxlen=0, approximate=False)
    worker, port = metrics_worker(redis_url, database_url, tmp_path, consumer_prefix="mine", concurrency="1")
    try:
        wait_until(lambda: group_pending(client) == 0, what="the deleted entries settled")
        wait_until(lambda: metrics(port).get(own_sample("interactionlog_pending_entries_lost_total")) == 15)
        said = events(worker, "pending_entries_lost")
        assert sum(line["count"] for line in said) == 15
        assert {line["level"] for line in said} == {"error"}
    finally:
        worker.kill()


def test_the_dead_letter_stream_has_its_own_cap_and_counts_what_it_removes(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """With --dead-letter-maxlen 100, 3,000 invalid entries leave the dead-letter stream near 100 entries, and
    every dead letter the cap removed is counted exactly (written minus kept) and said at error level."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for index in range(3000):
        pipe.xadd(STREAM, {"v": "1", "data": f'{{"mcp_id":"m","duration_ms":"slow-{index}"}}'})
    pipe.execute()
    worker, port = metrics_worker(redis_url, database_url, tmp_path, dead_letter_maxlen="100", batch_size="100")
    try:
        wait_until(lambda: group_pending(client) == 0 and client.xinfo_groups(STREAM)[0]["lag"] == 0, what="drained")
        kept = int(client.xlen(DEAD_LETTERS))
        assert 100 <= kept < 300, "about the cap (whole macro nodes of 100 are trimmed)"
        counted = own_sample("interactionlog_dead_letters_trimmed_total")
        try:
            wait_until(lambda: metrics(port).get(counted) == 3000 - kept, what=f"{3000 - kept} counted as trimmed")
        except AssertionError as error:  # say what the worker saw: a flake here once left nothing to go on
            expected = ('"dead_letters_trimmed"', '"entry_dead_lettered"', '"level": "info"', '"level": "debug"')
            seen = [line for line in worker.log_text().splitlines() if not any(word in line for word in expected)]
            raise AssertionError(f"{error}; counted {metrics(port).get(counted)}, worker said: {seen[-20:]}") from None
        said = events(worker, "dead_letters_trimmed")
        assert sum(line["count"] for line in said) == 3000 - kept
        assert {line["level"] for line in said} == {"error"}
    finally:
        worker.kill()


# --- Redis refusals --------------------------------------------------------------------------------------------


class Refusal:
    """A way to make Redis refuse the worker's commands for a while, and to stop."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.admin = redis.Redis.from_url(server.url)
        self.worker_url = acl_user(server, "~* +@all")

    def start(self, kind: str) -> None:
        """Begin refusing."""
        if kind == "READONLY":  # a failover made this server a replica (of a master that is not there)
            command(self.admin, "REPLICAOF", "127.0.0.1", str(free_port()))
        elif kind == "OOM":
            self.admin.config_set("maxmemory-policy", "noeviction")
            self.admin.config_set("maxmemory", "1")
        elif kind == "NOPERM":
            command(self.admin, "ACL", "SETUSER", "w", "-xack", "-xadd")
        elif kind == "BUSY":
            self.admin.config_set("busy-reply-threshold", "100")
            self._busy = threading.Thread(target=self._run_busy_script, daemon=True)
            self._busy.start()
            time.sleep(0.3)

    def stop(self, kind: str) -> None:
        """Stop refusing."""
        if kind == "READONLY":
            command(self.admin, "REPLICAOF", "NO", "ONE")
        elif kind == "OOM":
            self.admin.config_set("maxmemory", "0")
        elif kind == "NOPERM":
            command(self.admin, "ACL", "SETUSER", "w", "+xack", "+xadd")
        elif kind == "BUSY":
            self.admin.script_kill()
            self._busy.join(timeout=10)

    def _run_busy_script(self) -> None:
        client = redis.Redis.from_url(self.server.url, socket_timeout=60)
        with contextlib.suppress(redis.ResponseError):  # "Script killed by user"
            client.eval("while true do end", 0)


@pytest.mark.parametrize("kind", ["READONLY", "OOM", "NOPERM", "BUSY"])
def test_redis_refusals_are_retried_in_place_and_never_turn_a_committed_batch_into_poison(
    own_redis: RedisServer, database_url: str, tmp_path: Path, kind: str
) -> None:
    """Redis refuses the settling MULTI of a committed batch (OOM, READONLY, NOPERM, BUSY) for a few seconds: the
    worker retries it in place, so with max_deliveries 1 nothing is dead-lettered as poison, the invalid entry is
    dead-lettered once as invalid, every valid record is stored, and the refusal is said once."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:  # holds the batch in PostgreSQL for a moment
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.tool = 'slow' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER slow BEFORE INSERT ON interaction_logs FOR EACH ROW EXECUTE FUNCTION slow()")
    refusal = Refusal(own_redis)
    client = refusal.admin
    with Publisher.from_url(own_redis.url) as publisher:
        publisher.publish_many([record(0), record(1, tool="slow"), record(2)])
    client.xadd(STREAM, {"v": "1", "data": '{"mcp_id":"m","duration_ms":"slow"}'})
    flags = {"max_deliveries": "1", "claim_idle_ms": "60000", "concurrency": "1"}
    with running_worker(refusal.worker_url, database_url, tmp_path, **flags) as worker:
        with psycopg.connect(database_url, autocommit=True) as conn:
            sleeping = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
            wait_until(lambda: cast(tuple[int], conn.execute(sleeping).fetchone())[0] > 0, what="the batch in flight")
        refusal.start(kind)
        time.sleep(4)  # the commit lands meanwhile; settling is refused for a few seconds
        refusal.stop(kind)
        wait_until(lambda: group_pending(client) == 0 and client.xlen(DEAD_LETTERS) == 1, what="settled")
        wait_until(lambda: count_rows(database_url) == 3, what="stored")
        log_text = worker.log_text()
    [(_, letter)] = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTERS))
    assert letter[b"error_type"] == b"invalid_record", "no committed entry dead-lettered as max_deliveries"
    assert "consumer_step_crashed" not in log_text
    assert log_text.count('"dependency_refusing"') >= 1
    assert kind in log_text


# --- restricted Redis users -------------------------------------------------------------------------------------


def acl_user(server: RedisServer, rules: str) -> str:
    """Create user `w` with `rules` (ACL SETUSER syntax) and return a URL logging in as it."""
    admin = redis.Redis.from_url(server.url)
    command(admin, "ACL", "SETUSER", "w", "reset", "on", ">pw", *rules.split())
    return server.url.replace("redis://", "redis://w:pw@")


ISSUE_ACL = "~interactions* +@stream +@connection +@transaction"


@pytest.mark.parametrize(
    ("rules", "refused"),
    [
        (ISSUE_ACL, {"loss_accounting", "consumer_hygiene", "presence"}),
        (ISSUE_ACL + " +@hash +@scripting", {"loss_accounting"}),  # INFO denied only
    ],
    ids=["no-info-no-scripting", "no-info"],
)
def test_housekeeping_refused_by_a_restricted_user_is_said_once_at_error_and_counted(
    own_redis: RedisServer, database_url: str, tmp_path: Path, rules: str, refused: set[str]
) -> None:
    """Under a user without INFO (or scripting), every refused chore is logged once at error level with what to
    grant, and counted each round in housekeeping_failures_total{chore}; records are still stored."""
    migrate(database_url)
    url = acl_user(own_redis, rules)
    with Publisher.from_url(own_redis.url) as publisher:
        publisher.publish_many(record(index) for index in range(10))
    worker, port = metrics_worker(url, database_url, tmp_path, housekeeping_interval_ms="200")
    try:
        wait_until(lambda: count_rows(database_url) == 10, what="records stored")

        def failures(chore: str) -> float | None:
            return metrics(port).get(own_sample("interactionlog_housekeeping_failures_total", chore=chore))

        wait_until(lambda: all((failures(chore) or 0) >= 3 for chore in refused), what="refused rounds counted")
        said = events(worker, "housekeeping_refused")
        assert sorted(line["chore"] for line in said) == sorted(refused), "each refused chore said once"
        assert {line["level"] for line in said} == {"error"}
        assert all("NOPERM" in line["error"] and "grant" in line["hint"] for line in said)
        assert failures("trimming") == 0
    finally:
        worker.kill()


def readme_acl() -> str:
    """The ACL rules the README gives for the worker's Redis user."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    marker = "ACL SETUSER interactionlog-worker on >"
    line = next(line for line in text.splitlines() if marker in line)
    return line.split(marker, 1)[1].split(" ", 1)[1].strip().strip("`")


def test_the_readme_acl_grants_everything_the_worker_needs(
    own_redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    """A worker logged in with the README's smallest ACL stores records, runs every chore (cold-group loss
    accounting, trimming, hygiene, presence), serves its gauges, and logs no refusal."""
    migrate(database_url)
    url = acl_user(own_redis, readme_acl())
    admin = redis.Redis.from_url(own_redis.url)
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    fill(admin, 300, maxlen=200, approximate=False)
    admin.xgroup_createconsumer(STREAM, GROUP, "departed-0")  # left by a worker gone since; it read nothing
    worker, port = metrics_worker(
        url, database_url, tmp_path, housekeeping_interval_ms="200", consumer_idle_timeout_ms="1000"
    )
    try:
        wait_until(lambda: count_rows(database_url) == 200, what="records stored")
        wait_until(lambda: metrics(port).get(own_sample("interactionlog_entries_lost_to_trimming_total")) == 100)
        wait_until(
            lambda: "departed-0" not in {text(consumer["name"]) for consumer in admin.xinfo_consumers(STREAM, GROUP)},
            what="the departed consumer removed",
        )
        wait_until(lambda: f'interactionlog_stream_length{{stream="{STREAM}"}}' in metrics(port), what="the gauges")
        log_text = worker.log_text()
        for refusal in ("housekeeping_refused", "dependency_refusing", "_failing", "crashed", "NOPERM"):
            assert refusal not in log_text, refusal
    finally:
        worker.kill()


def test_housekeeping_never_changes_another_group(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """Another group on the stream keeps its departed consumers and its read counter: a worker's housekeeping
    only reads it (to trim nothing it still needs), and never runs XGROUP SETID or DELCONSUMER on it."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, "analytics", id="0", mkstream=True)
    ids = fill(client, 20)
    for index in range(3):
        client.xreadgroup("analytics", f"old-{index}", {STREAM: ">"}, count=1)
    client.xack(STREAM, "analytics", *ids[:3])
    fill(client, 30, maxlen=10, approximate=False)  # trims entries "analytics" never read
    before = {text(group["name"]): group for group in client.xinfo_groups(STREAM)}["analytics"]
    time.sleep(1.2)  # the old consumers are idle beyond the worker's threshold
    flags = {"housekeeping_interval_ms": "200", "consumer_idle_timeout_ms": "1000"}
    with running_worker(redis_url, database_url, tmp_path, **flags):
        wait_until(lambda: count_rows(database_url) == 10, what="this worker's group drained")
        time.sleep(1.5)  # several housekeeping rounds
    after = {text(group["name"]): group for group in client.xinfo_groups(STREAM)}["analytics"]
    names = {consumer["name"].decode() for consumer in client.xinfo_consumers(STREAM, "analytics")}
    assert names == {"old-0", "old-1", "old-2"}
    assert after["entries-read"] == before["entries-read"]
    assert after["last-delivered-id"] == before["last-delivered-id"]
    assert b"analytics" not in client.hgetall(f"{STREAM}:interactionlog:lost")
