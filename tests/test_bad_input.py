"""Bad input, catalogued and fuzzed: every kind of malformed entry ends in the dead-letter stream with a reason, or in
the table when its values can be stored faithfully, while the valid entries around it are stored; no worker crashes
and nothing stays pending. The publish helper refuses up front what a worker would dead-letter, naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from interactionlog import PublishError
from interactionlog.client.publisher import encode_fields
from interactionlog.errors import PermanentEntryError
from interactionlog.record import Interaction, encode_record, validate_record
from interactionlog.settings import DEFAULT_DEDUPE_WINDOW_HOURS, DEFAULT_MAX_RECORD_BYTES
from interactionlog.worker.dead_letters import original_fields
from interactionlog.worker.decode import decode_entry
from tests.faults.checker import group_state, wait_for
from tests.faults.scenario import DEAD_LETTERS, GROUP, STREAM, migrate
from tests.faults.workers import WorkerFleet

STORED = "stored"  # the entry's own row is in the table
DUPLICATE = "duplicate"  # acknowledged as a copy of a row already stored, neither stored again nor dead-lettered
REFUSED_TOOL = "refused-by-check"  # the test database's CHECK constraint refuses this tool name
CHECK_CONSTRAINTS = (
    f"ALTER TABLE interaction_logs ADD CONSTRAINT tool_allowed CHECK (tool IS DISTINCT FROM '{REFUSED_TOOL}')",
    "ALTER TABLE interaction_logs ADD CONSTRAINT duration_plausible CHECK (duration_ms < 1e6)",
)
# A worker dead-letters a record whose non-finite number could not be stored faithfully under one of these.
NOT_FAITHFUL = frozenset({"invalid_json", "invalid_record", "unstorable_value"})


def wire(data: str | bytes) -> dict[bytes, bytes]:
    """Entry fields in the wire format, around `data`."""
    return {b"v": b"1", b"data": data.encode() if isinstance(data, str) else data}


def record(**fields: Any) -> dict[bytes, bytes]:
    """Entry fields carrying the JSON of a record with `fields` (mcp_id defaults to 'bad-input')."""
    return wire(json.dumps({"mcp_id": "bad-input", **fields}))


def nested(depth: int) -> str:
    """A record whose request is `depth` nested arrays."""
    return f'{{"mcp_id": "bad-input", "interaction_id": "nested-{depth}", "request": {"[" * depth}{"]" * depth}}}'


@dataclass(frozen=True)
class Case:
    """One catalogued bad entry and what must become of it."""

    name: str
    fields: dict[bytes, bytes]
    outcomes: frozenset[str]  # acceptable: STORED, DUPLICATE, or a dead-letter reason (error_type)
    names: str | None = None  # a word the dead letter's error message must contain (the field at fault)
    stored_value: tuple[str, Any] | None = None  # (top-level key, value) a stored row's data must hold exactly


def case(
    name: str,
    fields: dict[bytes, bytes],
    *outcomes: str,
    names: str | None = None,
    stored_value: tuple[str, Any] | None = None,
) -> Case:
    """Shorthand for a Case."""
    return Case(name, fields, frozenset(outcomes), names, stored_value)


WRONG_TYPES: list[tuple[str, Any]] = [
    ("mcp_id", 42), ("mcp_id", ["a"]), ("mcp_id", None), ("interaction_id", 42), ("interaction_id", {}),
    ("timestamp", True), ("timestamp", []), ("method", 1), ("tool", {"a": 1}), ("session_id", False),
    ("request_id", 1.5), ("request_id", []), ("request_id", True), ("is_error", "yes"), ("is_error", 1),
    ("duration_ms", "12"), ("duration_ms", True), ("duration_ms", -1), ("trace_id", 1), ("span_id", 1.0),
    ("client", "claude"), ("client", {"name": 1}), ("client", {"nick": "x"}), ("metadata", []), ("metadata", "x"),
]  # fmt: skip
TOO_LONG: list[tuple[str, int]] = [
    ("mcp_id", 101), ("interaction_id", 101), ("method", 201), ("tool", 201), ("session_id", 201),
    ("request_id", 201), ("trace_id", 65), ("span_id", 33),
]  # fmt: skip
BAD_TIMESTAMPS: list[Any] = [
    "yesterday", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00", "", "0000-01-01T00:00:00Z",
    99_999_999_999_999_999, "2024-01-01T25:00:00Z", 1_700_000_000, "1700000000", "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00", "9999-12-31T23:00:00-05:00", "2024-01-01T00:00:00+24:00", "2024-06-30T23:59:60Z",
]  # fmt: skip
ODD_TIMESTAMPS = [
    "0001-01-02T00:00:00Z", "9999-12-30T23:59:59.999999Z", "1970-01-01T00:00:00Z",
    "2024-05-01 10:00:00.123456789+14:00",
]  # fmt: skip


def catalogue() -> list[Case]:
    """Every kind of bad entry the issue names, and the odd-but-valid ones that must be stored unchanged."""
    cases = [
        # Not the wire format.
        case("unknown fields only", {b"message": b"hello"}, "not_wire_format"),
        case("data without v", {b"data": b'{"mcp_id": "bad-input"}'}, "not_wire_format"),
        case("v without data", {b"v": b"1"}, "not_wire_format"),
        case("field names not UTF-8", {b"\xff\xfe": b"x"}, "not_wire_format"),
        case("wire version 2", {b"v": b"2", b"data": b'{"mcp_id": "bad-input"}'}, "unsupported_version"),
        case("version not UTF-8", {b"v": b"\xff", b"data": b'{"mcp_id": "bad-input"}'}, "unsupported_version"),
        case(
            "dead-letter field names kept as original.*",
            {b"v": b"9", b"data": b"{}", b"error": b"mine"},
            "unsupported_version",
        ),
        case("extra wire fields are ignored", {**record(interaction_id="extra-fields"), b"trace": b"x"}, STORED),
        # Not JSON.
        case("not JSON", wire("{not json"), "invalid_json"),
        case("empty data", wire(""), "invalid_json"),
        case("truncated JSON", wire('{"mcp_id": "bad-input"'), "invalid_json"),
        case("trailing garbage", wire('{"mcp_id": "bad-input"} x'), "invalid_json"),
        case("byte order mark", wire(b'\xef\xbb\xbf{"mcp_id": "bad-input"}'), "invalid_json"),
        case("single quotes", wire("{'mcp_id': 'bad-input'}"), "invalid_json"),
        case("invalid UTF-8 in a string", wire(b'{"mcp_id": "bad-\xff\xfe"}'), "invalid_json"),
        case("invalid UTF-8 in a key", wire(b'{"mcp_id": "bad-input", "metadata": {"\xc3\x28": 1}}'), "invalid_json"),
        case("lone surrogate escape", wire('{"mcp_id": "bad-input", "request": "\\ud800"}'), "invalid_json"),
        case(
            "number beyond 4300 digits", wire('{"mcp_id": "bad-input", "request": 1%s}' % ("0" * 5000)), "invalid_json"
        ),
        # JSON, but not an object.
        *(case(f"JSON {text}", wire(text), "not_json_object") for text in ("[]", "[1, 2]", "42", '"text"', "null")),
        case("JSON true", wire("true"), "not_json_object"),
        # Missing required fields, and missing ids that the entry id stands in for.
        case("empty object", wire("{}"), "invalid_record", names="mcp_id"),
        case("no mcp_id", wire('{"tool": "x"}'), "invalid_record", names="mcp_id"),
        case("empty mcp_id", record(mcp_id=""), "invalid_record", names="mcp_id"),
        case("only mcp_id: ids from the entry id", wire('{"mcp_id": "bad-input-minimal"}'), STORED),
        case(
            "a field of the publisher's own",
            record(interaction_id="own-field", tool_name="x"),
            STORED,
            stored_value=("tool_name", "x"),
        ),
        # Deep nesting and size.
        case("nesting 150 deep", wire(nested(150)), STORED),
        case("nesting 5000 deep", wire(nested(5000)), "invalid_json"),
        case("over max_record_bytes", record(interaction_id="big", request="x" * 300_000), "too_large"),
        case("just under max_record_bytes", record(interaction_id="almost", request="x" * 250_000), STORED),
        # Values PostgreSQL refuses although they are valid JSON.
        case(
            "NUL in a JSON value", record(interaction_id="nul", request="a\u0000b"), "unstorable_value", names="request"
        ),
        case(
            "NUL in a key",
            record(interaction_id="nul-key", metadata={"k\u0000": 1}),
            "unstorable_value",
            names="metadata",
        ),
        case("NUL in mcp_id", record(mcp_id="bad\u0000"), "unstorable_value", names="mcp_id"),
        case(
            "a CHECK constraint refuses the tool",
            record(interaction_id="check", tool=REFUSED_TOOL),
            "refused_by_database",
            names="tool_allowed",
        ),
        case(
            "a CHECK constraint refuses the duration",
            record(interaction_id="slow", duration_ms=5e6),
            "refused_by_database",
            names="duration_plausible",
        ),
        # The same record twice: the copy is a duplicate, not an error.
        case("a record", record(interaction_id="twice", tool="first"), STORED),
        case("the same record again", record(interaction_id="twice", tool="second"), DUPLICATE),
        # Text the COPY format must escape.
        case(
            "tabs, newlines, backslashes",
            record(interaction_id="copy", tool="a\tb\nc\\N\\.d"),
            STORED,
            stored_value=("tool", "a\tb\nc\\N\\.d"),
        ),
        case(
            "non-ASCII text",
            record(interaction_id="unicode", tool="résumé ✓ 🚀", request={"ключ": "値"}),
            STORED,
            stored_value=("tool", "résumé ✓ 🚀"),
        ),
    ]
    for index, (name, value) in enumerate(WRONG_TYPES):
        fields = {"interaction_id": f"type-{index}", name: value}
        cases.append(case(f"{name} = {value!r}", record(**fields), "invalid_record", names=name))
    for name, length in TOO_LONG:
        fields = {"interaction_id": f"long-{name}", name: "x" * length}
        cases.append(case(f"{name} of {length} characters", record(**fields), "invalid_record", names=name))
    for index, value in enumerate(BAD_TIMESTAMPS):
        cases.append(
            case(
                f"timestamp {value!r}",
                record(interaction_id=f"time-{index}", timestamp=value),
                "invalid_record",
                names="timestamp",
            )
        )
    for index, value in enumerate(ODD_TIMESTAMPS):
        cases.append(
            case(f"odd but valid timestamp {value!r}", record(interaction_id=f"odd-{index}", timestamp=value), STORED)
        )
    return cases


CATALOGUE = catalogue()
# Numbers a double cannot hold: dead-lettered, or stored with the very value sent, never as null.
NON_FINITE = [
    case("NaN", wire('{"mcp_id": "bad-input", "interaction_id": "nan", "request": NaN}'), *NOT_FAITHFUL),
    case(
        "Infinity", wire('{"mcp_id": "bad-input", "interaction_id": "inf", "metadata": {"x": Infinity}}'), *NOT_FAITHFUL
    ),
    case("-Infinity", wire('{"mcp_id": "bad-input", "interaction_id": "-inf", "error": [-Infinity]}'), *NOT_FAITHFUL),
    case(
        "1e400",
        wire('{"mcp_id": "bad-input", "interaction_id": "1e400", "request": 1e400}'),
        STORED,
        *NOT_FAITHFUL,
        stored_value=("request", Decimal("1e400")),
    ),
]


@dataclass
class Outcomes:
    """Where each published entry ended up."""

    dead: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # source entry id -> dead letter fields
    stored: dict[str, str] = field(default_factory=dict)  # stream entry id -> data as stored (JSON text)
    identities: set[tuple[str, str]] = field(default_factory=set)  # every stored (mcp_id, interaction_id)
    times: dict[tuple[str, str], list[datetime]] = field(default_factory=dict)  # identity -> stored timestamps


def outcomes(client: redis.Redis, database_url: str) -> Outcomes:
    """Read the dead-letter stream and the table."""
    found = Outcomes()
    for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTERS)):
        found.dead[fields[b"source_id"].decode()] = fields
    with psycopg.connect(database_url) as conn:
        for entry_id, data, mcp_id, interaction_id, moment in conn.execute(
            'SELECT stream_entry_id, data::text, mcp_id, interaction_id, "timestamp" FROM interaction_logs'
        ):
            found.stored[entry_id] = data
            found.identities.add((mcp_id, interaction_id))
            found.times.setdefault((mcp_id, interaction_id), []).append(moment)
    return found


def publish_raw(client: redis.Redis, entries: list[dict[bytes, bytes]]) -> list[str]:
    """XADD entries exactly as given, as a foreign publisher might; returns their ids."""
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(STREAM, cast(dict[Any, Any], fields))
    return [entry_id.decode() for entry_id in pipe.execute()]


def canary(index: int) -> dict[bytes, bytes]:
    """A valid record, the batch-mate every bad entry sits between."""
    return wire(json.dumps({"mcp_id": "canary", "interaction_id": f"canary-{index}", "tool": "ok"}))


def settled(client: redis.Redis) -> bool:
    """Nothing pending, nothing undelivered."""
    return group_state(client, STREAM, GROUP).settled


@pytest.fixture
def worker_fleet(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[WorkerFleet]:
    """A migrated table with the test's CHECK constraints, and workers stopped afterwards."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in CHECK_CONSTRAINTS:
            conn.execute(statement.encode())
    fleet = WorkerFleet(redis_url, database_url, tmp_path, concurrency=1)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def assert_healthy(fleet: WorkerFleet) -> None:
    """Every worker still runs, and none logged a crashed step or an escaped traceback."""
    assert all(worker.running for worker in fleet.workers), "a worker died"
    for name in ("consumer_step_crashed", "housekeeping_crashed"):
        found = list(fleet.events(name))
        assert not found, f"{name}: {found[0][1]}"
    assert not fleet.tracebacks()


