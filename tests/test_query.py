"""`interactionlog tail`, `stats` and `show` against a real PostgreSQL holding known interactions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from interactionlog.cli import main
from interactionlog.ops import query
from interactionlog.worker.store import MIGRATIONS

from .pipeline import wait_until
from .stored import store_records

NOW = datetime.now(UTC).replace(second=0, microsecond=0)  # minute-aligned: the dashboard test buckets by minute
BASE = NOW - timedelta(minutes=30)
CLIENT = {"name": "claude-desktop", "version": "1.0"}


def _at(index: int) -> str:
    return (BASE + timedelta(seconds=10 * index)).isoformat()


def known_records() -> list[dict[str, Any]]:
    """16 interactions of the last half hour (known durations, sessions and errors) and one two days old."""
    records: list[dict[str, Any]] = []
    for index in range(10):  # get_forecast: 10..100 ms, errors at 3 and 7, sessions s1 (0-4) and s2 (5-9)
        record: dict[str, Any] = {
            "mcp_id": "weather",
            "interaction_id": f"fc-{index}",
            "timestamp": _at(index),
            "method": "tools/call",
            "tool": "get_forecast",
            "session_id": "s1" if index < 5 else "s2",
            "request": {"city": "Oslo", "n": index},
            "duration_ms": 10.0 * (index + 1),
            "client": CLIENT,
        }
        if index in (3, 7):
            record |= {"is_error": True, "error": {"code": -32602, "message": "unknown city"}}
        records.append(record)
    records += [
        {"mcp_id": "weather", "interaction_id": "al-0", "timestamp": _at(10), "method": "tools/call",
         "tool": "get_alerts", "session_id": "s3", "duration_ms": 5.0},
        {"mcp_id": "weather", "interaction_id": "al-1", "timestamp": _at(11), "method": "tools/call",
         "tool": "get_alerts", "session_id": "s3", "duration_ms": 7.0, "is_error": True, "error": "upstream timeout"},
    ]  # fmt: skip
    for index in range(3):  # resource reads without duration; the last one failed, as MCP reports tool errors
        record = {"mcp_id": "files", "interaction_id": f"rd-{index}", "timestamp": _at(12 + index),
                  "method": "resources/read", "tool": "file:///a"}  # fmt: skip
        if index == 2:
            record |= {"is_error": True, "response": {"content": [{"type": "text", "text": "permission denied"}]}}
        records.append(record)
    records.append({"mcp_id": "files", "interaction_id": "init-0", "timestamp": _at(15), "method": "initialize"})
    records.append(
        {"mcp_id": "weather", "interaction_id": "old-1", "timestamp": (NOW - timedelta(days=2)).isoformat(),
         "method": "tools/call", "tool": "get_forecast", "duration_ms": 1000.0}
    )  # fmt: skip
    return records


@pytest.fixture
def known_url(database_url: str) -> str:
    """A database holding `known_records()`."""
    store_records(database_url, known_records())
    return database_url


def run(database_url: str, *args: str) -> Result:
    """The real CLI, in process."""
    return CliRunner().invoke(main, [*args, "--database-url", database_url], catch_exceptions=False)


def tail_ids(database_url: str, *args: str) -> list[str]:
    """interaction_ids that `tail --json` prints, in its order."""
    result = run(database_url, "tail", "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line)["interaction_id"] for line in result.output.splitlines()]


def test_tail_prints_the_newest_oldest_first(known_url: str) -> None:
    """tail -n N prints the N newest interactions by timestamp, the newest last."""
    assert tail_ids(known_url, "-n", "3") == ["rd-1", "rd-2", "init-0"]
    everything = tail_ids(known_url, "-n", "100")
    assert everything[0] == "old-1"
    assert everything[1:] == [record["interaction_id"] for record in known_records()[:-1]]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--mcp-id", "files"], ["rd-0", "rd-1", "rd-2", "init-0"]),
        (["--tool", "get_alerts"], ["al-0", "al-1"]),
        (["--method", "resources/read"], ["rd-0", "rd-1", "rd-2"]),
        (["--session", "s1"], ["fc-0", "fc-1", "fc-2", "fc-3", "fc-4"]),
        (["--errors"], ["fc-3", "fc-7", "al-1", "rd-2"]),
        (["--errors", "--mcp-id", "weather", "--tool", "get_forecast"], ["fc-3", "fc-7"]),
        (["--tool", "get_forecast", "-n", "2"], ["fc-8", "fc-9"]),
        (["--since", "1h", "--tool", "get_forecast", "-n", "100"], [f"fc-{index}" for index in range(10)]),
        (["--since", "1d", "--mcp-id", "nobody"], []),
    ],
)
def test_tail_filters(known_url: str, flags: list[str], expected: list[str]) -> None:
    """Each filter, alone or combined, keeps exactly the matching interactions."""
    assert tail_ids(known_url, "-n", "100", *flags) == expected


def test_tail_json_carries_the_columns_the_error_message_and_the_record_as_sent(known_url: str) -> None:
    """tail --json prints one object per line with the record under `record` and the error's message."""
    (line,) = run(known_url, "tail", "--json", "--errors", "--tool", "get_alerts").output.splitlines()
    document = json.loads(line)
    assert document["interaction_id"] == "al-1"
    assert document["error_message"] == "upstream timeout"
    assert document["is_error"] is True
    assert document["duration_ms"] == 7.0
    assert document["record"]["error"] == "upstream timeout"
    assert document["timestamp"].endswith("Z")


