"""The fast path of validation: a record's JSON checked straight from its bytes, payloads left as raw JSON spans.

`Interaction.model_validate_json` builds a Python object for every value of the record, `request` and
`response` included, only for the worker to store the same text (issue 14: the data column holds the JSON
the publisher sent). Here msgspec checks the fields that become columns, and keeps `request`, `response`,
`error` and `metadata` as `msgspec.Raw` spans: their bytes are checked to be JSON and nothing is built. The
worker (`fast_rows` for a batch, `fast_row` for one record) and the publisher's `publish_many` of plain dicts
(`client.plain`) both use it.

This path only ever says yes when the model would: it answers None (take the model's path) whenever it is not
sure, so every refusal, its reason and its message still come from the model. Not sure means: msgspec refuses
the record (wrong type, too long, null where the model wants a value, not JSON, NaN, ...); the bytes are not
UTF-8; they hold an escape the model treats specially (U+0000, a surrogate: `\\u0000`, `\\ud800`), an integer
longer than `record.MAX_INT_DIGITS`, or `record.MAX_FAST_BRACKETS` brackets or more in a text pydantic-core's JSON
parser refuses (it refuses nesting 200 deep, msgspec later; only such long texts are parsed to ask it);
`duration_ms` is not finite; `timestamp` is not in `_COMMON_TIMESTAMP`'s shape; `metadata` is not an object. The
worker also leaves records without `interaction_id` or `timestamp` to the model path, which splices their defaults
in.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import accumulate, chain, repeat
from operator import attrgetter
from typing import Annotated, cast

import msgspec

from .record import (
    MAX_FAST_BRACKETS,
    MAX_INT_DIGITS,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    NOT_BRACKETS,
    parser_refusal,
)
from .rows import StoredRow
from .scrub import DEFAULT_SCRUBBER, SCRUBBED_STAMP, payload_might_hold_secrets, scrub_stored_json

# The model's constraints (record.Interaction), restated for msgspec; tests/test_bad_input.py and
# tests/test_spans.py hold the two to the same verdicts.
_Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
_ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
_NO_PAYLOAD = msgspec.Raw()
_NULL = b"null"


# gc=False: nothing these hold can form a cycle (text, numbers, Raw spans), and left to the collector a batch's
# thousand records each cost a traversal in every collection they survive (benchmarks/NOTES.md).
class _Client(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    name: _ShortText | None = None
    version: _ShortText | None = None


class Columns(msgspec.Struct, gc=False):
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


def holds_special_escape(data: bytes) -> bool:
    """Whether `data` (JSON) writes `\\u0000` or a surrogate as an escape: the model refuses the first, and tells a
    lone surrogate (refused) from a pair (fine). A preceding escaped backslash only over-matches."""
    return _BACKSLASH in data and _SPECIAL_ESCAPE.search(data) is not None  # an int test is one memchr


def nests_deeply(data: bytes) -> bool:
    """Whether the worker's JSON parser may refuse `data` (JSON) for its nesting, so that the model must judge it:
    it holds `MAX_FAST_BRACKETS` brackets or more and that parser refuses it (`record.parser_refusal`; for any
    reason, as the fast path only says yes when sure). A long record that nests shallowly (a tool result listing
    150 objects) stays on the fast path at the cost of that one parse, where the bound alone sent it, and on the
    worker its whole chunk, down the model's path at several times the cost."""
    # The bound first, here: the common answer without the second call (this runs for every record published).
    return len(data.translate(None, NOT_BRACKETS)) >= MAX_FAST_BRACKETS and parser_refusal(data) is not None


def needs_model(data: bytes) -> bool:
    """Whether `data` (a record's JSON) holds what only the model may judge, found from its bytes alone: an escape
    the model treats specially (`\\u0000`, a surrogate), an integer longer than `record.MAX_INT_DIGITS`, or
    `MAX_FAST_BRACKETS` brackets or more (see the module docstring). Over-matches (such text inside a string)
    only send a record down the model's path for nothing."""
    return bool(
        holds_special_escape(data) or nests_deeply(data) or (len(data) > MAX_INT_DIGITS and _LONG_DIGITS.search(data))
    )


def checked_columns(data: bytes) -> Columns | None:
    """`data`'s fields as the model would accept them (its ids possibly UNSET), or None when the model must decide
    (see the module docstring). `data` must already be within max_record_bytes. Its timestamp, when present, is
    checked with `fast_timestamp` by the caller."""
    if needs_model(data):
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


