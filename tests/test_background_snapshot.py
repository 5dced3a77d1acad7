"""BackgroundPublisher.publish's fast path for plain dicts: the caller's thread checks the record without the model
(`client.plain.check_valid`) and keeps its JSON as the snapshot; the background thread decodes that and encodes it.
It accepts only what the model accepts, and the thread's entry is the one the model's path makes of the record.
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

from benchmarks.records import records
from interactionlog import BackgroundPublisher, Publisher
from interactionlog.client import background
from interactionlog.client.background import _validated
from interactionlog.client.plain import check_valid
from interactionlog.errors import InvalidRecordError
from interactionlog.record import IDENTITY_FIELD, parse_timestamp, validate_record
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


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_the_snapshot_is_checked_as_the_model_checks_and_encodes_to_the_records_own_entry(
    encoder: BackgroundPublisher, record: dict[str, Any]
) -> None:
    """Any record: when the caller's check accepts it, the model accepts it too, and the entry the thread makes
    from the snapshot is the one it makes from the record (or the same refusal, such as a NUL character)."""
    record = {"interaction_id": "fixed", "timestamp": "2024-05-01T10:00:00Z", **record}  # defaults are made anew
    checked = check_valid(record)
    if checked is None:
        return
    try:
        validate_record(dict(record))
    except InvalidRecordError as error:
        pytest.fail(f"the caller's check accepted what the model refuses: {error}")
    body, _ = checked
    assert _outcome(lambda: encoder.encode(_validated(body, {}))) == _outcome(lambda: encoder.encode(record))


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
    declines them, or the thread's outcome from the snapshot (entry, or refusal and its message) is the model
    path's outcome from the record."""
    record = {"mcp_id": "m", "interaction_id": "i", "timestamp": "2024-05-01T10:00:00Z", "request": request_value}
    checked = check_valid(record)
    if checked is not None:
        validate_record(dict(record))
        assert _outcome(lambda: encoder.encode(_validated(checked[0], {}))) == _outcome(lambda: encoder.encode(record))


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
    call are sent, and the entry is the model path's entry for the record with those two values, but for the
    `identity exact` mark that only a caller's own timestamp earns."""
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
    expected = encoder.encode({**record, "interaction_id": interaction_id, "timestamp": timestamp})
    assert expected.pop(IDENTITY_FIELD) == b"exact"
    assert fields == expected


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
