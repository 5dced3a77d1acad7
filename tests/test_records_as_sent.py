"""Records are stored as they were sent: fields of the publisher's own are kept, numbers and text keep their exact
form on every path (helper, raw XADD, `interactionlog publish FILE`), times are RFC 3339 within what PostgreSQL and
Python both read back, and error messages name fields as the user wrote them."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from interactionlog import InvalidRecordError, Publisher
from interactionlog.client.publisher import encode_fields
from interactionlog.errors import PermanentEntryError
from interactionlog.replies import text
from interactionlog.worker.decode import decode_entry

from .pipeline import INTERACTIONLOG, count_rows, group_pending, migrate, running_worker, stream_entries, wait_until

ENTRY_ID = "1700000000123-4"
EXACT_NUMBERS = '{"n":1.00000000000000001,"e":1e2,"f":12.50}'


def wire(data: str) -> dict[Any, Any]:
    """Entry fields in the wire format around `data`."""
    return {b"v": b"1", b"data": data.encode()}


def drain(redis_url: str, database_url: str, tmp_path: Path, rows: int) -> None:
    """Run a worker until `rows` rows are stored and nothing is pending."""
    client = redis.Redis.from_url(redis_url)
    with running_worker(redis_url, database_url, tmp_path) as worker:
        wait_until(lambda: count_rows(database_url) >= rows and group_pending(client) == 0, what=f"{rows} rows")
        assert worker.stop() == 0


def stored(database_url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of `query` against the table."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(query.encode()).fetchall()


# --- 1. fields the worker does not know -------------------------------------------------------------------------


def test_a_raw_record_with_fields_of_its_own_is_stored_with_them(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """`XADD ... data '{"mcp_id":"a","user_id":"u1","kind":"tool_call"}'` is stored, the unknown fields inside data."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    client.xadd("interactions", wire('{"mcp_id":"a","user_id":"u1","kind":"tool_call","tokens":{"in":3}}'))
    drain(redis_url, database_url, tmp_path, 1)
    assert client.xlen("interactions:dlq") == 0
    [(user_id, kind, tokens)] = stored(
        database_url, "SELECT data->>'user_id', data->>'kind', data->'tokens' FROM interaction_logs"
    )
    assert (user_id, kind, tokens) == ("u1", "tool_call", {"in": 3})