# Records per pass of `fast_rows`: a record it is not sure of sends its whole chunk down the per-record path.
FAST_CHUNK = 256
_OPEN, _CLOSE = b"{", b"}"
_PAYLOAD_SPANS = attrgetter("request", "response", "error", "metadata")
_MCP_ID, _INTERACTION_ID, _TIMESTAMP = attrgetter("mcp_id"), attrgetter("interaction_id"), attrgetter("timestamp")
_METHOD, _TOOL, _SESSION_ID = attrgetter("method"), attrgetter("tool"), attrgetter("session_id")
_IS_ERROR, _DURATION_MS, _TRACE_ID = attrgetter("is_error"), attrgetter("duration_ms"), attrgetter("trace_id")
_METADATA = attrgetter("metadata")


def fast_rows(entry_ids: Sequence[str], datas: Sequence[bytes], *, scrub: bool) -> list[StoredRow | None]:
    """`fast_row` of each (entry id, data) pair, the same answers, for a batch: each check runs once over a chunk
    of records (C loops: msgspec's `decode_lines`, `map` of C functions), where `fast_row` pays Python's per-call
    costs a dozen times per record. A record any check is not sure of is answered by `fast_row` alone, and the
    rest of its chunk together still. `datas` are bytes within max_record_bytes, as for `fast_row`."""
    rows: list[StoredRow | None] = []
    for start in range(0, len(datas), FAST_CHUNK):
        rows += _chunk_rows(entry_ids[start : start + FAST_CHUNK], datas[start : start + FAST_CHUNK], scrub)[0]
    return rows


# How many records of a chunk msgspec may refuse one after another before the chunk goes one record at a time.
_DECODE_RETRIES = 4
# Stands in for a record's timestamp once another check has sent the record to `fast_row`, so that the chunk's
# later checks, which run over every record, pass over it.
_SOME_TIMESTAMP = "2000-01-01T00:00:00Z"


def _chunk_rows(
    entry_ids: Sequence[str], datas: Sequence[bytes], scrub: bool
) -> tuple[list[StoredRow | None], set[int]]:
    """`fast_row`'s answer for each record of a chunk, and the positions of those `fast_row` answered alone.

    The checks of `checked_columns` and `fast_row` each run once over the chunk; a record one of them is not sure
    of is answered by `fast_row`, the others together. Before, one such record (a raw XADD without
    `interaction_id`, a `\\ud83d` escape, a long tool result) sent its whole chunk one record at a time."""
    joined = b"\n".join(datas)
    alone = _screened(datas, joined)
    # The records decoded together, as positions in the chunk; in the common case the chunk's own lists, uncopied.
    kept: Sequence[int] = range(len(datas))
    kept_ids, kept_datas = entry_ids, datas
    if alone:
        kept, kept_ids, kept_datas, joined = _without(alone, entry_ids, datas)
    columns: list[Columns] | None = None
    for _ in range(_DECODE_RETRIES):
        if not kept:
            break
        columns, culprit = _decoded(kept_datas, joined)
        if columns is not None or culprit is None:
            break
        alone.add(kept[culprit])  # refused by msgspec: its own decode says why, or declines
        kept, kept_ids, kept_datas, joined = _without(alone, entry_ids, datas)
    answers: list[StoredRow | None] = [None] * len(datas)
    if columns is not None:
        rows, unsure = _rows(kept_ids, kept_datas, columns, scrub)
        if not alone and not unsure:
            return cast(list[StoredRow | None], rows), alone
        for position, row in zip(kept, rows, strict=True):
            answers[position] = row
        alone.update(kept[index] for index in unsure)
    else:
        alone = set(range(len(datas)))
    for position in alone:
        answers[position] = fast_row(entry_ids[position], datas[position], scrub=scrub)
    return answers, alone


def _without(
    alone: set[int], entry_ids: Sequence[str], datas: Sequence[bytes]
) -> tuple[list[int], list[str], list[bytes], bytes]:
    """The positions, entry ids and records of a chunk but those `alone`, and the records joined for decoding."""
    kept = [index for index in range(len(datas)) if index not in alone]
    kept_datas = [datas[index] for index in kept]
    return kept, [entry_ids[index] for index in kept], kept_datas, b"\n".join(kept_datas)