def failures_for(cases: list[Case], ids: list[str], found: Outcomes) -> list[str]:
    """What went wrong with each case; empty when every one ended as it must."""
    failures = []
    for item, entry_id in zip(cases, ids, strict=True):
        expected = sorted(item.outcomes)
        letter = found.dead.get(entry_id)
        if letter is not None:
            reason = letter[b"error_type"].decode()
            error = letter[b"error"].decode()
            if reason not in item.outcomes:
                failures.append(f"{item.name}: dead-lettered as {reason} ({error[:150]}), expected {expected}")
            elif item.names and item.names not in error:
                failures.append(f"{item.name}: the dead letter's message does not name {item.names!r}: {error[:200]}")
            elif original_fields(letter) != item.fields:
                failures.append(f"{item.name}: the dead letter does not keep the entry's fields as published")
        elif entry_id in found.stored:
            if STORED not in item.outcomes:
                failures.append(f"{item.name}: stored, expected {expected}: {found.stored[entry_id][:150]}")
            elif item.stored_value and not faithful(found.stored[entry_id], *item.stored_value):
                failures.append(f"{item.name}: stored, but not faithfully: {found.stored[entry_id][:150]}")
        elif DUPLICATE not in item.outcomes:
            failures.append(f"{item.name}: neither stored nor dead-lettered, expected {expected}")
    return failures


