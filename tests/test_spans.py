"""The fast paths of validation agree with the model: the worker's `spans.fast_row` yields exactly the row the
`Interaction` model path yields, or declines; the publisher's `client.plain.encode_plain` yields exactly the
entry `record.prepare_record` yields, or declines. Declining is always allowed; a different answer never is.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.records import encode, records
from interactionlog.client.plain import check_valid, encode_plain
from interactionlog.errors import InvalidRecordError, PermanentEntryError
from interactionlog.gateway import admission
from interactionlog.record import has_exact_identity, prepare_record, wire_fields
from interactionlog.scrub import DEFAULT_SCRUBBER, might_hold_secrets, payload_might_hold_secrets
from interactionlog.settings import DEFAULT_MAX_RECORD_BYTES
from interactionlog.spans import _bracket_counts, checked_columns, fast_row
from interactionlog.worker.decode import model_row
from tests.test_bad_input import CATALOGUE, NON_FINITE

ENTRY_ID = "1700000000000-7"
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)
ODD: st.SearchStrategy[Any] = st.sampled_from(
    [None, "", "x" * 65, "x" * 201, 1.5, -1, True, [], {}, "\x00", "\ud800", 10**30, "12"]
)
TIMESTAMPS = st.sampled_from(
    ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.123456+02:00", "2024-05-01t10:00:00Z", "2024-05-01 10:00:00Z",
     "2024-05-01T10:00:00.1234567Z", "2024-02-30T00:00:00Z", "0001-01-01T00:00:00+14:00", "2024-01-01T00:00:00",
     "9999-12-30T23:59:59.999999Z", "2024-06-30T23:59:60Z", 1_700_000_000, "1700000000"]
)  # fmt: skip
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "interaction_id": st.text(min_size=1, max_size=8) | ODD,
    "timestamp": TIMESTAMPS | ODD,
    "method": st.text(max_size=3) | ODD,
    "tool": st.text(max_size=3) | ODD,
    "session_id": st.text(max_size=3) | ODD,
    "request_id": st.integers() | st.text(max_size=3) | ODD,
    "request": JSON,
    "response": JSON,
    "is_error": st.booleans() | ODD,
    "error": JSON,
    "duration_ms": st.floats(allow_nan=False, allow_infinity=False) | st.integers() | ODD,
    "trace_id": st.text(max_size=70) | ODD,
    "span_id": st.text(max_size=40) | ODD,
    "client": st.fixed_dictionaries({}, optional={"name": st.text(max_size=3) | ODD, "nick": st.text()}) | ODD,
    "metadata": st.dictionaries(st.text(max_size=5), JSON, max_size=3) | ODD,
    "own_field": JSON,
}
RECORDS = st.fixed_dictionaries({"mcp_id": st.text(min_size=1, max_size=5) | ODD}, optional=FIELDS)


def model_or_reason(data: bytes, scrub: bool) -> object:
    """The model path's row, or the reason it refuses the record."""
    try:
        return model_row(ENTRY_ID, data, DEFAULT_MAX_RECORD_BYTES, scrub=scrub)
    except PermanentEntryError as error:
        return error.reason


def assert_agrees(data: bytes, scrub: bool = True) -> None:
    """fast_row declines `data` or returns the model path's row, value for value."""
    fast = fast_row(ENTRY_ID, data, scrub=scrub)
    if fast is not None:
        assert fast == model_or_reason(data, scrub), data[:300]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_the_worker_fast_path_stores_what_the_model_stores_or_declines(record: dict[str, Any]) -> None:
    """Any record, valid or not: the fast path's row is the model's row, or it leaves the record to the model."""
    try:
        data = json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return
    assert_agrees(data)


@pytest.mark.parametrize("item", [*CATALOGUE, *NON_FINITE], ids=lambda item: item.name)
def test_the_worker_fast_path_agrees_on_every_catalogued_bad_entry(item: Any) -> None:
    """The bad-input catalogue's records: each declined or stored as the model stores it."""
    data = item.fields.get(b"data")
    if data is not None:
        assert_agrees(data)