def _rows(
    entry_ids: Sequence[str], datas: Sequence[bytes], columns: list[Columns], scrub: bool
) -> tuple[list[StoredRow], set[int]]:
    """The rows of records msgspec decoded together (`columns`), after the checks `fast_row` makes after decoding,
    each over them all; and the positions of the records one of them is not sure of, whose rows are to be
    ignored (built from stand-ins, for `fast_row` to answer)."""
    unsure: set[int] = set()
    interaction_ids = list(map(_INTERACTION_ID, columns))
    timestamp_texts = list(map(_TIMESTAMP, columns))
    if msgspec.UNSET in interaction_ids or msgspec.UNSET in timestamp_texts:
        unsure |= {
            index
            for index, (interaction_id, text) in enumerate(zip(interaction_ids, timestamp_texts, strict=True))
            if interaction_id is msgspec.UNSET or text is msgspec.UNSET
        }
        timestamp_texts = _standing_in(timestamp_texts, unsure)
    # Before fromisoformat, which reads more shapes (a date alone, no offset: naive, not comparable below).
    # Streamed, not kept: a list of 256 match objects would bring the garbage collector's next pass forward.
    if None in map(_COMMON_TIMESTAMP.fullmatch, timestamp_texts):
        unsure |= {index for index, text in enumerate(timestamp_texts) if _COMMON_TIMESTAMP.fullmatch(text) is None}
        timestamp_texts = _standing_in(timestamp_texts, unsure)
    try:
        timestamps = list(map(_from_isoformat, timestamp_texts))
    except (ValueError, OverflowError):
        read = [_timestamp_or_none(text) for text in timestamp_texts]
        unsure |= {index for index, timestamp in enumerate(read) if timestamp is None}
        timestamps = [_SOME_DATETIME if timestamp is None else timestamp for timestamp in read]
    if min(timestamps) < MIN_TIMESTAMP or max(timestamps) > MAX_TIMESTAMP:
        unsure |= {index for index, at in enumerate(timestamps) if not MIN_TIMESTAMP <= at <= MAX_TIMESTAMP}
    if not math.isfinite(sum(filter(None, map(_DURATION_MS, columns)))):  # inf or nan (or a sum too large): which
        durations = map(_DURATION_MS, columns)
        unsure |= {index for index, value in enumerate(durations) if value is not None and not math.isfinite(value)}
    metadata = list(map(bytes, map(_METADATA, columns)))
    objects = sum(map(bytes.startswith, metadata, repeat(_OPEN)))
    if objects + metadata.count(b"") + metadata.count(_NULL) != len(datas):  # the model wants an object
        unsure |= {index for index, text in enumerate(metadata) if text not in (b"", _NULL) and text[:1] != _OPEN}
    try:
        texts = list(map(bytes.decode, datas))
    except UnicodeDecodeError:
        texts = [data.decode(errors="replace") for data in datas]
        unsure |= {index for index, data in enumerate(datas) if not _is_utf8(data)}
    if scrub:
        spans = list(map(_PAYLOAD_SPANS, columns))
        stamped = list(map(bytes.__contains__, metadata, repeat(SCRUBBED_STAMP)))  # scrubbed by its publisher
        asked = [index for index, done in enumerate(stamped) if not done and index not in unsure]
        for position in _might_hold_secrets(spans, asked):
            texts[position] = scrub_stored_json(texts[position])
    fields = (_MCP_ID, _INTERACTION_ID, _TIMESTAMP, _METHOD, _TOOL, _SESSION_ID, _IS_ERROR, _DURATION_MS, _TRACE_ID)
    values = [list(map(field, columns)) for field in fields]
    values[1], values[2] = interaction_ids, timestamps
    return list(map(_new_row, repeat(StoredRow), zip(*values, texts, entry_ids, strict=True))), unsure


_SOME_DATETIME = datetime.fromisoformat(_SOME_TIMESTAMP)


def _standing_in(texts: list[str], unsure: set[int]) -> list[str]:
    """`texts` with those at `unsure` positions replaced by `_SOME_TIMESTAMP`."""
    return [_SOME_TIMESTAMP if index in unsure else text for index, text in enumerate(texts)]


