"""The fast path of validation: a record's JSON checked straight from its bytes, payloads left as raw JSON spans.

`Interaction.model_validate_json` builds a Python object for every value of the record, `request` and
`response` included, only for the worker to store the same text (issue 14: the data column holds the JSON
the publisher sent). Here msgspec checks the fields that become columns, and keeps `request`, `response`,
`error` and `metadata` as `msgspec.Raw` spans: their bytes are checked to be JSON and nothing is built. The
worker (`fast_row`) and the publisher's `publish_many` of plain dicts (`client.plain`) both use it.

This path only ever says yes when the model would: it answers None (take the model's path) whenever it is not
sure, so every refusal, its reason and its message still come from the model. Not sure means: msgspec refuses
the record (wrong type, too long, null where the model wants a value, not JSON, NaN, ...); the bytes are not
UTF-8; they hold an escape the model treats specially (U+0000, a surrogate: `\\u0000`, `\\ud800`), an integer
longer than `record.MAX_INT_DIGITS` or more brackets than `MAX_FAST_BRACKETS` (pydantic refuses nesting deeper
than about 250, msgspec later); `duration_ms` is not finite; `timestamp` is not in `_COMMON_TIMESTAMP`'s shape;
`metadata` is not an object. The worker also leaves records without `interaction_id` or `timestamp` to the model
path, which splices their defaults in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, cast

import msgspec

from .record import MAX_INT_DIGITS, MAX_TIMESTAMP, MIN_TIMESTAMP
from .rows import StoredRow
from .scrub import DEFAULT_SCRUBBER, SCRUBBED_STAMP, payload_might_hold_secrets, scrub_stored_json

# The model's constraints (record.Interaction), restated for msgspec; tests/test_bad_input.py and
# tests/test_spans.py hold the two to the same verdicts.
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_NO_PAYLOAD = msgspec.Raw()
_NULL = b"null"


class _Client(msgspec.Struct, forbid_unknown_fields=True):
    name: _ShortText | None = None
    version: _ShortText | None = None


class Columns(msgspec.Struct):
    """The record's fields as msgspec validates them; unknown fields are skipped (checked to be JSON, kept in
    the text). Missing ids decode as UNSET (a null is refused, as the model refuses it)."""

    mcp_id: _Identifier
    interaction_id: _Identifier | msgspec.UnsetType = msgspec.UNSET
    timestamp: str | msgspec.UnsetType = msgspec.UNSET
    method: _ShortText | None = None
    tool: _ShortText | None = None
    session_id: _ShortText | None = None
    request_id: Annotated[str, msgspec.Meta(max_length=200)] | int | None = None
    request: msgspec.Raw = _NO_PAYLOAD
    response: msgspec.Raw = _NO_PAYLOAD
    is_error: bool | None = None
    error: msgspec.Raw = _NO_PAYLOAD
    duration_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None
    trace_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    span_id: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    client: _Client | None = None
    metadata: msgspec.Raw = _NO_PAYLOAD


_DECODER = msgspec.json.Decoder(Columns)
# Fewer brackets than this bounds the nesting well below where pydantic (about 250) or msgspec refuse it.
MAX_FAST_BRACKETS = 200
# `\u0000` (refused, naming the field) and `\ud800`-`\udfff` (lone surrogates are refused; pairs are fine, but
# telling them apart is the model's job), in either case; a preceding escaped backslash only over-matches.
_SPECIAL_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_BACKSLASH = ord("\\")
# Anchored at the start of a digit run, so each run is tried once: linear (record._LONG_DIGITS says why).
_LONG_DIGITS = re.compile(rb"(?<!\d)\d{%d}" % (MAX_INT_DIGITS + 1))
# RFC 3339 as Python's datetime.fromisoformat reads it the same as record.parse_timestamp does (checked over
# 200,000 random texts): `T`, seconds below 60, up to 6 fraction digits, `Z` or an offset below 24:00.
_COMMON_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII
)


def checked_columns(data: bytes) -> Columns | None:
    """`data`'s fields as the model would accept them (its ids possibly UNSET), or None when the model must decide
    (see the module docstring). `data` must already be within max_record_bytes. Its timestamp, when present, is
    checked with `fast_timestamp` by the caller."""
    if (
        (_BACKSLASH in data and _SPECIAL_ESCAPE.search(data))  # an int test is one memchr, a bytes one is not
        or data.count(b"[") + data.count(b"{") >= MAX_FAST_BRACKETS
        or (len(data) > MAX_INT_DIGITS and _LONG_DIGITS.search(data))
    ):
        return None
    try:
        columns = _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    duration_ms = columns.duration_ms
    if duration_ms is not None and not math.isfinite(duration_ms):
        return None
    metadata = columns.metadata
    if metadata and metadata != _NULL and not bytes(metadata).startswith(b"{"):
        return None  # the model wants an object
    return columns


def fast_row(entry_id: str, data: bytes, *, scrub: bool) -> StoredRow | None:
    """The row for `data` (an entry's record, already within max_record_bytes), or None when the model must
    decide (see the module docstring). With `scrub`, a record whose payload spans may hold a secret is scrubbed
    by `scrub.scrub_stored_json`, as on the model path."""
    columns = checked_columns(data)
    if columns is None:
        return None
    interaction_id, timestamp_text = columns.interaction_id, columns.timestamp
    if interaction_id is msgspec.UNSET or timestamp_text is msgspec.UNSET:
        return None
    timestamp = fast_timestamp(timestamp_text)
    if timestamp is None:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    # The stamp goes in metadata (client.background): looking there only is cheaper than over the whole record.
    if scrub and SCRUBBED_STAMP not in bytes(columns.metadata):
        spans = (columns.request, columns.response, columns.error, columns.metadata)
        if payload_might_hold_secrets(DEFAULT_SCRUBBER, spans):
            text = scrub_stored_json(text)
    return _new_row(
        StoredRow,
        (
            columns.mcp_id,
            interaction_id,
            timestamp,
            columns.method,
            columns.tool,
            columns.session_id,
            columns.is_error,
            columns.duration_ms,
            columns.trace_id,
            text,
            entry_id,
        ),
    )


# A named tuple's own constructor is a Python function (generated from a string) around tuple.__new__; calling
# tuple.__new__ straight skips that frame, once per row.
_new_row = cast(Callable[[type[StoredRow], tuple[object, ...]], StoredRow], tuple.__new__)
_from_isoformat = datetime.fromisoformat


def fast_timestamp(text: str) -> datetime | None:
    """`text` as record.parse_timestamp reads it, for the common shape; None for anything else."""
    if _COMMON_TIMESTAMP.fullmatch(text) is None:
        return None
    try:
        parsed = _from_isoformat(text)
        in_range = MIN_TIMESTAMP <= parsed <= MAX_TIMESTAMP
    except (ValueError, OverflowError):
        return None
    return parsed if in_range else None