def test_the_suites_realistic_records_all_take_the_fast_path() -> None:
    """The benchmark's ~700-byte tool calls are what the fast path is for: none falls back to the model."""
    for record in records(300):
        data = encode(record)
        assert fast_row(ENTRY_ID, data, scrub=True) == model_row(ENTRY_ID, data, DEFAULT_MAX_RECORD_BYTES, scrub=True)


@pytest.mark.parametrize(
    "data",
    [
        b'{"mcp_id":"m","interaction_id":"i","timestamp":"2024-05-01T10:00:00Z","request":{"password":"hunter2"}}',
        b'{"mcp_id":"m","interaction_id":"i","timestamp":"2024-05-01T10:00:00Z","response":"Bearer abcdefghijklmnop"}',
        b'{"mcp_id":"m","interaction_id":"i","timestamp":"2024-05-01T10:00:00Z","metadata":{"card":"4111111111111111"}}',
        b'{"mcp_id":"m","interaction_id":"i","timestamp":"2024-05-01T10:00:00Z","request":{"\\u0074oken":"abc"}}',
    ],
)
def test_secrets_in_payloads_are_scrubbed_on_the_fast_path_as_on_the_model_path(data: bytes) -> None:
    """A payload holding a secret (a denied key, a bearer token, a card, a key spelled with escapes) is scrubbed."""
    fast = fast_row(ENTRY_ID, data, scrub=True)
    assert fast is not None
    assert fast == model_row(ENTRY_ID, data, DEFAULT_MAX_RECORD_BYTES, scrub=True)
    assert "[redacted:" in fast.data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_the_payload_pre_check_never_misses_what_the_whole_record_pre_check_finds(payload: bytes) -> None:
    """Over payload spans, the pre-check answers True whenever the original whole-text pre-check does."""
    if might_hold_secrets(DEFAULT_SCRUBBER, payload):
        assert payload_might_hold_secrets(DEFAULT_SCRUBBER, [payload])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.booleans())
def test_the_publishers_fast_path_publishes_what_the_model_path_publishes_or_declines(
    record: dict[str, Any], strict: bool
) -> None:
    """A plain dict: encode_plain's entry is the one prepare_record and wire_fields build, byte for byte."""
    record = {"interaction_id": "fixed", "timestamp": "2024-05-01T10:00:00Z", **record}  # generated ones differ
    fast = encode_plain(record, DEFAULT_MAX_RECORD_BYTES, strict=strict)
    if fast is None:
        return
    try:
        interaction, encoded = prepare_record(record, strict=strict)
    except InvalidRecordError as error:
        pytest.fail(f"the fast path accepted what the model refuses: {error}")
    assert fast == wire_fields(interaction, encoded, DEFAULT_MAX_RECORD_BYTES, exact=has_exact_identity(record))


def test_the_publishers_fast_path_leaves_python_objects_to_the_model() -> None:
    """Tuples, sets, bytes and datetimes are the model's to accept or refuse, never encoded on the fast path."""
    for value in [(1, 2), {1, 2}, b"x", datetime.datetime(2024, 5, 1)]:
        assert encode_plain({"mcp_id": "m", "request": value}, DEFAULT_MAX_RECORD_BYTES, strict=False) is None


