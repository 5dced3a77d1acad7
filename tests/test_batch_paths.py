"""The worker's batch-at-once paths answer as their one-at-a-time originals: `spans.fast_rows` as `spans.fast_row`
for each record, `worker.decode.decode_entries` as `decode_entry` for each entry, `metrics.observe_ages` as one
`observe` per age, and commands packed by hiredis as redis-py packs them.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from redis.exceptions import DataError

from benchmarks.records import encode, records
from interactionlog.errors import PermanentEntryError
from interactionlog.metrics import observe_ages
from interactionlog.record import MAX_INT_DIGITS, entry_fields
from interactionlog.settings import DEFAULT_MAX_RECORD_BYTES
from interactionlog.spans import FAST_CHUNK, _chunk_rows, fast_row, fast_rows
from interactionlog.worker import decode as decode_module
from interactionlog.worker.decode import decode_entries, decode_entry
from interactionlog.worker.streams import _packing_with_hiredis
from tests.test_bad_input import CATALOGUE, NON_FINITE
from tests.test_spans import RECORDS

REALISTIC = [encode(record) for record in records(2 * FAST_CHUNK + 10)]
# Records that decode_lines would read as another number of values, or across a record's end, if the batch
# path trusted its count alone: two objects in one record, none, whitespace, a value split over two records.
MISALIGNING = [
    b'{"mcp_id":"a","interaction_id":"1","timestamp":"2024-05-01T10:00:00Z"}{"mcp_id":"b"}',
    b'{"mcp_id":"a","interaction_id":"2","timestamp":"2024-05-01T10:00:00Z"}\n{"mcp_id":"b"}',
    b"",
    b"   ",
    b' {"mcp_id":"a","interaction_id":"3","timestamp":"2024-05-01T10:00:00Z"}',
    b'{"mcp_id":"a","interaction_id":"4","timestamp":"2024-05-01T10:00:00Z","x":"',
    b'"}',
    b'{"mcp_id":"a","interaction_id":"5","timestamp":"2024-05-01T10:00:00Z","x":[',
    b"]}",
]
# Timestamps fast_row declines (not RFC 3339 as the model reads it, or out of range) among ordinary records.
ODD_TIMES = [
    b'{"mcp_id":"m","interaction_id":"t%d","timestamp":"%s"}' % (index, text)
    for index, text in enumerate(
        [b"2024-05-01", b"2024-05-01T10:00:00", b"2024-05-01 10:00:00Z", b"9999-12-31T23:59:59Z",
         b"0001-01-01T00:00:00+14:00", b"2024-05-01T10:00:00.1234567Z"]
    )
]  # fmt: skip
SECRETS = [
    b'{"mcp_id":"m","interaction_id":"s1","timestamp":"2024-05-01T10:00:00Z","request":{"password":"hunter2"}}',
    b'{"mcp_id":"m","interaction_id":"s2","timestamp":"2024-05-01T10:00:00Z","metadata":{"c":"4111111111111111"}}',
    b'{"mcp_id":"m","interaction_id":"s3","timestamp":"2024-05-01T10:00:00Z","request":{"token":"abc"},'
    b'"metadata":{"interactionlog.scrubbed":true}}',
]


def ids_for(datas: list[bytes]) -> list[str]:
    return [f"1700000000000-{index}" for index in range(len(datas))]


def assert_same_rows(datas: list[bytes], scrub: bool = True) -> None:
    """fast_rows gives, position by position, what fast_row gives for each record."""
    ids = ids_for(datas)
    expected = [fast_row(entry_id, data, scrub=scrub) for entry_id, data in zip(ids, datas, strict=True)]
    assert fast_rows(ids, datas, scrub=scrub) == expected


def test_realistic_batches_take_the_batch_path_and_give_the_per_record_rows() -> None:
    """The benchmark's records, over several chunks: every row as fast_row makes it, none left to the model."""
    assert_same_rows(REALISTIC)
    assert None not in fast_rows(ids_for(REALISTIC), REALISTIC, scrub=True)