def faithful(stored: str, key: str, value: Any) -> bool:
    """Whether the stored JSON holds exactly `value` under `key` (numbers compared as decimals, so 1e400 or NaN
    turned into null or a rounded float does not pass)."""
    data = json.loads(stored, parse_float=Decimal, parse_int=Decimal, parse_constant=Decimal)
    got = data.get(key)
    if isinstance(value, str) and value == "NaN":
        return isinstance(got, Decimal) and got.is_nan()
    return bool(got == value)


def run_cases(fleet: WorkerFleet, redis_url: str, database_url: str, cases: list[Case], batch_size: int) -> None:
    """Publish each case between two valid batch-mates, run a worker, and check where everything ended."""
    client = redis.Redis.from_url(redis_url)
    entries: list[dict[bytes, bytes]] = []
    for index, item in enumerate(cases):
        entries += [canary(2 * index), item.fields, canary(2 * index + 1)]
    ids = publish_raw(client, entries)
    fleet.start(batch_size=str(batch_size))
    wait_for(lambda: settled(client), timeout_s=90, what="every entry acknowledged")

    found = outcomes(client, database_url)
    canaries = {("canary", f"canary-{index}") for index in range(2 * len(cases))}
    assert canaries <= found.identities, f"batch-mates not stored: {sorted(canaries - found.identities)[:5]}"
    failures = failures_for(cases, ids[1::3], found)
    assert not failures, "\n".join(failures)
    assert len(found.dead) == sum(1 for entry_id in ids[1::3] if entry_id in found.dead), "only bad entries dead"
    assert_healthy(fleet)