class _Color(enum.StrEnum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _Plain(enum.Enum):
    ONE = 1


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        _Color.RED,
        _Level.HIGH,
        collections.OrderedDict(b=1, a=[1.5, "x"]),
        collections.defaultdict(list, {"k": [_Color.RED]}),
        type("Text", (str,), {})("sub"),
        type("Ratio", (float,), {})(0.25),
        [True, 1, 1.0, -0.0, 10**18, "é\u2028"],
    ],
    ids=["str enum", "int enum", "ordered dict", "defaultdict", "str subclass", "float subclass", "json scalars"],
)
def test_values_the_model_reads_as_json_take_the_fast_paths_with_the_models_bytes(value: object) -> None:
    """Subclasses of JSON's types, which the model's strict JSON value accepts, are encoded by both fast paths as
    the model path encodes them (they compare equal to the JSON read back)."""
    record = {"mcp_id": "m", "interaction_id": "i", "timestamp": "2024-05-01T10:00:00Z", "request": value}
    interaction, encoded = prepare_record(record, strict=False)
    assert encode_plain(record, DEFAULT_MAX_RECORD_BYTES, strict=False) == wire_fields(
        interaction, encoded, DEFAULT_MAX_RECORD_BYTES, exact=True
    )
    checked = check_valid(record)
    assert checked is not None
    assert checked[0] == encoded.encode()


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2},
        frozenset({1}),
        b"x",
        bytearray(b"x"),
        {1: "a"},
        {True: "a"},
        {("a",): 1},
        datetime.datetime(2024, 5, 1),
        datetime.date(2024, 5, 1),
        decimal.Decimal("1.5"),
        uuid.UUID(int=7),
        _Plain.ONE,
        _Point(1),
        float("nan"),
        float("inf"),
        [1, (2, 3)],
        {"a": {"b": {1, 2}}},
    ],
    ids=lambda value: type(value).__name__,
)
def test_python_objects_the_model_refuses_are_never_taken_by_the_fast_paths(value: object) -> None:
    """A value that to_json writes but the model refuses (or that cannot be stored) reads back as something else:
    both fast paths leave it to the model, which refuses it with its own message."""
    record = {"mcp_id": "m", "request": value}
    assert encode_plain(record, DEFAULT_MAX_RECORD_BYTES, strict=False) is None
    assert check_valid(record) is None


def test_nesting_deeper_than_the_model_allows_is_left_to_the_model() -> None:
    """Nesting the model refuses (about 250 deep) is never accepted by the fast path."""
    deep = b'{"mcp_id":"m","request":' + b"[" * 300 + b"]" * 300 + b"}"
    assert checked_columns(deep) is None


def _nested(shape: str, depth: int) -> Any:
    """A value `depth` levels deep: arrays, objects, or the two in turn."""
    value: Any = 1
    for level in range(depth):
        value = [value] if shape == "arrays" or (shape == "mixed" and level % 2) else {"a": value}
    return value


@pytest.mark.parametrize("field", ["request", "response", "error", "metadata"])
@pytest.mark.parametrize("shape", ["arrays", "objects", "mixed"])
def test_nesting_around_the_parsers_limit_gets_the_models_verdict_on_both_fast_paths(field: str, shape: str) -> None:
    """Depths either side of what the worker's JSON parser reads, in each payload field: the worker's fast path
    stores exactly the model's row or declines what the model refuses; the publisher's `check_valid` accepts
    exactly what the model path can publish. Records of 200 brackets or more that the parser reads take the fast
    paths (before, the bracket bound alone sent every one to the model)."""
    for depth in range(194, 204):
        value = _nested(shape, depth)
        if field == "metadata" and not isinstance(value, dict):
            value = {"a": value}
        record = {"mcp_id": "m", "interaction_id": "i", "timestamp": "2024-05-01T10:00:00Z", field: value}
        data = json.dumps(record, separators=(",", ":")).encode()
        model = model_or_reason(data, scrub=True)
        fast = fast_row(ENTRY_ID, data, scrub=True)
        if isinstance(model, str):  # refused: the parser's depth limit
            assert model == "invalid_json", (depth, model)
            assert fast is None, depth
            assert check_valid(record) is None, depth
        else:
            assert fast == model, depth
            assert check_valid(record) is not None, depth