@pytest.mark.parametrize("odd", MISALIGNING + ODD_TIMES + SECRETS, ids=range(len(MISALIGNING + ODD_TIMES + SECRETS)))
def test_an_odd_record_among_realistic_ones_changes_no_other_row(odd: bytes) -> None:
    """A record the batch path must not misread (split, merged, empty, a secret) sits among ordinary ones: every
    row is still fast_row's, at its own position."""
    for position in (0, 7, FAST_CHUNK - 1, FAST_CHUNK):
        datas = [*REALISTIC[:position], odd, *REALISTIC[position:]]
        assert_same_rows(datas)


# One record each check of the batch path is not sure of (before decoding, msgspec's refusal with a position or a
# byte offset, after decoding), each answered by fast_row alone: it leaves every one of them to the model.
ALONE = [
    b'{"mcp_id":"m","timestamp":"2024-05-01T10:00:00Z"}',  # no interaction_id: the model's defaults
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","duration_ms":"slow"}',  # msgspec: $[i]
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z",}',  # malformed: (byte n)
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","metadata":[1]}',
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","duration_ms":1e999}',
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","tool":"caf\xe9"}',  # msgspec: no offset
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","tool":"\\ud83d\\ude00"}',
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","request":'
    + b"[" * 300
    + b"]" * 300
    + b"}",
    b'{"mcp_id":"m","interaction_id":"a","timestamp":"2024-05-01T10:00:00Z","request":' + b"7" * 4301 + b"}",
    *ODD_TIMES,
]


@pytest.mark.parametrize("odd", ALONE, ids=range(len(ALONE)))
def test_a_record_the_batch_is_not_sure_of_is_answered_alone_and_the_rest_together(odd: bytes) -> None:
    """Among realistic records, the odd one is the only record of its chunk fast_row answers alone, and every row
    is fast_row's; before, it sent its whole chunk one record at a time."""
    assert fast_row("1-0", odd, scrub=True) is None, "the model's to judge"
    for position in (0, 7, FAST_CHUNK - 1):
        datas = [*REALISTIC[:position], odd, *REALISTIC[position : FAST_CHUNK - 1]]
        assert _chunk_rows(ids_for(datas), datas, True)[1] == {position}
        assert_same_rows(datas)


def test_several_records_refused_by_msgspec_are_answered_alone_one_after_another() -> None:
    """Records msgspec refuses at three places in one chunk: each is found by its position in msgspec's error,
    and the chunk's other records are still answered together."""
    datas = list(REALISTIC[:FAST_CHUNK])
    for position in (3, 90, 200):
        datas[position] = ALONE[1]
    assert _chunk_rows(ids_for(datas), datas, True)[1] == {3, 90, 200}
    assert_same_rows(datas)


def test_a_record_of_two_values_and_an_empty_one_do_not_shift_the_rows() -> None:
    """Two values in one record and none in another add up to as many values as records: the rows after them
    must still be their own records', not their neighbours'."""
    two = REALISTIC[10] + REALISTIC[11]  # each value a complete record: only the count could tell
    for empty in (b"", b"  "):
        assert_same_rows([REALISTIC[0], two, REALISTIC[1], empty, *REALISTIC[2:6]])


def test_records_split_across_neighbours_are_not_joined() -> None:
    """Halves of records that would make whole values only when read together stay two refusals."""
    datas = [REALISTIC[0], MISALIGNING[5], MISALIGNING[6], MISALIGNING[7], MISALIGNING[8], MISALIGNING[0], b""]
    assert_same_rows(datas)


def test_secrets_are_scrubbed_in_a_batch_as_one_by_one() -> None:
    """Payload secrets are scrubbed wherever they sit in the batch, a record stamped as scrubbed is left alone."""
    datas = [*REALISTIC[:100], SECRETS[0], *REALISTIC[100:150], SECRETS[1], SECRETS[2]]
    rows = fast_rows(ids_for(datas), datas, scrub=True)
    assert rows == [fast_row(entry_id, data, scrub=True) for entry_id, data in zip(ids_for(datas), datas, strict=True)]
    assert "[redacted:" in (rows[100] or pytest.fail("declined")).data
    assert "[redacted:" in (rows[151] or pytest.fail("declined")).data
    assert "hunter2" not in "".join(row.data for row in rows if row is not None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORDS, min_size=1, max_size=12), st.booleans())