@pytest.mark.parametrize("batch_size", [500, 3], ids=["one-batch", "small-batches"])
def test_every_catalogued_bad_entry_is_dead_lettered_with_a_reason_or_stored_faithfully(
    worker_fleet: WorkerFleet, redis_url: str, database_url: str, batch_size: int
) -> None:
    """Each catalogued entry is dead-lettered with its reason or stored unchanged; batch-mates stored; none pending."""
    run_cases(worker_fleet, redis_url, database_url, CATALOGUE, batch_size)


def test_non_finite_numbers_are_dead_lettered_rather_than_stored_as_null(
    worker_fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """NaN, Infinity and 1e400 are dead-lettered or stored exactly, never silently replaced by null."""
    run_cases(worker_fleet, redis_url, database_url, NON_FINITE, 500)


# --- fuzzing the worker with hypothesis --------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
field_names = st.sampled_from([*Interaction.model_fields, "tool_name", "extra"])
loose_records = st.dictionaries(field_names, json_values, max_size=6)
plausible_records = st.fixed_dictionaries(
    {"mcp_id": st.sampled_from(["fuzz-a", "fuzz-b"]), "interaction_id": st.text(min_size=1, max_size=12)},
    optional={
        "tool": st.text(max_size=30) | json_values,
        "timestamp": st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()) | st.text(max_size=30),
        "duration_ms": st.floats(allow_nan=False, allow_infinity=False) | json_values,
        "is_error": st.booleans() | json_values,
        "request": json_values,
        "client": st.fixed_dictionaries({}, optional={"name": st.text(max_size=8), "version": json_values}),
    },
)
raw_entries = st.one_of(
    st.dictionaries(st.binary(max_size=6), st.binary(max_size=30), min_size=1, max_size=3),
    st.binary(max_size=60).map(wire),
    json_values.map(lambda value: wire(json.dumps(value))),
    (loose_records | plausible_records).map(lambda value: wire(json.dumps(value))),
)