def test_a_long_record_that_nests_shallowly_takes_the_fast_paths() -> None:
    """A tool result listing 150 objects (over 300 brackets, 3 levels deep) is stored by the worker's fast path as
    the model stores it, alone and among realistic records in one chunk, and published by `encode_plain` as the
    model's path publishes it."""
    files = [{"name": f"f{index}.txt", "size": index, "tags": ["a", "b"]} for index in range(150)]
    record = {
        "mcp_id": "files",
        "interaction_id": "long",
        "timestamp": "2024-05-01T10:00:00Z",
        "response": {"content": [{"type": "text", "text": "ok"}], "structuredContent": {"files": files}},
    }
    data = json.dumps(record, separators=(",", ":")).encode()
    assert data.count(b"[") + data.count(b"{") > 300
    fast = fast_row(ENTRY_ID, data, scrub=True)
    assert fast is not None
    assert fast == model_or_reason(data, scrub=True)
    fast_entry = encode_plain(record, DEFAULT_MAX_RECORD_BYTES, strict=False)
    assert fast_entry is not None
    interaction, encoded = prepare_record(record, strict=False)
    assert fast_entry == wire_fields(interaction, encoded, DEFAULT_MAX_RECORD_BYTES, exact=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.sampled_from([None, "m", "other"]), st.booleans())
def test_the_gateways_admit_what_the_model_admits_with_the_same_words(
    record: dict[str, Any], token_mcp_id: str | None, envelope: bool
) -> None:
    """`gateway.admission.admit` takes the worker's fast path first: for any record, with or without a token's
    mcp_id and a gRPC envelope, its answer (entry fields and interaction_id, or reason and message) is the one the
    model's path alone gives (the fast path switched off)."""
    try:
        data = json.dumps({"interaction_id": "fixed", "timestamp": "2024-05-01T10:00:00Z", **record}).encode()
    except (TypeError, ValueError):
        return
    fields = {"mcp_id": "m", "interaction_id": "fixed"} if envelope else None
    answer = admission.admit(data, max_record_bytes=DEFAULT_MAX_RECORD_BYTES, mcp_id=token_mcp_id, envelope=fields)
    fast_path = admission.fast_row  # type: ignore[attr-defined]  # the module's import, switched off below
    admission.fast_row = lambda *args, **kwargs: None  # type: ignore[attr-defined]
    try:
        model = admission.admit(data, max_record_bytes=DEFAULT_MAX_RECORD_BYTES, mcp_id=token_mcp_id, envelope=fields)
    finally:
        admission.fast_row = fast_path  # type: ignore[attr-defined]
    if isinstance(answer, admission.Refused) and isinstance(model, admission.Refused):
        # A record whose ids the gateway cannot read (a lone surrogate) is refused under a fresh UUID each time.
        assert (answer.error_type, answer.message) == (model.error_type, model.message)
    else:
        assert answer == model


def test_the_gateways_admit_the_suites_records_on_the_fast_path() -> None:
    """The benchmark's records, as a gateway receives them: each admitted without the model (a third of its cost)."""
    for data in map(encode, records(50)):
        fast = fast_row("0-0", data, scrub=False)
        assert fast is not None
        admitted = admission.admit(data, max_record_bytes=DEFAULT_MAX_RECORD_BYTES, mcp_id=fast.mcp_id)
        assert isinstance(admitted, admission.Admitted)
        assert admitted.interaction_id == fast.interaction_id


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda noise: b"{" + noise + b"}"), min_size=1, max_size=30))
def test_a_chunks_bracket_counts_are_each_records_own(datas: list[bytes]) -> None:
    """The nesting bound counts each record's brackets from one pass over the chunk; a record's count must be its
    own, also when a record holds raw newlines (JSON whitespace), which split the chunk's pass elsewhere."""
    expected = [data.count(b"[") + data.count(b"{") for data in datas]
    assert _bracket_counts(datas, b"\n".join(datas)) == expected