def test_any_batch_of_records_gets_the_per_record_answers(batch: list[dict[str, Any]], scrub: bool) -> None:
    """Random records, valid or not, mixed with realistic ones: fast_rows is fast_row at every position."""
    datas = []
    for record in batch:
        try:
            datas.append(json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError):
            continue
    mixed = [*REALISTIC[:5], *datas, *REALISTIC[5:9]]
    assert_same_rows(mixed, scrub)


def outcome(entry_id: str, fields: dict[bytes, bytes], scrub: bool) -> object:
    try:
        return decode_entry(entry_id, fields, DEFAULT_MAX_RECORD_BYTES, scrub=scrub, identity_prefix="s1:")
    except PermanentEntryError as error:
        return {"reason": error.reason, "message": str(error)}


@pytest.mark.parametrize("scrub", [True, False])
def test_decode_entries_answers_as_decode_entry_for_every_catalogued_entry(scrub: bool) -> None:
    """The bad-input catalogue among realistic entries: each entry's row, or its reason and message, as
    decode_entry gives them, and the rows in entry order."""
    fields = [entry_fields(data, exact=True) for data in REALISTIC[:20]]
    fields[3:3] = [item.fields for item in [*CATALOGUE, *NON_FINITE]]
    ids = ids_for([b""] * len(fields))
    rows, errors = decode_entries(ids, fields, DEFAULT_MAX_RECORD_BYTES, scrub=scrub, identity_prefix="s1:")
    expected = [outcome(entry_id, entry, scrub) for entry_id, entry in zip(ids, fields, strict=True)]
    assert rows == [answer for answer in expected if not isinstance(answer, dict)]
    assert {position: {"reason": error.reason, "message": str(error)} for position, error in errors.items()} == {
        position: answer for position, answer in enumerate(expected) if isinstance(answer, dict)
    }
    assert errors, "the catalogue holds entries no worker stores"


