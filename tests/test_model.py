"""The Interaction record: what it accepts, what it refuses, and how the worker decodes wire entries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from interactionlog import Interaction, InvalidRecordError
from interactionlog.errors import PermanentEntryError
from interactionlog.record import encode_record, validate_record
from interactionlog.worker.decode import decode_entry

ENTRY_ID = "1700000000123-4"


def wire(data: bytes) -> dict[bytes, bytes]:
    return {b"v": b"1", b"data": data}


def test_defaults_fill_interaction_id_and_timestamp() -> None:
    """A record needs only mcp_id; interaction_id becomes a fresh UUID and timestamp an aware 'now'."""
    first, second = validate_record({"mcp_id": "weather"}), validate_record({"mcp_id": "weather"})
    assert first.interaction_id != second.interaction_id
    assert len(first.interaction_id) == 36
    assert first.timestamp.tzinfo is not None
    assert abs((datetime.now(UTC) - first.timestamp).total_seconds()) < 5


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({}, "mcp_id"),
        ({"mcp_id": ""}, "mcp_id"),
        ({"mcp_id": "x" * 101}, "mcp_id"),
        ({"mcp_id": "a", "interaction_id": "i" * 101}, "interaction_id"),
        ({"mcp_id": "a", "duration_ms": "12"}, "duration_ms"),
        ({"mcp_id": "a", "duration_ms": -1}, "duration_ms"),
        ({"mcp_id": "a", "is_error": "yes"}, "is_error"),
        ({"mcp_id": "a", "timestamp": "2024-01-01T00:00:00"}, "timestamp"),
        ({"mcp_id": "a", "timestamp": "yesterday"}, "timestamp"),
        ({"mcp_id": "a", "metadata": ["not", "an", "object"]}, "metadata"),
        ({"mcp_id": "a", "client": {"name": 3}}, "client.name"),
        ({"mcp_id": 7}, "mcp_id"),
    ],
)
def test_invalid_records_raise_an_error_naming_the_field(record: dict[str, object], field: str) -> None:
    """Every invalid record raises InvalidRecordError whose message names the offending field."""
    with pytest.raises(InvalidRecordError, match=f"field '{field}'"):
        validate_record(record)


def test_nul_character_is_refused_naming_the_nested_field() -> None:
    """U+0000 cannot be stored by PostgreSQL, so encoding refuses it and names where it is."""
    record = validate_record({"mcp_id": "a", "request": {"args": ["ok", "bad\x00value"]}})
    with pytest.raises(InvalidRecordError, match=r"field 'request\.args\.1'.*U\+0000"):
        encode_record(record)


def test_literal_backslash_u0000_text_is_not_mistaken_for_nul() -> None:
    """The six characters \\u0000 in a string are ordinary text and encode fine."""
    record = validate_record({"mcp_id": "a", "request": "\\u0000"})
    assert "\\\\u0000" in encode_record(record)


def test_encoding_keeps_nulls_inside_json_values() -> None:
    """Unset top-level fields are omitted, but nulls inside request/response are data and are kept."""
    encoded = encode_record(validate_record({"mcp_id": "a", "response": {"value": None}}))
    assert '"response":{"value":null}' in encoded
    assert '"tool"' not in encoded


def test_decode_takes_missing_ids_and_time_from_the_entry_id() -> None:
    """A plain XADD without interaction_id/timestamp is stored under the entry id, stable across redelivery."""
    row = decode_entry(ENTRY_ID, wire(b'{"mcp_id": "raw"}'), 10_000)
    assert row.interaction_id == ENTRY_ID
    assert row.timestamp == datetime.fromtimestamp(1700000000.123, UTC)
    assert row == decode_entry(ENTRY_ID, wire(b'{"mcp_id": "raw"}'), 10_000)


def test_decode_maps_filter_fields_to_columns() -> None:
    """The columns people filter on are filled from the record; the whole record is in data."""
    row = decode_entry(
        ENTRY_ID,
        wire(
            b'{"mcp_id":"m","interaction_id":"i","method":"tools/call","tool":"t","session_id":"s",'
            b'"is_error":true,"duration_ms":3,"trace_id":"abc","timestamp":"2024-05-01T10:00:00+02:00"}'
        ),
        10_000,
    )
    assert (row.mcp_id, row.interaction_id, row.method, row.tool, row.session_id) == ("m", "i", "tools/call", "t", "s")
    assert (row.is_error, row.duration_ms, row.trace_id) == (True, 3.0, "abc")
    assert row.timestamp == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert Interaction.model_validate_json(row.data).tool == "t"
    assert row.stream_entry_id == ENTRY_ID


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"hello": b"world"}, "not_wire_format"),
        ({b"data": b"{}"}, "not_wire_format"),
        ({b"v": b"2", b"data": b'{"mcp_id":"a"}'}, "unsupported_version"),
        (wire(b"{not json"), "invalid_json"),
        (wire(b'{"mcp_id":"a\xff"}'), "invalid_json"),
        (wire(b"[1, 2]"), "not_json_object"),
        (wire(b'"text"'), "not_json_object"),
        (wire(b'{"mcp_id": 5}'), "invalid_record"),
        (wire(b'{"mcp_id":"a","request":"\\u0000"}'), "unstorable_value"),
        (wire(b'{"mcp_id":"a","request":"' + b"x" * 20_000 + b'"}'), "too_large"),
        (wire(b'{"mcp_id":"a","request":' + b"[" * 300 + b"]" * 300 + b"}"), "invalid_json"),
    ],
)
def test_decode_rejects_bad_entries_with_a_reason(fields: dict[bytes, bytes], reason: str) -> None:
    """Each kind of bad entry raises PermanentEntryError with a machine-readable reason and a message."""
    with pytest.raises(PermanentEntryError) as caught:
        decode_entry(ENTRY_ID, fields, 10_000)
    assert caught.value.reason == reason
    assert str(caught.value)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_not_turned_into_null(number: str) -> None:
    """NaN and Infinity cannot be stored as sent (JSONB refuses them), so they are refused naming the field."""
    data = f'{{"mcp_id": "a", "metadata": {{"x": [1, {number}]}}}}'.encode()
    with pytest.raises(PermanentEntryError, match=r"field 'metadata\.x\.1' is NaN or infinite") as caught:
        decode_entry(ENTRY_ID, wire(data), 10_000)
    assert caught.value.reason == "unstorable_value"
    with pytest.raises(InvalidRecordError, match=r"field 'request\.x'"):
        encode_record(validate_record({"mcp_id": "a", "request": {"x": float(number)}}))


def test_the_words_nan_and_infinity_inside_strings_are_ordinary_text() -> None:
    """Only the bare JSON tokens are non-finite numbers; the same letters inside a string are kept."""
    row = decode_entry(ENTRY_ID, wire(b'{"mcp_id": "a", "request": "NaN and Infinity"}'), 10_000)
    assert '"request": "NaN and Infinity"' in row.data


def test_the_publishers_json_is_stored_as_sent() -> None:
    """The data column gets the entry's JSON text unchanged, so 1e400 or 0.1000000000000000055 stay exact."""
    data = (
        b'{"mcp_id": "a", "interaction_id": "i", "timestamp": "2024-01-01T00:00:00Z",'
        b' "request": [1e400, 0.1000000000000000055]}'
    )
    assert decode_entry(ENTRY_ID, wire(data), 10_000).data == data.decode()