def test_tail_lines_are_readable(known_url: str) -> None:
    """The human view has one line per call: MCP, method and tool, duration, ok or ERROR with the message."""
    lines = run(known_url, "tail", "--mcp-id", "weather", "-n", "100", "--since", "1h").output.splitlines()
    assert len(lines) == 12
    error_line = next(line for line in lines if "id=fc-3" in line)
    for part in ("weather", "tools/call get_forecast", "40.0 ms", "ERROR", "session=s1", "unknown city"):
        assert part in error_line
    ok_line = next(line for line in lines if "id=fc-4" in line)
    assert "  ok  " in ok_line
    assert "ERROR" not in ok_line


def test_stats_json_figures(known_url: str) -> None:
    """stats --json gives calls, errors, error rate and duration percentiles per tool, and the top errors."""
    result = run(known_url, "stats", "--json", "--since", "1h")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    tools = {(row["mcp_id"], row["method"], row["tool"]): row for row in figures["tools"]}
    assert list(tools) == [
        ("weather", "tools/call", "get_forecast"),
        ("files", "resources/read", "file:///a"),
        ("weather", "tools/call", "get_alerts"),
        ("files", "initialize", None),
    ]
    forecast = tools["weather", "tools/call", "get_forecast"]
    assert (forecast["calls"], forecast["errors"], forecast["error_rate"]) == (10, 2, 0.2)
    # percentile_cont interpolates over 10, 20, ..., 100: the old 1000 ms call is outside the window.
    assert forecast["p50_ms"] == pytest.approx(55.0)
    assert forecast["p95_ms"] == pytest.approx(95.5)
    assert forecast["p99_ms"] == pytest.approx(99.1)
    alerts = tools["weather", "tools/call", "get_alerts"]
    assert (alerts["calls"], alerts["errors"], alerts["p50_ms"], alerts["p99_ms"]) == (2, 1, 6.0, pytest.approx(6.98))
    reads = tools["files", "resources/read", "file:///a"]
    assert (reads["calls"], reads["errors"], reads["p50_ms"]) == (3, 1, None)
    assert [(e["mcp_id"], e["tool"], e["message"], e["count"]) for e in figures["top_errors"]] == [
        ("weather", "get_forecast", "unknown city", 2),
        ("files", "file:///a", "permission denied", 1),
        ("weather", "get_alerts", "upstream timeout", 1),
    ]


def test_stats_window_and_filters(known_url: str) -> None:
    """--since 3d takes in the old call; --mcp-id narrows to one server; --top-errors bounds the list."""
    wide = json.loads(
        run(known_url, "stats", "--json", "--since", "3d", "--mcp-id", "weather", "--top-errors", "1").output
    )
    (forecast, alerts) = wide["tools"]
    assert (forecast["tool"], forecast["calls"], alerts["tool"]) == ("get_forecast", 11, "get_alerts")
    assert forecast["p99_ms"] > 900
    assert [error["message"] for error in wide["top_errors"]] == ["unknown city"]


def test_stats_table_for_people(known_url: str) -> None:
    """Without --json, stats prints a table per tool with its figures, and the top errors."""
    output = run(known_url, "stats").output
    forecast = next(line for line in output.splitlines() if "get_forecast" in line and "tools/call" in line)
    for figure in ("10", "2", "20.0", "55.0", "95.5", "99.1"):
        assert f" {figure} " in forecast
    assert "Top errors" in output
    assert "permission denied" in output


def test_stats_on_an_empty_window_says_so(known_url: str) -> None:
    """A window holding nothing is reported as such, not as an empty table."""
    output = run(known_url, "stats", "--mcp-id", "nobody").output
    assert "no interactions stored" in output


def test_show_prints_one_interaction_in_full(known_url: str) -> None:
    """show ID finds an interaction by interaction_id or by row id and prints the whole record."""
    by_interaction = run(known_url, "show", "fc-3", "--json")
    assert by_interaction.exit_code == 0, by_interaction.output
    document = json.loads(by_interaction.output)
    assert document["record"]["request"] == {"city": "Oslo", "n": 3}
    assert document["record"]["client"] == CLIENT
    assert document["error_message"] == "unknown city"
    by_row = json.loads(run(known_url, "show", str(document["id"]), "--json").output)
    assert by_row == document
    text = run(known_url, "show", "fc-3").output
    for part in ("interaction_id", "fc-3", "unknown city", '"city": "Oslo"', "claude-desktop"):
        assert part in text


