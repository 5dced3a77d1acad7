"""What operators read is safe and exact: no terminal escapes from names anyone can choose, `dlq replay` of one id
replays that dead letter only, empty results and shard streams are named, a refused role or database says what to
do, and help texts list what each command uses."""

from __future__ import annotations

from pathlib import Path

import redis
from click.testing import CliRunner

from interactionlog.cli import main
from interactionlog.ops.terminal import printable

from .pipeline import running_worker, wait_until
from .servers import PostgresServer, free_port

STREAM, GROUP = "interactions", "interactionlog"


def test_printable_shows_control_characters_as_escapes() -> None:
    """ESC, BEL, CR and a right-to-left override become visible escapes; ordinary text is unchanged."""
    assert printable("w-1 caf\u00e9") == "w-1 caf\u00e9"
    assert printable("\x1b[2Jhi\x07\r\u202e") == "\\x1b[2Jhi\\x07\\x0d\\u202e"


def test_status_never_prints_a_consumer_name_s_escape_codes(redis_url: str) -> None:
    """A consumer named with an escape sequence (anyone with XREADGROUP can create one) is shown escaped."""
    client = redis.Redis.from_url(redis_url)
    client.xadd(STREAM, {"v": "1", "data": '{"mcp_id": "a"}'})
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "evil\x1b[2J\x1b]0;pwned\x07", {STREAM: ">"}, count=1)
    result = CliRunner().invoke(main, ["status", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "\x07" not in result.output
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07" in result.output


def test_dlq_list_never_prints_escape_codes_from_a_dead_letter(redis_url: str) -> None:
    """A dead letter's fields come from the publisher: their control characters are shown escaped."""
    client = redis.Redis.from_url(redis_url)
    client.xadd(
        f"{STREAM}:dlq",
        {"source_id": "1-0", "error_type": "invalid_json", "deliveries": "1", "error": "bad \x1b[31mred\x1b[0m"},
    )
    result = CliRunner().invoke(main, ["dlq", "list", "--redis-url", redis_url])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "bad \\x1b[31mred\\x1b[0m" in result.output


def test_replaying_an_id_without_its_sequence_replays_that_id_only(redis_url: str) -> None:
    """`dlq replay 1796050769612` means 1796050769612-0, never every dead letter of that millisecond."""
    client = redis.Redis.from_url(redis_url)
    dlq = f"{STREAM}:dlq"
    for seq in (1, 2):
        client.xadd(dlq, {"v": "1", "data": '{"mcp_id": "a"}', "source_id": f"5-{seq}"}, id=f"1796050769612-{seq}")
    result = CliRunner().invoke(main, ["dlq", "replay", "1796050769612", "--redis-url", redis_url])
    assert result.exit_code != 0, "no dead letter has the id 1796050769612-0"
    assert client.xlen(dlq) == 2
    assert client.xlen(STREAM) == 0


def test_dlq_list_says_when_there_are_no_dead_letters(redis_url: str) -> None:
    """An empty dead-letter stream is said on stderr (naming it, and every shard's), not left as silence;
    --json prints nothing on stdout, which is valid (empty) JSON lines."""
    runner = CliRunner()
    plain = runner.invoke(main, ["dlq", "list", "--redis-url", redis_url])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == ""
    assert "no dead letters in interactions:dlq" in plain.stderr
    sharded = runner.invoke(main, ["dlq", "list", "--redis-url", redis_url, "--shards", "3", "--json"])
    assert sharded.exit_code == 0, sharded.output
    assert sharded.stdout == ""
    assert "no dead letters in the 3 shard streams of interactions:dlq (interactions:dlq:{" in sharded.stderr
    narrowed = runner.invoke(main, ["dlq", "list", "--redis-url", redis_url, "--reason", "invalid_json"])
    assert "no dead letters of error_type 'invalid_json' in interactions:dlq" in narrowed.stderr


def test_publish_names_the_shard_streams_it_published_to(redis_url: str) -> None:
    """With --shards 3 the records went to three shard streams, and the summary says so rather than naming the
    unsharded stream (which received nothing)."""
    lines = "".join(f'{{"mcp_id": "m{index}"}}\n' for index in range(6))
    result = CliRunner().invoke(main, ["publish", "--redis-url", redis_url, "--shards", "3", "-"], input=lines)
    assert result.exit_code == 0, result.output
    assert "published 6 record(s) to the 3 shard streams of interactions (interactions:{" in result.stderr
    assert redis.Redis.from_url(redis_url).exists(STREAM) == 0


def test_a_missing_role_or_database_says_how_to_name_them(postgres_server: PostgresServer) -> None:
    """PostgreSQL refusing the connection's role or database (the default URL connects as the OS user to a
    database of the same name) points at --database-url and INTERACTIONLOG_DATABASE_URL, for `migrate` and
    for `tail`; an unreachable server gets no such hint."""
    no_role = postgres_server.url("postgres").replace("postgres@", "nobody_here@", 1)
    no_database = postgres_server.url("no_such_database")
    runner = CliRunner()
    for command, url in (("migrate", no_role), ("migrate", no_database), ("tail", no_role)):
        result = runner.invoke(main, [command, "--database-url", url])
        assert result.exit_code == 1, result.output
        assert "does not exist" in result.stderr
        assert "hint: give the role and database to use with --database-url or INTERACTIONLOG_DATABASE_URL" in (
            result.stderr
        )
    refused = runner.invoke(main, ["migrate", "--database-url", f"postgresql://127.0.0.1:{free_port()}/x"])
    assert refused.exit_code == 1
    assert "hint:" not in refused.stderr


def test_a_worker_whose_database_does_not_exist_says_how_to_name_it(
    redis_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A worker keeps running (PostgreSQL may come later) and its log carries the same hint as the commands."""
    with running_worker(redis_url, postgres_server.url("no_such_database"), tmp_path) as worker:
        wait_until(lambda: "does not exist" in worker.log_text(), what="the failed connection logged")
        wait_until(lambda: "hint: give the role and database to use with --database-url" in worker.log_text(),
                   what="the hint in the worker's log")  # fmt: skip


def test_worker_help_lists_no_publisher_only_settings() -> None:
    """--wait-replicas, --wait-timeout-ms and --stream-maxlen change only what publishers do: `worker` does not
    offer them, and `serve` (a publisher) still does."""
    runner = CliRunner()
    worker = runner.invoke(main, ["worker", "--help"], terminal_width=200).output
    serve = runner.invoke(main, ["serve", "--help"], terminal_width=200).output
    for flag in ("--wait-replicas", "--wait-timeout-ms", "--stream-maxlen"):
        assert flag not in worker
        assert flag in serve


def test_dev_help_mentions_the_gateway() -> None:
    """`dev --help` says that dev runs the HTTP gateway too, and that the banner prints its URL."""
    help_text = " ".join(CliRunner().invoke(main, ["dev", "--help"]).output.split())
    assert "HTTP gateway" in help_text
    assert "without tokens" in help_text