def test_the_helper_publishes_fields_of_the_callers_own_and_a_worker_stores_them(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The publish helper keeps unknown top-level fields (any JSON value) and the worker stores them in data."""
    migrate(database_url)
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish({"mcp_id": "a", "interaction_id": "i", "model": "m-1", "tokens": 12, "status": None})
    drain(redis_url, database_url, tmp_path, 1)
    [(data,)] = stored(database_url, "SELECT data FROM interaction_logs")
    assert data["model"] == "m-1"
    assert data["tokens"] == 12
    assert "status" in data, "a null the caller sent is kept"
    assert data["status"] is None


def test_strict_mode_refuses_unknown_fields_and_points_to_metadata() -> None:
    """With strict=True the helper refuses a field the wire format does not define, naming it and `metadata`."""
    with pytest.raises(InvalidRecordError, match=r"field 'tool_name'.*'metadata'"):
        encode_fields({"mcp_id": "a", "tool_name": "typo"}, 10_000, strict=True)
    publisher = Publisher.from_url("redis://127.0.0.1:1/0", strict=True)
    with pytest.raises(InvalidRecordError, match=r"field 'user_id'.*'metadata'"):
        publisher.publish({"mcp_id": "a", "user_id": "u1"})
    assert encode_fields({"mcp_id": "a", "metadata": {"user_id": "u1"}}, 10_000, strict=True)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"duration_ms": "12"}, "duration_ms"),
        ({"mcp_id": "x" * 101}, "mcp_id"),
        ({"is_error": 1}, "is_error"),
        ({"tool": "t" * 201}, "tool"),
    ],
)
def test_known_fields_keep_their_types_and_limits_beside_unknown_ones(extra: dict[str, Any], field: str) -> None:
    """An unknown field does not loosen the known ones: a wrong type or an overlong value is still refused."""
    record = {"mcp_id": "a", "user_id": "u1", **extra}
    with pytest.raises(InvalidRecordError, match=f"field '{field}'"):
        encode_fields(record, 10_000)
    with pytest.raises(PermanentEntryError, match=f"field '{field}'") as raised:
        decode_entry(ENTRY_ID, wire(json.dumps(record)), 10_000)
    assert raised.value.reason == "invalid_record"


def test_unknown_fields_holding_what_postgresql_cannot_store_are_still_refused() -> None:
    """NUL characters and non-finite numbers in an unknown field are refused as in a known one, naming it."""
    with pytest.raises(InvalidRecordError, match=r"field 'note'.*U\+0000"):
        encode_fields({"mcp_id": "a", "note": "a\x00b"}, 10_000)
    with pytest.raises(InvalidRecordError, match=r"field 'score' is NaN"):
        encode_fields({"mcp_id": "a", "score": float("nan")}, 10_000)
    with pytest.raises(PermanentEntryError, match=r"field 'note'") as raised:
        decode_entry(ENTRY_ID, wire('{"mcp_id":"a","note":"\\u0000"}'), 10_000)
    assert raised.value.reason == "unstorable_value"


# --- 2. what is stored is what was sent --------------------------------------------------------------------------


def test_a_raw_record_without_defaults_is_stored_with_its_numbers_as_sent(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """1.00000000000000001, 1e2 and 12.50 come back as sent (not 1.0, 100.0, 12.5); only the defaults are added."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    entry_id = text(client.xadd("interactions", wire(f'{{"mcp_id":"m","request":{EXACT_NUMBERS}}}')))
    drain(redis_url, database_url, tmp_path, 1)
    [(n, e, f, interaction_id, timestamp)] = stored(
        database_url,
        "SELECT data->'request'->>'n', data->'request'->>'e', data->'request'->>'f', data->>'interaction_id',"
        " data->>'timestamp' FROM interaction_logs",
    )
    assert (n, e, f) == ("1.00000000000000001", "100", "12.50")
    assert interaction_id == entry_id
    assert timestamp.endswith("Z")


def test_the_worker_splices_defaults_into_the_text_without_touching_the_rest() -> None:
    """The data column gets the entry's JSON byte for byte, the missing defaults inserted after the opening brace."""
    sent = ' {"mcp_id": "m", "request": {"e": 1e2, "s": "\\u00e9"}, "z": [1.0, 2.50]}'
    row = decode_entry(ENTRY_ID, wire(sent), 10_000)
    assert row.data == ' {"interaction_id":"1700000000123-4","timestamp":"2023-11-14T22:13:20.123Z",' + sent[2:]
    assert json.loads(row.data)["z"] == [1.0, 2.5]


def test_the_helper_keeps_the_callers_timestamp_text_and_nulls(redis_url: str) -> None:
    """The helper sends the caller's values as given: a timestamp keeps its spelling, a null stays a null."""
    with Publisher.from_url(redis_url) as publisher:
        publisher.publish({"mcp_id": "a", "timestamp": "2024-05-01 10:00:00.50+02:00", "tool": None})
    [(_, fields)] = stream_entries(redis.Redis.from_url(redis_url))
    data = json.loads(fields[b"data"])
    assert data["timestamp"] == "2024-05-01 10:00:00.50+02:00"
    assert "tool" in data
    assert data["tool"] is None
    assert data["interaction_id"], "the generated id is spliced in"


def test_cli_publish_stores_each_line_as_written(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """`interactionlog publish FILE` sends each line's own text: 12.50 stays 12.50, 1.00000000000000001 stays."""
    source = tmp_path / "records.jsonl"
    source.write_text(f'{{"mcp_id":"m","interaction_id":"x","request":{EXACT_NUMBERS}}}\n')
    result = subprocess.run(
        [*INTERACTIONLOG, "publish", str(source), "--redis-url", redis_url], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    [(_, fields)] = stream_entries(redis.Redis.from_url(redis_url))
    assert EXACT_NUMBERS.encode() in fields[b"data"]
    migrate(database_url)
    drain(redis_url, database_url, tmp_path, 1)
    [(n, f)] = stored(database_url, "SELECT data->'request'->>'n', data->'request'->>'f' FROM interaction_logs")
    assert (n, f) == ("1.00000000000000001", "12.50")


# --- 4. times mean what they say ----------------------------------------------------------------------------------

OUT_OF_RANGE = ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


@pytest.mark.parametrize("timestamp", OUT_OF_RANGE)
def test_instants_outside_what_postgresql_and_python_hold_are_refused_saying_why(timestamp: str) -> None:
    """The helper and the worker refuse a timestamp whose instant is outside the stored range, and say so."""
    record = {"mcp_id": "a", "timestamp": timestamp}
    with pytest.raises(InvalidRecordError, match=r"field 'timestamp'.*outside the instants"):
        encode_fields(record, 10_000)
    with pytest.raises(PermanentEntryError, match=r"field 'timestamp'.*outside the instants") as raised:
        decode_entry(ENTRY_ID, wire(json.dumps(record)), 10_000)
    assert raised.value.reason == "invalid_record"


def test_the_table_stays_readable_after_out_of_range_times_are_sent(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Raw records with out-of-range times are dead-lettered, so every row still reads back through psycopg."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    for index, timestamp in enumerate(OUT_OF_RANGE):
        client.xadd(
            "interactions", wire(json.dumps({"mcp_id": "a", "interaction_id": f"t{index}", "timestamp": timestamp}))
        )
    client.xadd("interactions", wire('{"mcp_id":"a","interaction_id":"ok","timestamp":"9999-12-30T12:00:00Z"}'))
    drain(redis_url, database_url, tmp_path, 1)
    wait_until(lambda: client.xlen("interactions:dlq") == len(OUT_OF_RANGE), what="dead letters")
    rows = stored(database_url, 'SELECT interaction_id, "timestamp" FROM interaction_logs')
    assert [row[0] for row in rows] == ["ok"]


@pytest.mark.parametrize("timestamp", [1_700_000_000, 1_700_000_000_000, 1.7e9, "1700000000", "1700000000000"])
def test_epoch_numbers_are_refused_rather_than_guessed_as_seconds_or_milliseconds(timestamp: object) -> None:
    """An epoch number (or numeric string) is refused, naming the ambiguity, by the helper and by the worker."""
    record = {"mcp_id": "a", "timestamp": timestamp}
    with pytest.raises(InvalidRecordError, match=r"field 'timestamp'.*seconds and milliseconds"):
        encode_fields(record, 10_000)
    with pytest.raises(PermanentEntryError, match=r"seconds and milliseconds"):
        decode_entry(ENTRY_ID, wire(json.dumps(record)), 10_000)


@pytest.mark.parametrize(
    ("timestamp", "utc"),
    [
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00+00:00"),
        ("2024-05-01t10:00:00.123456789+02:00", "2024-05-01T08:00:00.123456+00:00"),
        ("2024-05-01 10:00:00-05:30", "2024-05-01T15:30:00+00:00"),
    ],
)
def test_rfc3339_times_are_accepted_as_the_instant_they_name(timestamp: str, utc: str) -> None:
    """RFC 3339 date-times (T or space, any case, fractions, offsets) are read as the instant they name."""
    row = decode_entry(ENTRY_ID, wire(json.dumps({"mcp_id": "a", "timestamp": timestamp})), 10_000)
    assert row.timestamp == datetime.fromisoformat(utc)
    assert encode_fields({"mcp_id": "a", "timestamp": timestamp}, 10_000)


# --- 7. error messages name fields as the user wrote them ---------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "named", "internal"),
    [
        ({"mcp_id": "a", "request_id": 1.5}, "field 'request_id'", "constrained-str"),
        ({"mcp_id": "a", "request_id": [1]}, "field 'request_id'", ".int"),
        ({"mcp_id": "a", "response": {"content": [b"x"]}}, "field 'response.content.0'", "dict"),
        ({"mcp_id": "a", "metadata": {"list": {"dict": {1, 2}}}}, "field 'metadata.list.dict'", "list.dict.dict"),
    ],
)
def test_error_messages_name_fields_as_the_user_wrote_them(record: dict[str, Any], named: str, internal: str) -> None:
    """Messages name the user's own path (`response.content.0`), never pydantic's union or shape tags."""
    with pytest.raises(InvalidRecordError) as raised:
        encode_fields(record, 10_000)
    assert named in str(raised.value)
    assert internal not in str(raised.value)


def test_the_worker_names_fields_as_written_in_dead_letters() -> None:
    """A dead letter's message says `field 'request_id'`, not `request_id.constrained-str`."""
    with pytest.raises(PermanentEntryError) as raised:
        decode_entry(ENTRY_ID, wire('{"mcp_id":"a","request_id":1.5}'), 10_000)
    assert "field 'request_id': Input should be a valid string, or a valid integer" in str(raised.value)
    assert "constrained-str" not in str(raised.value)