def test_show_asks_for_the_mcp_id_when_an_interaction_id_is_shared(known_url: str) -> None:
    """The same interaction_id under two MCP servers is refused with both named, and --mcp-id picks one."""
    store_records(known_url, [{"mcp_id": "files", "interaction_id": "fc-3", "method": "tools/call"}])
    ambiguous = run(known_url, "show", "fc-3")
    assert ambiguous.exit_code == 2
    assert "files, weather" in ambiguous.output
    assert "--mcp-id" in ambiguous.output
    chosen = json.loads(run(known_url, "show", "fc-3", "--mcp-id", "files", "--json").output)
    assert (chosen["mcp_id"], chosen["method"]) == ("files", "tools/call")


def test_show_of_an_unknown_id_fails_with_a_message(known_url: str) -> None:
    """An id that matches nothing exits 1 and says what was looked for."""
    result = run(known_url, "show", "no-such-id")
    assert result.exit_code == 1
    assert "no interaction 'no-such-id'" in result.output


def test_commands_on_an_unmigrated_database_say_to_migrate(database_url: str) -> None:
    """Reading a database without the table exits 1 telling to run `interactionlog migrate`."""
    for args in (["tail"], ["stats"], ["show", "x"]):
        result = run(database_url, *args)
        assert result.exit_code == 1
        assert "run `interactionlog migrate`" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(minutes=90)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(days=7)),
        ("500ms", timedelta(milliseconds=500)),
    ],
)
def test_since_accepts_durations(text: str, expected: timedelta) -> None:
    """A duration means that long before now."""
    assert query.parse_since(text, NOW) == NOW - expected


def test_since_accepts_a_time_with_a_zone_and_refuses_the_rest() -> None:
    """An ISO 8601 time with a zone is taken as it is; a time without zone or gibberish is refused, with the forms."""
    assert query.parse_since("2026-11-30T10:00:00+01:00") == datetime(2026, 11, 30, 9, tzinfo=UTC)
    for bad in ("2026-11-30T10:00:00", "1x", "", "h"):
        with pytest.raises(query.QueryError, match=r"90s, 15m, 1h"):
            query.parse_since(bad)


# --- following ---


def insert_row(conn: psycopg.Connection[Any], interaction_id: str) -> None:
    """Insert one minimal row in the connection's open transaction."""
    conn.execute(
        'INSERT INTO interaction_logs (mcp_id, interaction_id, "timestamp", data, stream_entry_id)'
        " VALUES ('m', %s, now(), '{}', '0-1')",
        (interaction_id,),
    )


def test_follower_shows_a_batch_committed_after_a_later_one(known_url: str) -> None:
    """A row whose id was allotted first but committed last is still shown, once, and the floor then moves on."""
    follower = query.Follower(query.Filters(mcp_id="m"), settle_s=0.05)
    with (
        psycopg.connect(known_url, autocommit=True) as reader,
        psycopg.connect(known_url) as slow,
        psycopg.connect(known_url) as fast,
    ):
        follower.start(reader)
        insert_row(slow, "late")  # takes the lower id, stays uncommitted
        insert_row(fast, "early")
        fast.commit()
        assert [row.interaction_id for row in follower.poll(reader)] == ["early"]
        time.sleep(0.2)
        assert follower.poll(reader) == []
        assert follower.floor < min(follower.shown)  # the open transaction holds the floor back
        slow.commit()
        assert [row.interaction_id for row in follower.poll(reader)] == ["late"]
        for _ in range(3):
            time.sleep(0.1)
            assert follower.poll(reader) == []
        newest = reader.execute("SELECT max(id) FROM interaction_logs").fetchone()
        assert newest is not None
        assert follower.floor == newest[0]
        assert follower.shown == set()


def _read_lines(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


def test_tail_follow_prints_new_matching_rows_until_ctrl_c(known_url: str) -> None:
    """tail -f (a real process) prints rows stored after it started, only matching ones, once; SIGINT ends it with 0."""
    command = [sys.executable, "-m", "interactionlog", "tail", "-f", "--json", "-n", "1", "--tool", "get_alerts",
               "--interval-s", "0.1", "--database-url", known_url]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines, what="the listing before following")
        new = [
            {"mcp_id": "weather", "interaction_id": f"new-{index}", "method": "tools/call", "tool": tool}
            for index, tool in enumerate(["get_alerts", "get_forecast", "get_alerts"])
        ]
        store_records(known_url, new[:2])
        store_records(known_url, new[2:])
        wait_until(lambda: len(lines) >= 3, what="the two new get_alerts rows")
        time.sleep(0.5)  # a duplicate or an unmatched row would arrive by now
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert [json.loads(line)["interaction_id"] for line in lines] == ["al-1", "new-0", "new-2"]


def test_migration_2_is_recorded_with_its_indexes(known_url: str) -> None:
    """migrate applies every migration, and the indexes the queries rely on exist."""
    with psycopg.connect(known_url) as conn:
        versions = [version for (version,) in conn.execute("SELECT version FROM interactionlog_schema_migrations")]
        indexes = {
            name for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'interaction_logs'")
        }
    assert sorted(versions) == [migration.version for migration in MIGRATIONS]
    assert {
        "interaction_logs_timestamp",
        "interaction_logs_tool_timestamp",
        "interaction_logs_session_timestamp",
        "interaction_logs_errors_timestamp",
    } <= indexes