def predicted(entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, tuple[str, str] | None]:
    """The worker's own verdict on an entry: a dead-letter reason, or STORED with its identity."""
    try:
        row = decode_entry(entry_id, fields, DEFAULT_MAX_RECORD_BYTES)
    except PermanentEntryError as error:
        return error.reason, None
    if row.tool == REFUSED_TOOL or (row.duration_ms is not None and row.duration_ms >= 1e6):
        return "refused_by_database", None  # the test database's CHECK constraints
    return STORED, (row.mcp_id, row.interaction_id)


def verdict(
    entry_id: str, fields: dict[bytes, bytes], stored: dict[tuple[str, str], list[datetime]]
) -> tuple[str, tuple[str, str] | None]:
    """`predicted`, in publishing order, knowing the `stored` timestamps of each identity (updated with the
    entries predicted stored): an entry with a stored copy within the dedupe window is a DUPLICATE, whatever
    PostgreSQL would have said of its own row (README "Idempotency"; fuzzed ids such as "0" recur)."""
    expected, identity = predicted(entry_id, fields)
    if expected not in (STORED, "refused_by_database"):
        return expected, identity
    row = decode_entry(entry_id, fields, DEFAULT_MAX_RECORD_BYTES)
    key = (row.mcp_id, row.interaction_id)
    window = timedelta(hours=DEFAULT_DEDUPE_WINDOW_HOURS)
    if any(abs(row.timestamp - moment) <= window for moment in stored.get(key, [])):
        return DUPLICATE, key
    if expected == STORED:
        stored.setdefault(key, []).append(row.timestamp)
    return expected, identity


