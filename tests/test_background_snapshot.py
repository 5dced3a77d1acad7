"""BackgroundPublisher.publish's fast path for plain dicts: the caller's thread checks the record without the model
(`client.plain.check_valid`) and keeps its JSON as the snapshot; the background thread sends that JSON as it is.
It accepts only what the model accepts; the thread's entry is the one `Publisher` makes of the same dict (the
caller's own JSON, the scrubbed note in its metadata), and it holds the record the model's path would store; what
the thread cannot send as it is (a possible secret, a size over the cap, text only the model may judge) takes the
model's path, with the model path's outcome.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from pydantic_core import to_json

from benchmarks.records import records
from interactionlog import BackgroundPublisher, Publisher
from interactionlog.client import background
from interactionlog.client.plain import check_valid
from interactionlog.client.publisher import encode_fields
from interactionlog.errors import InvalidRecordError
from interactionlog.record import (
    DATA_FIELD,
    IDENTITY_FIELD,
    Interaction,
    entry_fields,
    parse_timestamp,
    splice_fields,
    validate_record,
)
from tests.pipeline import stream_entries
from tests.test_spans import RECORDS


@pytest.fixture(scope="module")
def encoder() -> Iterator[BackgroundPublisher]:
    """A background publisher used for its `encode` only (its sender never connects: nothing is queued)."""
    publisher = BackgroundPublisher(Publisher(None, stream="snapshot"), spool=None)
    yield publisher
    publisher.close()


def _first_entry(url: str) -> dict[bytes, bytes]:
    """The fields of the stream's first entry."""
    client = redis.Redis.from_url(url)
    try:
        (_, fields), *_ = stream_entries(client)
    finally:
        client.close()
    return fields


def _outcome(encode: Callable[[], object]) -> object:
    """The entry `encode` returns, or the type and text of what it raises."""
    try:
        return encode()
    except Exception as error:  # compared, not handled
        return type(error), str(error)


def _check_the_threads_entry(encoder: BackgroundPublisher, record: dict[str, Any]) -> None:
    """When the caller's check accepts `record` (with its interaction_id and timestamp), the model accepts it too,
    and the thread's outcome from the snapshot is either the entry `Publisher` makes of the same dict (the note in
    its metadata), holding the record the model's path would store, or, when the thread leaves it to the model's path,
    that path's outcome from the record (entry, or refusal and its message)."""
    noted = encoder._noted(record)
    checked = check_valid(noted)
    if checked is None:
        return
    try:
        validate_record(dict(record))
    except InvalidRecordError as error:
        pytest.fail(f"the caller's check accepted what the model refuses: {error}")
    item = background._checked_record(*checked)
    assert not item.defaults
    entry = encoder._encode_checked(item)
    if entry is None:
        assert _outcome(lambda: encoder.encode(item.validated())) == _outcome(lambda: encoder.encode(record))
        return
    assert entry == encode_fields(noted, encoder.sender.max_record_bytes)
    by_model = encoder.encode(record)
    assert entry[IDENTITY_FIELD] == by_model[IDENTITY_FIELD] == b"exact"
    # The same record, read by the model; the JSON differs only as written: key order, a timestamp's own text, a
    # number's form (5 for 5.0), and top-level nulls, which the caller's JSON keeps and the model's path drops.
    stored = Interaction.model_validate_json(entry[DATA_FIELD]).model_dump(exclude_none=True)
    assert stored == Interaction.model_validate_json(by_model[DATA_FIELD]).model_dump(exclude_none=True)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_the_snapshot_is_checked_as_the_model_checks_and_sent_as_the_dict_was_written(
    encoder: BackgroundPublisher, record: dict[str, Any]
) -> None:
    """Any record: see `_check_the_threads_entry`."""
    _check_the_threads_entry(encoder, {"interaction_id": "fixed", "timestamp": "2024-05-01T10:00:00Z", **record})


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "request_value",
    [float("nan"), float("inf"), 10**5000, "a\x00b", "\ud800", _nested(150), _nested(300), {"k": 1.5e300}],
    ids=["nan", "infinity", "huge int", "nul", "surrogate", "nested 150", "nested 300", "large float"],
)
def test_values_the_model_accepts_but_cannot_store_have_the_same_outcome_either_way(
    encoder: BackgroundPublisher, request_value: object
) -> None:
    """Values that are valid to the model but refused when encoded (or on the edge of a limit): the fast path
    declines them, or the thread's outcome from the snapshot is as `_check_the_threads_entry` says; those the
    encoding refuses never leave the thread as they are."""
    record = {"mcp_id": "m", "interaction_id": "i", "timestamp": "2024-05-01T10:00:00Z", "request": request_value}
    _check_the_threads_entry(encoder, record)
    checked = check_valid(encoder._noted(record))
    if isinstance(request_value, str):  # a NUL, a lone surrogate
        assert checked is None or encoder._encode_checked(background._checked_record(*checked)) is None


