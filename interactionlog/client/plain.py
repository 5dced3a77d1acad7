"""The publisher's fast path for plain records: a dict of JSON values encoded and checked without the model.

`record.prepare_record` validates a dict with the `Interaction` model (pydantic, in Python mode: 8 us for a
700-byte record, most of `publish_many`'s time) before encoding it. A dict whose values the model reads as the JSON
they are written as (`_json_of`: pydantic-core's `to_json`, as the model path writes it, read back by msgspec and
equal to the dict) has its top-level fields checked by msgspec straight from the dict (`check_valid`). Anything
else (a datetime, a tuple, a set, NaN, an invalid value, strict mode meeting an unknown field, ...) answers None,
and the caller takes the model's path, which accepts or refuses it with the model's message: this path only ever
says yes where the model would, and then produces the same bytes.

`check_valid` answers the question `BackgroundPublisher.publish` asks in the caller's thread (does the model accept
the record?): `_json_of`, then msgspec converts the top-level fields straight from the dict (8,200 instructions
a record where `spans.checked_columns` parses the whole text again in 13,200: benchmarks/NOTES.md, round 6).
`encode_plain` asks it too, then `storable_as_written` (can the model's path store that JSON unchanged?).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic_core import to_json

from ..record import MAX_INT_DIGITS, Interaction, entry_fields, format_timestamp, splice_fields
from ..spans import Columns, checked_columns, fast_timestamp, holds_special_escape, nests_deeply

_read_json = msgspec.json.decode
_KNOWN_FIELDS = frozenset(Interaction.model_fields)
# pydantic-core writes U+FFFD for a lone surrogate in a dict key where the model path refuses the record
# (record.ensure_storable): such bytes go to the model.
_REPLACEMENT_CHARACTER = "\ufffd".encode()
_FFFD_LEAD = _REPLACEMENT_CHARACTER[0]


def encode_plain(record: Mapping[str, Any], max_record_bytes: int, *, strict: bool) -> dict[bytes, bytes] | None:
    """The stream entry's fields for a plain `record`, exactly as `publisher.encode_fields` would build them, or
    None when the model must decide (see the module docstring), the record being over `max_record_bytes`
    included (the model's path raises the error that says so)."""
    if strict and not record.keys() <= _KNOWN_FIELDS:
        return None
    checked = check_valid(record)  # the model accepts it: then can its JSON be stored as written?
    if checked is None or not storable_as_written(checked[0]):
        return None
    body, fields = checked
    defaults: dict[str, str] = {}
    if fields.interaction_id is msgspec.UNSET:
        defaults["interaction_id"] = str(uuid.uuid4())  # the model's own default (record._new_interaction_id)
    if fields.timestamp is msgspec.UNSET:
        defaults["timestamp"] = format_timestamp(datetime.now(UTC))
    if defaults:
        body = splice_fields(body.decode(), defaults).encode()
    if len(body) > max_record_bytes:
        return None
    return entry_fields(body, exact=fields.timestamp is not msgspec.UNSET)  # record.has_exact_identity


def storable_as_written(body: bytes) -> bool:
    """Whether `body`, the JSON of a record `check_valid` accepted (its defaults spliced in or not), is what the
    model's path would store for it, unchanged: `check_valid` has ruled out NaN, infinities, long integers and deep
    nesting; left are a NUL or a surrogate written as an escape (`spans.holds_special_escape`) and a U+FFFD, which
    pydantic-core writes for a lone surrogate in a dict key where the model's path refuses the record. False is
    for the model's path to settle (it may still store the record)."""
    return not (_writes_replacement_character(body) or holds_special_escape(body))


def _writes_replacement_character(body: bytes) -> bool:
    return _FFFD_LEAD in body and _REPLACEMENT_CHARACTER in body  # an int test is one memchr: ASCII text skips it


class _Fields(Columns):
    """The columns as msgspec converts them from the dict itself rather than from its JSON: the payloads are any
    JSON value (`_json_of` has checked them); `metadata` must be a dict."""

    request: Any = None
    response: Any = None
    error: Any = None
    metadata: Any = None


def check_valid(record: Mapping[str, Any]) -> tuple[bytes, _Fields] | None:
    """`record`'s JSON text as `to_json` writes it, and its fields, when the model accepts `record` (that is,
    `record.validate_record` returns; whether it can be stored is the encoding's to say); None when the model must
    decide. For `BackgroundPublisher.publish`, which validates in the caller's thread and encodes later, and for
    `encode_plain`.

    Cheaper than `spans.checked_columns` (which parses the whole text, payloads included): msgspec converts the
    dict's top-level fields, and `_json_of` has checked the payloads. A record holding NaN, an infinity
    or an integer too long to parse back (the model accepts them, the encoding refuses them) is left to the model's
    path, so that it is refused on the thread exactly as before.
    """
    body = _json_of(record)
    if body is None or nests_deeply(body):  # maybe deeper than the worker reads: the model's path says
        return None
    try:
        fields = msgspec.convert(record, _Fields, strict=True)
    except (msgspec.ValidationError, RecursionError):
        return None
    # NaN and infinities never get here: `to_json` writes them as tokens msgspec does not read back, so `_json_of`
    # answered None. An integer too long to parse back fits only in a long text: there, the bytes pass of
    # `checked_columns` rules it out (declining the rare other record it declines too).
    unreadable = len(body) > MAX_INT_DIGITS and checked_columns(body) is None
    metadata, timestamp = fields.metadata, fields.timestamp
    if (
        unreadable
        or (metadata is not None and type(metadata) is not dict)
        or (timestamp is not msgspec.UNSET and fast_timestamp(timestamp) is None)
    ):
        return None
    return body, fields


def _json_of(record: Mapping[str, Any]) -> bytes | None:
    """`record`'s JSON text as `to_json` writes it (the model's path writes the same bytes), when `record` is a
    dict whose every value the model reads as the JSON value it is written as; None when the model must decide.

    Read back by msgspec, the text must equal `record`: a value that `to_json` writes but the model refuses (a
    tuple, a set, a datetime, bytes, a UUID, a non-str key, a dataclass) reads back as another type and differs.
    What compares equal is a str, int, float, dict or list (or a subclass of one, which the model's strict JSON
    value accepts too, and writes as `to_json` does). One C pass each way and a C comparison: a third of the cost of
    walking the values in Python (benchmarks/NOTES.md). NaN, infinities and integers msgspec cannot read fail the
    read, and go to the model."""
    if type(record) is not dict:
        return None
    try:
        body = to_json(record, inf_nan_mode="constants")
        same = _read_json(body) == record
    except Exception:  # whatever to_json, msgspec or a value's __eq__ raise: the model decides
        return None
    return body if same else None