def _timestamp_or_none(text: str) -> datetime | None:
    try:
        return _from_isoformat(text)
    except (ValueError, OverflowError):
        return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _screened(datas: Sequence[bytes], joined: bytes) -> set[int]:
    """The positions of records `fast_row` must answer alone, found from their bytes before any decoding: not one
    JSON object from `{` to `}` (no other alignment of `decode_lines`'s values is then possible, see `_decoded`), an
    escape the model treats specially, an integer longer than `MAX_INT_DIGITS`, nesting the parser may refuse.
    Each check runs over the chunk in C first, and record by record only when it finds something."""
    alone: set[int] = set()
    if not (all(map(bytes.startswith, datas, repeat(_OPEN))) and all(map(bytes.endswith, datas, repeat(_CLOSE)))):
        alone |= {index for index, data in enumerate(datas) if not (data[:1] == _OPEN and data[-1:] == _CLOSE)}
    if _BACKSLASH in joined and _SPECIAL_ESCAPE.search(joined):  # `joined`: the records, a newline between
        alone |= {index for index, data in enumerate(datas) if holds_special_escape(data)}
    if max(map(len, datas)) > MAX_INT_DIGITS:
        alone |= {index for index, data in enumerate(datas) if len(data) > MAX_INT_DIGITS and _LONG_DIGITS.search(data)}
    brackets = _bracket_counts(datas, joined)
    if max(brackets) >= MAX_FAST_BRACKETS:
        alone |= {
            index
            for index, (data, count) in enumerate(zip(datas, brackets, strict=True))
            if count >= MAX_FAST_BRACKETS and nests_deeply(data)
        }
    return alone


def _bracket_counts(datas: Sequence[bytes], joined: bytes) -> list[int]:
    """The brackets (`[` and `{`) of each record, from one pass over the chunk (`joined`: the records, a newline
    between) that keeps only brackets and newlines: half the cost of two counts a record (0.31 against 0.56 us a
    record, benchmarks/NOTES.md round 8). A record holding a raw newline (JSON whitespace) splits in two there: then
    the counts are taken record by record."""
    lines = joined.translate(None, _NOT_BRACKETS_OR_NEWLINE).split(b"\n")
    if len(lines) == len(datas):
        return list(map(len, lines))
    return list(map(len, map(bytes.translate, datas, repeat(None), repeat(NOT_BRACKETS))))


_NOT_BRACKETS_OR_NEWLINE = NOT_BRACKETS.replace(b"\n", b"")


def _decoded(datas: Sequence[bytes], joined: bytes) -> tuple[list[Columns] | None, int | None]:
    """`checked_columns`'s decoding of each record (`datas`: each one JSON object from `{` to `}`, passed by
    `_screened`), from one `decode_lines` of `joined` (them, a newline between); or None, and the position of the
    record msgspec refused when its error names one (None when it does not, or the values did not line up with the
    records)."""
    # One JSON value per line for decode_lines, which reads whitespace-separated values: with every record
    # opening with `{` and closing with `}`, no value can span two records (`}` then `{` is no JSON inside a
    # value, and a raw newline none inside a string), so as many values as records are the records, one each.
    try:
        columns = _DECODER.decode_lines(joined)
    except msgspec.ValidationError as error:  # "... - at `$[3].duration_ms`": the fourth record
        found = _LINE.search(str(error))
        position = int(found[1]) if found else None
        return None, position if position is not None and position < len(datas) else None
    except msgspec.DecodeError as error:  # "JSON is malformed: ... (byte 1234)": the record holding that byte
        found = _BYTE.search(str(error))
        if found is None:  # "Invalid UTF-8 encoded string" says no offset: the first record that is not UTF-8
            return None, next((index for index, data in enumerate(datas) if not _is_utf8(data)), None)
        ends = list(accumulate(len(data) + 1 for data in datas))
        position = bisect_right(ends, int(found[1]))
        return None, position if position < len(datas) else None
    return (columns, None) if len(columns) == len(datas) else (None, None)


_LINE = re.compile(r"at `\$\[(\d+)\]")
_BYTE = re.compile(r"\(byte (\d+)\)")


def _might_hold_secrets(spans: Sequence[tuple[msgspec.Raw, ...]], positions: list[int]) -> list[int]:
    """Those of `positions` whose payload spans `scrub.payload_might_hold_secrets` says may hold a secret: asked of
    all of them at once, then of each half that answers yes (a match never spans two records: the spans are
    joined with a newline, which no anchor, card number or escape holds)."""
    if not positions or not payload_might_hold_secrets(
        DEFAULT_SCRUBBER, chain.from_iterable(map(spans.__getitem__, positions))
    ):
        return []
    if len(positions) == 1 or DEFAULT_SCRUBBER.callback is not None or DEFAULT_SCRUBBER.unanchored:
        return positions  # one record, or a scrubber that always says yes
    middle = len(positions) // 2
    return _might_hold_secrets(spans, positions[:middle]) + _might_hold_secrets(spans, positions[middle:])


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