def test_the_suites_realistic_records_are_checked_without_the_model() -> None:
    """The benchmark's ~700-byte tool calls, and one with no id or timestamp, all take the fast path."""
    for record in [*records(300), {"mcp_id": "m", "method": "tools/call", "request": {"a": 1}}]:
        assert check_valid(record) is not None


def test_a_record_changed_after_publish_is_sent_as_it_was_published(redis_url: str) -> None:
    """publish() keeps a copy: a nested value the caller changes afterwards does not reach the stream."""
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=False)
    request: dict[str, Any] = {"query": "before", "tags": ["a"]}
    try:
        publisher.publish({"mcp_id": "m", "interaction_id": "i1", "request": request})
        request["query"] = "after"
        request["tags"].append("b")
        assert publisher.flush(10)
    finally:
        publisher.close()
    fields = _first_entry(redis_url)
    assert json.loads(fields[b"data"])["request"] == {"query": "before", "tags": ["a"]}


def test_defaults_made_in_the_callers_thread_are_the_ones_sent(redis_url: str, encoder: BackgroundPublisher) -> None:
    """A record without interaction_id and timestamp: the id publish() returns and a timestamp taken during the
    call are sent, spliced ahead of the record's own JSON as `Publisher` splices them, and the entry is not marked
    `identity exact`, which only a caller's own timestamp earns."""
    record = {"mcp_id": "m", "method": "tools/call", "request": {"a": [1, 2.5, None]}, "own": True}
    publisher = BackgroundPublisher.from_url(redis_url, spool_dir=False)
    try:
        before = datetime.now(UTC)
        interaction_id = publisher.publish(record)
        after = datetime.now(UTC)
        assert publisher.flush(10)
    finally:
        publisher.close()
    fields = _first_entry(redis_url)
    sent = json.loads(fields[b"data"])
    assert sent["interaction_id"] == interaction_id
    timestamp = parse_timestamp(sent["timestamp"])
    assert before <= timestamp <= after
    # The publisher made the timestamp: the entry is not marked `identity exact` (record.has_exact_identity), which
    # the same record with a timestamp written by its caller would be.
    assert IDENTITY_FIELD not in fields
    # The record's own JSON (the scrubbed note in its metadata), the two defaults spliced in ahead of it, as
    # `Publisher` sends a dict without them.
    own = to_json(encoder._noted(record)).decode()
    defaults = {"interaction_id": interaction_id, "timestamp": sent["timestamp"]}
    assert fields == entry_fields(splice_fields(own, defaults).encode(), exact=False)


@pytest.mark.parametrize("value", [(1, 2), {1, 2}, b"x", {1: "a"}], ids=["tuple", "set", "bytes", "int key"])
def test_python_objects_the_model_refuses_still_raise_in_the_callers_thread(value: object) -> None:
    """A value JSON could carry once converted (a tuple, a set, bytes, an int key) is the model's to judge: it
    refuses them, so publish() raises, as it did before the fast path."""
    publisher = BackgroundPublisher(Publisher(None, stream="snapshot"), spool=None)
    try:
        with pytest.raises(InvalidRecordError, match="request"):
            publisher.publish({"mcp_id": "m", "request": value})
    finally:
        publisher.close()


def test_generated_interaction_ids_are_the_text_of_a_version_4_uuid_of_the_same_random_bits() -> None:
    """fast_interaction_id writes what `str(uuid.UUID(int=bits, version=4))` writes for the bits it draws."""
    try:
        for seed in range(2000):
            background._ids.seed(seed)
            made = background.fast_interaction_id()
            background._ids.seed(seed)
            assert made == str(uuid.UUID(int=background._ids.getrandbits(128), version=4))
    finally:
        background._ids.seed()  # from the OS again, as at import
    assert uuid.UUID(made).version == 4


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_infinities_anywhere_are_left_to_the_model(value: float) -> None:
    """NaN and infinities (accepted by the model, refused by the encoding with a message naming the field) never
    pass the caller's check, wherever they are: the model's path refuses them on the thread, as before."""
    records: list[dict[str, Any]] = [
        {"mcp_id": "m", "request": {"x": [1, value]}},
        {"mcp_id": "m", "duration_ms": value},
        {"mcp_id": "m", "metadata": {"k": value}},
        {"mcp_id": "m", "own": value},
    ]
    for record in records:
        assert check_valid(record) is None