def test_fuzzed_entries_are_each_dead_lettered_or_stored_and_never_stall_the_worker(
    worker_fleet: WorkerFleet, redis_url: str, database_url: str
) -> None:
    """Fuzzed entries each end as the model predicts (dead letter or row), batch-mates stored, none pending."""
    client = redis.Redis.from_url(redis_url)
    worker_fleet.start(batch_size="50")
    rounds = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(st.lists(raw_entries, min_size=1, max_size=8))
    # A copy in the same batch after a row PostgreSQL refuses: stored in its place (once lost as a copy of it).
    @example([wire(json.dumps({"mcp_id": "fuzz-a", "duration_ms": 5.8e16, "interaction_id": "00"})),
              wire(json.dumps({"mcp_id": "fuzz-a", "interaction_id": "00"}))])  # fmt: skip
    # And before it: the refused one is then the copy, acknowledged as such.
    @example([wire(json.dumps({"mcp_id": "fuzz-b", "interaction_id": "00"})),
              wire(json.dumps({"mcp_id": "fuzz-b", "duration_ms": 1e6, "interaction_id": "00"}))])  # fmt: skip
    def check(batch: list[dict[bytes, bytes]]) -> None:
        mate = canary(next(rounds) + 10**6)
        stored_before = outcomes(client, database_url).times
        ids = publish_raw(client, [*batch, mate])
        wait_for(lambda: settled(client), timeout_s=60, what="the fuzzed batch acknowledged")
        found = outcomes(client, database_url)
        assert ("canary", json.loads(mate[b"data"])["interaction_id"]) in found.identities
        for entry_id, fields in zip(ids, batch, strict=False):
            expected, identity = verdict(entry_id, fields, stored_before)
            if expected == DUPLICATE:
                assert entry_id not in found.dead, f"{fields!r}: a copy, dead-lettered: {found.dead.get(entry_id)}"
                assert identity in found.identities
            elif expected == STORED:
                assert entry_id not in found.dead, f"{fields!r}: dead-lettered: {found.dead.get(entry_id)}"
                assert identity in found.identities, f"{fields!r}: not stored"
            else:
                assert entry_id in found.dead, f"{fields!r}: expected a dead letter ({expected})"
                assert found.dead[entry_id][b"error_type"].decode() == expected

    check()
    assert_healthy(worker_fleet)


# --- the publish helper refuses what a worker would dead-letter ----------------------------------------------------


def record_cases() -> list[Case]:
    """The catalogued entries that carry a JSON object a caller could pass to the helper as a dict."""
    found = []
    for item in CATALOGUE:  # NON_FINITE has a test of its own below
        data = item.fields.get(b"data")
        if item.fields.get(b"v") != b"1" or data is None:
            continue
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict) and item.outcomes & {"invalid_record", "unstorable_value", "too_large"}:
            found.append(item)
    return found