@pytest.mark.parametrize(
    "odd",
    [{b"v": b"2", b"data": REALISTIC[0]}, {b"data": REALISTIC[0]}, {b"v": b"1", b"data": b"{" + b" " * 2000 + b"}"}],
    ids=["a newer wire version", "no version", "over the cap"],
)
def test_an_entry_outside_the_wire_format_or_the_cap_leaves_the_rest_of_its_batch_on_the_batch_path(
    odd: dict[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One such entry among 300 realistic ones gets decode_entry's refusal, and the other 300 still go through
    fast_rows together (before, the whole batch went one entry at a time), with the same rows."""
    given: list[int] = []
    original = fast_rows

    def counting(entry_ids: Any, datas: Any, *, scrub: bool) -> Any:
        given.append(len(datas))
        return original(entry_ids, datas, scrub=scrub)

    monkeypatch.setattr(decode_module, "fast_rows", counting)
    fields = [entry_fields(data, exact=True) for data in REALISTIC[:300]]
    fields.insert(150, odd)
    ids = ids_for([b""] * len(fields))
    rows, errors = decode_entries(ids, fields, 1000)
    assert given == [300]
    assert rows == [
        decode_entry(entry_id, entry, 1000) for entry_id, entry in zip(ids, fields, strict=True) if entry is not odd
    ]
    [(position, error)] = errors.items()
    assert position == 150
    with pytest.raises(PermanentEntryError) as expected:
        decode_entry(ids[150], odd, 1000)
    assert (error.reason, str(error)) == (expected.value.reason, str(expected.value))


def test_observing_ages_per_batch_fills_the_histogram_as_observing_each() -> None:
    """Ages around every bucket bound, future timestamps (age 0) and an empty batch: the same bucket counts and sum."""
    now = datetime.now(UTC)
    bounds = (0.005, 0.01, 0.5, 1, 30, 3600)
    rng = random.Random(7)
    for size in (0, 1, 5, 200):
        seconds = [rng.choice([*bounds, rng.uniform(-5, 5), rng.uniform(0, 5000)]) for _ in range(size)]
        timestamps = [now - timedelta(seconds=value) for value in seconds]
        batch = Histogram("batch", "b", registry=CollectorRegistry(), buckets=bounds)
        each = Histogram("each", "e", registry=CollectorRegistry(), buckets=bounds)
        observe_ages(batch, now, timestamps)
        for timestamp in timestamps:
            each.observe(max((now - timestamp).total_seconds(), 0.0))
        assert [bucket.get() for bucket in batch._buckets] == [bucket.get() for bucket in each._buckets]
        assert batch._sum.get() == pytest.approx(each._sum.get(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "args",
    [
        ("XACK", "s", "g", *(f"1700000000000-{index}" for index in range(50))),
        ("CLIENT SETNAME", "worker"),
        (b"CONFIG GET", b"maxmemory"),
        ("XADD", "s", "*", "v", 1, "d", 1.5, b"\x00\xff", bytearray(b"ab"), memoryview(b"cd")),
        ("SET", "k", "é"),
    ],
)
def test_commands_packed_by_hiredis_are_the_bytes_redis_py_packs(args: tuple[Any, ...]) -> None:
    """The worker's connections send what redis-py's own packing sends, byte for byte."""
    plain = aioredis.Connection()
    client = aioredis.Redis()
    _packing_with_hiredis(client)
    packed = client.connection_pool.connection_class()
    assert b"".join(packed.pack_command(*args)) == b"".join(map(bytes, plain.pack_command(*args)))


def test_arguments_hiredis_refuses_raise_redis_pys_error() -> None:
    """A bool or None is refused with redis-py's DataError, as without hiredis packing."""
    client = aioredis.Redis()
    _packing_with_hiredis(client)
    packed = client.connection_pool.connection_class()
    bad_values: list[Any] = [True, None]
    for bad in bad_values:
        with pytest.raises(DataError):
            packed.pack_command("SET", "k", bad)


def test_a_long_shallow_record_keeps_its_chunk_on_the_batch_path() -> None:
    """A record of over 300 brackets that nests 3 deep, among realistic ones: the chunk's rows are fast_row's,
    none left to the model (before, the bracket bound sent the whole chunk one by one, and that record to the
    model)."""
    files = [{"name": f"f{index}.txt", "size": index} for index in range(200)]
    long = json.dumps(
        {"mcp_id": "m", "interaction_id": "long", "timestamp": "2024-05-01T10:00:00Z", "response": {"files": files}}
    ).encode()
    datas = [*REALISTIC[:100], long, *REALISTIC[100:200]]
    assert_same_rows(datas)
    # Answered alone or together, the rows are the same: only the chunk's own account tells the two apart.
    assert _chunk_rows(ids_for(datas), datas, True)[1] == set()


def test_a_record_longer_than_the_longest_integer_keeps_its_chunk_on_the_batch_path() -> None:
    """A 6 KB record (longer than MAX_INT_DIGITS, so it could hold an integer the model refuses, but holds none)
    among realistic ones: the chunk is answered together; with a 4,301-digit integer in it, that record alone is
    answered by fast_row (which leaves it to the model), the others still together."""
    text = "word " * 1200
    plain = json.dumps(
        {"mcp_id": "m", "interaction_id": "long", "timestamp": "2024-05-01T10:00:00Z", "response": {"text": text}}
    ).encode()
    assert len(plain) > MAX_INT_DIGITS
    datas = [*REALISTIC[:100], plain, *REALISTIC[100:200]]
    assert_same_rows(datas)
    assert _chunk_rows(ids_for(datas), datas, True)[1] == set()
    huge = plain.replace(b'"response"', b'"request":{"n":' + b"7" * (MAX_INT_DIGITS + 1) + b'},"response"')
    datas = [*REALISTIC[:100], huge, *REALISTIC[100:200]]
    assert _chunk_rows(ids_for(datas), datas, True)[1] == {100}
    assert_same_rows(datas)
    assert fast_row("1700000000000-100", huge, scrub=True) is None