@pytest.mark.parametrize("item", record_cases(), ids=lambda item: item.name)
def test_the_publish_helper_refuses_what_a_worker_would_dead_letter_naming_the_field(item: Case) -> None:
    """The publish helper refuses a record a worker would dead-letter, with a PublishError naming the field."""
    value = json.loads(item.fields[b"data"])
    with pytest.raises(PublishError) as raised:
        encode_fields(value, DEFAULT_MAX_RECORD_BYTES)
    assert item.names is None or item.names in str(raised.value)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"mcp_id": "a", "request": float("nan")}, "request"),
        ({"mcp_id": "a", "response": {"score": float("inf")}}, "response"),
        ({"mcp_id": "a", "metadata": {"ratio": float("-inf")}}, "metadata"),
        ({"mcp_id": "a", "error": [1.0, float("nan")]}, "error"),
    ],
    ids=["nan-request", "inf-response", "inf-metadata", "nan-error"],
)
def test_the_publish_helper_refuses_non_finite_numbers_instead_of_storing_null(
    value: dict[str, Any], where: str
) -> None:
    """The publish helper refuses NaN and ±Infinity naming the field, instead of sending null in their place."""
    with pytest.raises(PublishError, match=where):
        encode_fields(value, DEFAULT_MAX_RECORD_BYTES)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"mcp_id": "a", "request": "lone \udfff surrogate"}, "request"),
        ({"mcp_id": "a", "metadata": {"key \ud800": 1}}, "metadata"),
        ({"mcp_id": "a", "request": 10**5000}, "request"),
    ],
    ids=["surrogate-in-value", "surrogate-in-key", "int-of-5001-digits"],
)
def test_the_publish_helper_refuses_what_the_worker_cannot_decode(value: dict[str, Any], where: str) -> None:
    """The helper refuses lone surrogates and >4300-digit integers with a PublishError naming the field."""
    with pytest.raises(PublishError, match=where):
        encode_fields(value, DEFAULT_MAX_RECORD_BYTES)


def _nested(depth: int, *, objects: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value} if objects else [value]
    return value


@pytest.mark.parametrize("objects", [False, True], ids=["arrays", "objects"])
@pytest.mark.parametrize("depth", [150, 198, 199, 200, 201, 230, 254, 300])
def test_the_publish_helper_refuses_nesting_the_worker_cannot_read_and_says_so(depth: int, objects: bool) -> None:
    """Nesting pydantic-core's JSON parser refuses (the worker reads entries with it: 200 levels) is refused when
    published, naming the field and the limit, as the worker would dead-letter it; anything shallower is sent and
    stored. Beyond about 255 levels the JSON writer itself stops: the same error, not one about Unicode."""
    value = {"mcp_id": "a", "interaction_id": "deep", "response": _nested(depth, objects=objects)}
    try:
        Interaction.model_validate_json(json.dumps(value))
        worker_reads = True
    except ValidationError:
        worker_reads = False
    if worker_reads:
        fields = encode_fields(value, DEFAULT_MAX_RECORD_BYTES)
        stored = decode_entry("1700000000000-0", fields, DEFAULT_MAX_RECORD_BYTES)
        assert json.loads(stored.data)["response"] == value["response"]
        return
    if depth > 254:  # deeper than pydantic validates Python values: its own message, naming the path
        with pytest.raises(
            PublishError,
            match=r"field 'response\.0\.0[^']*': .*maximum validation depth|"
            r"field 'response\.k\.k[^']*': .*maximum validation depth",
        ):
            encode_fields(value, DEFAULT_MAX_RECORD_BYTES)
        return
    with pytest.raises(PublishError, match=r"field 'response' nests deeper than the worker's JSON parser reads"):
        encode_fields(value, DEFAULT_MAX_RECORD_BYTES)
    with pytest.raises(PublishError, match=r"field 'response' nests deeper"):
        encode_record(validate_record(value))


@pytest.mark.parametrize("objects", [False, True], ids=["arrays", "objects"])
def test_nesting_too_deep_for_the_json_writer_is_named_as_nesting_not_as_a_lone_surrogate(objects: bool) -> None:
    """255 levels ending in an empty container: the model validates the Python values, and pydantic-core's JSON
    writer stops ("Maximum serialization depth exceeded"). That error was reported as text that is not valid
    Unicode; it is the nesting, and the message says so, on both paths from Python values."""
    value: Any = {} if objects else []
    for _ in range(254):
        value = {"k": value} if objects else [value]
    record = {"mcp_id": "a", "interaction_id": "deep", "response": value}
    with pytest.raises(PublishError, match=r"field 'response' nests deeper than the worker's JSON parser reads"):
        encode_fields(record, DEFAULT_MAX_RECORD_BYTES)
    with pytest.raises(PublishError, match=r"field 'response' nests deeper") as raised:
        encode_record(validate_record(record))
    assert "Unicode" not in str(raised.value)


texts = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates included
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
helper_records = st.fixed_dictionaries(
    {"mcp_id": st.text(min_size=1, max_size=5)},
    optional=dict.fromkeys(("request", "response", "error", "tool", "timestamp", "duration_ms"), any_json)
    | {"metadata": st.dictionaries(texts, any_json, max_size=3)},
)


@settings(max_examples=300, deadline=None)
@given(helper_records)
@example({"mcp_id": "a", "request": float("nan")})
@example({"mcp_id": "a", "request": "\udfff"})
@example({"mcp_id": "a", "request": {"Csrf": False}, "metadata": {"token": 1}})  # a secret's name, scrubbed
def test_what_the_publish_helper_accepts_a_worker_stores_unchanged(value: dict[str, Any]) -> None:
    """What the publish helper accepts, a worker decodes without dead-lettering and stores unchanged."""
    try:
        fields = encode_fields(value, DEFAULT_MAX_RECORD_BYTES)
    except PublishError:
        return
    exact = json.loads(decode_entry("1700000000000-0", fields, DEFAULT_MAX_RECORD_BYTES, scrub=False).data)
    # With the worker's scrubbing pass (its default), a value under a secret's name (a generated key may be
    # "Csrf") is replaced by a marker: that, and the note counting them, is all it may change.
    scrubbed = json.loads(decode_entry("1700000000000-0", fields, DEFAULT_MAX_RECORD_BYTES).data)
    for name in ("request", "response", "error", "metadata"):
        if value.get(name) is not None:
            assert same_json(exact.get(name), value[name]), f"{name} changed: {value[name]!r} -> {exact.get(name)!r}"
            kept = scrubbed.get(name)
            if name == "metadata" and "interactionlog.redacted" not in value[name]:
                kept = {key: item for key, item in kept.items() if key != "interactionlog.redacted"}
            assert same_json(kept, value[name], redacted_too=True), f"{name} scrubbed beyond secrets: {kept!r}"


def same_json(stored: Any, sent: Any, *, redacted_too: bool = False) -> bool:
    """Equality of a JSON value with what was sent; a non-finite float is equal to nothing JSON can hold. With
    `redacted_too`, a scrubbing marker ("[redacted:...]") stands for any value."""
    if redacted_too and isinstance(stored, str) and stored.startswith("[redacted:"):
        return True
    if isinstance(sent, float) and not math.isfinite(sent):
        return False
    if isinstance(sent, dict):
        return (
            isinstance(stored, dict)
            and stored.keys() == sent.keys()
            and all(same_json(stored[key], item, redacted_too=redacted_too) for key, item in sent.items())
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(sent)
            and all(same_json(a, b, redacted_too=redacted_too) for a, b in zip(stored, sent, strict=True))
        )
    return bool(stored == sent and type(stored) is type(sent)) or (
        isinstance(sent, float) and isinstance(stored, int | float) and float(stored) == sent
    )
