"""The `Interaction` record, its wire encoding, and the validation shared by publishers and workers.

Wire format (one stream entry per record): ``XADD <stream> MAXLEN ~ <cap> * v 1 data <JSON object>``.
The publisher and the worker validate with the same model, so whatever a publisher accepts a worker stores,
and whatever a worker would dead-letter a publisher refuses up front.

What is stored is what was sent: the `data` column receives the publisher's JSON text itself. Fields the model does
not know are kept there as sent (a newer publisher never sends an older worker's records to the dead-letter
stream); only the defaults a record lacks (`interaction_id`, `timestamp`) are added, spliced into the original
text (`splice_fields`) rather than re-encoded, so numbers such as ``1.00000000000000001`` or ``12.50`` survive.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Container, Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json

from .errors import InvalidRecordError, RecordTooLargeError

WIRE_VERSION = b"1"
VERSION_FIELD = b"v"
DATA_FIELD = b"data"
# Optional, written by this package's publishers: `identity exact` says the record's author wrote its timestamp,
# so every copy of it carries the same (mcp_id, interaction_id, timestamp) (a record's time never changes). The
# worker then leaves copies to the unique index and skips the dedupe window's probe and lock (README
# "Idempotency"). Absent (a timestamp stamped by a publisher or gateway, another language's XADD, an older
# publisher), the record may be a copy stamped again: safe, only slower. A generated interaction_id does not make
# it exact: the publisher hands it back (PublishUnavailableError.interaction_id) for the caller's retry.
IDENTITY_FIELD = b"identity"
EXACT_IDENTITY = b"exact"
# The same said to a gateway (an HTTP header; gRPC call metadata, lowercase) for every record of a request: a
# record that carries its own timestamp is then marked `identity exact` by the gateway. This package's http:// and
# grpc:// transports send it when every entry of a batch is marked; any client may. A client that says it wrongly
# only loses the dedupe of its own copies stamped apart (README "Idempotency").
IDENTITY_HEADER = "Interactionlog-Identity"


def says_exact_identity(value: str | bytes | None) -> bool:
    """Whether a header's or metadata's `value` (IDENTITY_HEADER's) is the word `exact`, in any case and spacing."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value is not None and value.strip().lower() == EXACT_IDENTITY.decode()


# Columns are TEXT with B-tree indexes; the caps keep one runaway value from bloating the index.
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
Identifier = Annotated[str, Field(min_length=1, max_length=100)]

# JSON escapes U+0000 as \u0000, preceded by an even number of backslashes (an odd count means the
# backslash itself was escaped and the text is a literal "\u0000"). PostgreSQL refuses U+0000 in both
# TEXT and JSONB, so a record carrying it could never be stored.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Python (and the worker's JSON parser) refuse to parse integers longer than this many digits.
MAX_INT_DIGITS = 4300
# Brackets fewer than this bound the nesting below what pydantic-core's JSON parser refuses (200 levels, counting
# the record's own object): the worker reads entries with it, so a deeper record could never be stored.
MAX_FAST_BRACKETS = 200
# Every byte but `[` and `{`: `len(data.translate(None, NOT_BRACKETS))` counts a text's brackets in one pass that
# writes almost nothing (0.42 us against two counts' 0.49 on a 700-byte record; benchmarks/NOTES.md, round 8).
NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[{")
_HUGE_INT = 10**MAX_INT_DIGITS
# Anchored at the start of a digit run by the lookbehind, so each run is tried once: linear in the record's size.
# Without it the search retried from every digit of a run just under the limit, quadratic (1.8 s on 252 KB).
_LONG_DIGITS = re.compile(rf"(?<!\d)\d{{{MAX_INT_DIGITS + 1}}}")


# The instants a record may carry: what Python's datetime and PostgreSQL's timestamptz both hold, with a day's
# margin at each end, so a stored time also reads back in any session time zone (psycopg raises "timestamp too
# large" for a year past 9999 in the reader's zone).
MIN_TIMESTAMP = datetime(1, 1, 2, tzinfo=UTC)
MAX_TIMESTAMP = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)

# RFC 3339 date-time (section 5.6): a full date, `T` (or a space, or lower case), a full time with optional
# fraction, and a zone (`Z` or a numeric offset). Nothing else: no epoch numbers, no zone-less times.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
TIMESTAMP_HINT = "send an RFC 3339 string with a time zone, such as 2024-05-01T10:00:00.123Z"


def parse_timestamp(value: object) -> datetime:
    """A record's `timestamp` as an aware datetime: an RFC 3339 string (or, from Python, an aware datetime).

    Raises ValueError saying why otherwise. Numbers are refused rather than read as epoch time: nothing tells
    seconds from milliseconds, and a guess would silently move a record by a factor of a thousand. Fractions
    finer than a microsecond (RFC 3339 allows nanoseconds) are truncated in the column; `data` keeps the text.
    """
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"a datetime without a time zone is ambiguous; {TIMESTAMP_HINT}")
        parsed = value
    elif isinstance(value, str):
        parsed = _parse_rfc3339(value)
    # ValueError, not TypeError: pydantic turns only ValueError into a validation error naming the field.
    elif isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(  # noqa: TRY004
            f"epoch numbers are refused, since seconds and milliseconds cannot be told apart; {TIMESTAMP_HINT}"
        )
    else:
        raise ValueError(f"must be a string; {TIMESTAMP_HINT}")  # noqa: TRY004
    try:
        in_range = MIN_TIMESTAMP <= parsed <= MAX_TIMESTAMP
    except OverflowError:  # year 1 at +14:00, year 9999 at -14:00: the UTC instant is outside datetime itself
        in_range = False
    if not in_range:
        raise ValueError(
            f"{value} is outside the instants interactionlog stores ({format_timestamp(MIN_TIMESTAMP, 'auto')} to "
            f"{format_timestamp(MAX_TIMESTAMP, 'auto')} in UTC: what PostgreSQL stores and Python reads back in any "
            "time zone)"
        )
    return parsed


def _parse_rfc3339(text: str) -> datetime:
    match = _RFC3339.fullmatch(text)
    if match is None:
        if re.fullmatch(r"\s*[+-]?\d+(\.\d*)?([eE][+-]?\d+)?\s*", text, re.ASCII):
            raise ValueError(
                "epoch numbers (even as strings) are refused, since seconds and milliseconds cannot be told apart; "
                + TIMESTAMP_HINT
            )
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?", text, re.ASCII):
            raise ValueError(f"a time without a time zone is ambiguous; {TIMESTAMP_HINT}")
        raise ValueError(f"not an RFC 3339 date-time; {TIMESTAMP_HINT}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hour, off_minute = match.groups()
    if second == "60":
        raise ValueError(f"leap seconds (:60) cannot be stored; {TIMESTAMP_HINT}")
    if zulu:
        zone = UTC
    elif int(off_hour) > 23 or int(off_minute) > 59:
        raise ValueError(f"{sign}{off_hour}:{off_minute} is not a time zone offset; {TIMESTAMP_HINT}")
    else:
        offset = timedelta(hours=int(off_hour), minutes=int(off_minute))
        zone = timezone(-offset if sign == "-" else offset)
    micro = int((fraction or "0").ljust(6, "0")[:6])
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, zone)
    except ValueError as error:
        raise ValueError(f"not a valid date or time ({error})") from None


def format_timestamp(moment: datetime, timespec: str = "microseconds") -> str:
    """`moment` as the RFC 3339 text interactionlog writes: UTC, with a `Z`."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp, json_schema_input_type=str), Field(strict=False)]


def _new_interaction_id() -> str:
    return str(uuid.uuid4())


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ClientInfo(BaseModel):
    """The MCP client that made the request, as announced in its `initialize` call."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: ShortText | None = None
    version: ShortText | None = None


class Interaction(BaseModel):
    """One interaction an MCP server served: a tool call, a resource read, a prompt fetch, ...

    ``(mcp_id, interaction_id)`` identifies a record: publishing it twice stores it once.
    Fields the model does not know are kept as sent (any JSON value, in `model_extra`): MCP authors add their
    own (`user_id`, `model`, `tokens`), and a newer publisher must not see an older worker refuse its records.
    The publish helpers' `strict=True` refuses them instead, to catch typos such as ``tool_name``.
    """

    # Strict: a string is not coerced into a number or a boolean, so stored values are what was sent.
    # Non-finite numbers (NaN, Infinity, or 1e400, which overflows to infinity) are written as JSON's
    # non-standard tokens rather than as null, so that encode_record can refuse them instead of storing a
    # silently different value.
    model_config = ConfigDict(extra="allow", strict=True, frozen=True, ser_json_inf_nan="constants")
    # Unknown top-level fields: any JSON value, validated as such (a Python set or bytes is refused).
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)

    mcp_id: Identifier
    interaction_id: Identifier = Field(default_factory=_new_interaction_id)
    timestamp: Timestamp = Field(default_factory=_utc_now)
    method: ShortText | None = None
    tool: ShortText | None = None
    session_id: ShortText | None = None
    request_id: Annotated[str, Field(max_length=200)] | int | None = None
    request: JsonValue = None
    response: JsonValue = None
    is_error: bool | None = None
    error: JsonValue = None
    duration_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    trace_id: Annotated[str, Field(max_length=64)] | None = None
    span_id: Annotated[str, Field(max_length=32)] | None = None
    client: ClientInfo | None = None
    metadata: dict[str, JsonValue] | None = None


# Names pydantic puts in an error's location for the member of a union (`request_id.constrained-str`) or the
# shape of a JSON value (`response.dict.content.list.0`); they are not part of what the user wrote.
_SCHEMA_TAGS = frozenset(
    {"str", "int", "float", "bool", "none", "dict", "list", "constrained-str", "constrained-int", "constrained-float"}
)


def describe_validation_error(error: ValidationError, source: object = None) -> str:
    """One line per problem, naming the field as the user wrote it, what is wrong, and the offending value.

    `source` is what was validated (a dict, or JSON text), used to tell the user's keys from pydantic's schema
    tags in an error's location; without it, known tags are dropped by name. The failures of a union's members
    at one field become one problem (``should be a valid string, or a valid integer``).
    """
    root = _parsed(source)
    grouped: dict[str, tuple[list[str], object]] = {}
    for item in error.errors(include_url=False):
        field = _user_path(item["loc"], root) or "record"
        message = item["msg"].removeprefix("Value error, ")
        messages, _ = grouped.setdefault(field, ([], item.get("input")))
        if message not in messages:
            messages.append(message)
    problems = []
    for field, (messages, value) in grouped.items():
        first, *others = messages
        prefix = "Input should be "
        rest = [other.removeprefix(prefix) if first.startswith(prefix) else other for other in others]
        text = ", or ".join([first, *rest])
        problems.append(f"field '{bounded(field, 80)}': {text} ({_preview(field, value)})")
    return bounded("; ".join(problems), MAX_MESSAGE_CHARS)


# Error texts reach logs and `dlq list`: a preview of a value is short, and never taken from where a secret may
# be (text of any field, the payload fields, a key named like a credential); containers are described only.
MAX_MESSAGE_CHARS = 2000
_PAYLOAD_FIELDS = frozenset({"record", "request", "response", "error", "metadata", "client"})
_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|cookie|credential|session", re.IGNORECASE)


def _preview(field: str, value: object) -> str:
    """What an error message may say of the offending value."""
    if isinstance(value, dict):
        return f"got an object of {len(value)} field(s)"
    if isinstance(value, list | tuple):
        return f"got a list of {len(value)}"
    if isinstance(value, str | bytes):  # text may be anything, a pasted credential included
        return f"got a {type(value).__name__} of {len(value)} characters, not shown"
    top = field.split(".", 1)[0]
    if top in _PAYLOAD_FIELDS or _SECRET_NAME.search(field):
        return f"got a {type(value).__name__}, value not shown"
    return f"got {bounded(repr(value), 40)}"


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 30, 10)]}... ({len(text)} characters in all)"


def _parsed(source: object) -> object:
    if isinstance(source, bytes | bytearray | str):
        try:
            return json.loads(source)
        except (ValueError, RecursionError):
            return None
    return source


def _user_path(loc: Iterable[int | str], root: object) -> str:
    """The location's parts that are keys or indexes of the value itself, joined with dots."""
    parts: list[str] = []
    node: object = root
    for part in loc:
        is_key = isinstance(node, Mapping) and part in node
        is_index = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if is_key or is_index:
            parts.append(str(part))
            node = node[part]  # type: ignore[index]
        elif isinstance(part, str) and (part in _SCHEMA_TAGS or part.startswith(("function-", "lax-or-strict"))):
            continue  # pydantic's name for a union member or a JSON shape, not the user's key
        else:
            parts.append(str(part))
            node = None
    return ".".join(parts)


def validate_record(record: Interaction | dict[str, Any]) -> Interaction:
    """Return `record` as a validated `Interaction`, or raise `InvalidRecordError` naming the fields."""
    if isinstance(record, Interaction):
        return record
    try:
        return Interaction.model_validate(record)
    except ValidationError as error:
        raise InvalidRecordError(f"invalid interaction record: {describe_validation_error(error, record)}") from error


# The fields a record may omit: the helpers and the worker add them, spliced into the record's JSON text.
DEFAULTED_FIELDS = ("interaction_id", "timestamp")


def refuse_unknown_fields(record: Interaction) -> None:
    """Strict mode: raise InvalidRecordError naming every top-level field the wire format does not define."""
    unknown = sorted(record.model_extra or {})
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise InvalidRecordError(
            f"invalid interaction record: field {names} is not a field of the wire format (strict mode); put fields "
            'of your own under \'metadata\' ("metadata": {"user_id": ...}), fix the name if it is a typo, or '
            "publish without strict=True to keep it as a top-level field"
        )


def splice_fields(data: str, fields: Mapping[str, str]) -> str:
    """`data` (the JSON text of an object) with `fields` (string values) inserted right after its opening brace.

    Everything the publisher wrote stays byte for byte as it was (numbers such as ``12.50`` or ``1e2``, key order,
    escapes); only the added members are new. Raises ValueError when `data` does not start with an object.
    """
    if not fields:
        return data
    start = len(data) - len(data.lstrip(" \t\r\n"))
    if not data.startswith("{", start):
        raise ValueError("data is not a JSON object")
    members = ",".join(f"{json.dumps(name)}:{json.dumps(value, ensure_ascii=False)}" for name, value in fields.items())
    rest = data[start + 1 :]
    separator = "" if rest.lstrip(" \t\r\n").startswith("}") else ","
    return f"{data[: start + 1]}{members}{separator}{rest}"


def defaults_to_splice(record: Interaction, present: Iterable[str]) -> dict[str, str]:
    """The defaulted fields `record` holds but its sender did not write (`present`), as the text to splice."""
    written = set(present)
    found: dict[str, str] = {}
    if "interaction_id" not in written:
        found["interaction_id"] = record.interaction_id
    if "timestamp" not in written:
        found["timestamp"] = format_timestamp(record.timestamp)
    return found


def prepare_record(record: Interaction | Mapping[str, Any], *, strict: bool = False) -> tuple[Interaction, str]:
    """Validate `record` and return it with the JSON text to publish: the caller's own values, unchanged, plus the
    defaults it lacks (a fresh `interaction_id`, `timestamp` now) spliced in. Raises InvalidRecordError.

    A dict is encoded as given (a `null` stays a `null`, an unknown field stays where it was); an `Interaction`
    as the fields that were set on it. `strict` refuses fields the wire format does not define.
    """
    if isinstance(record, Interaction):
        interaction = record
        try:
            body = record.model_dump_json(exclude_unset=True)
        except PydanticSerializationError as error:
            raise _unwritable(interaction, error) from None
        present: Iterable[str] = record.model_fields_set
    else:
        interaction = validate_record(dict(record))
        try:
            body = to_json(record, inf_nan_mode="constants").decode()
        except PydanticSerializationError as error:
            raise _unwritable(interaction, error) from None
        present = record.keys()
    if strict:
        refuse_unknown_fields(interaction)
    encoded = splice_fields(body, defaults_to_splice(interaction, present))
    ensure_readable(encoded, interaction)
    ensure_storable(encoded, interaction)
    return interaction, encoded


def wire_fields(record: Interaction, encoded: str, max_record_bytes: int, *, exact: bool) -> dict[bytes, bytes]:
    """The stream entry's fields (`entry_fields`) for `record`, whose JSON text is `encoded`; raises
    RecordTooLargeError when that text is over `max_record_bytes`."""
    data = encoded.encode()
    if len(data) > max_record_bytes:
        raise RecordTooLargeError(
            f"record {record.interaction_id!r} of {record.mcp_id!r} encodes to {len(data)} bytes, over the "
            f"{max_record_bytes}-byte cap (max_record_bytes); trim large request or response payloads"
        )
    return entry_fields(data, exact=exact)


def entry_fields(data: bytes, *, exact: bool) -> dict[bytes, bytes]:
    """The stream entry's fields for a record whose JSON text is `data`: `v`, `data`, and `identity exact` when
    `exact` (see IDENTITY_FIELD; `has_exact_identity` says when)."""
    if exact:
        return {VERSION_FIELD: WIRE_VERSION, DATA_FIELD: data, IDENTITY_FIELD: EXACT_IDENTITY}
    return {VERSION_FIELD: WIRE_VERSION, DATA_FIELD: data}


def all_exact(entries: Iterable[Mapping[bytes, bytes]]) -> bool:
    """Whether every entry (stream fields, as `entry_fields` builds them) is marked `identity exact`."""
    return all(entry.get(IDENTITY_FIELD) == EXACT_IDENTITY for entry in entries)


def has_exact_identity(present: Container[str]) -> bool:
    """Whether a record whose sender wrote the fields `present` is identified by (mcp_id, interaction_id,
    timestamp) alone: its author wrote `timestamp`. Otherwise a second publish of it (a retry, the same dict
    again, the generated id reused) gets another stamped time."""
    return "timestamp" in present


def _unwritable(record: Interaction, error: Exception) -> InvalidRecordError:
    """The error for a record pydantic-core cannot write as JSON: nested too deeply (its writer stops at about 255
    levels, where it says "Maximum serialization depth exceeded"), else text that is not Unicode."""
    if "depth" in str(error):
        return _too_deep(record)
    return _refused(
        record,
        _holds_surrogate,
        f"is not valid Unicode text (a lone surrogate, typically from bytes decoded with 'surrogateescape'): {error}",
    )


def encode_record(record: Interaction) -> str:
    """The record's JSON as stored in the `data` field of the stream entry and the `data` column."""
    try:
        encoded = record.model_dump_json(exclude_none=True)
    except PydanticSerializationError as error:  # lone surrogates, or nesting deeper than the writer goes
        raise _unwritable(record, error) from None
    ensure_readable(encoded, record)
    ensure_storable(encoded, record)
    return encoded


def ensure_storable(encoded: str, record: Interaction) -> None:
    """Raise InvalidRecordError if PostgreSQL could not store `encoded` (the JSON of `record`) as sent.

    Cheap substring tests guard the precise checks, so the common record pays a few hundred nanoseconds.
    """
    # pydantic raises for a lone surrogate in a value but silently writes U+FFFD for one in a dict key.
    if "\ufffd" in encoded and _path(record, _holds_surrogate) is not None:
        raise _refused(record, _holds_surrogate, "has a key that is not valid Unicode text (a lone surrogate)")
    if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        raise _refused(
            record,
            _holds_nul,
            "contains the NUL character U+0000, which PostgreSQL cannot store in TEXT or JSONB; remove it or "
            "encode the value (base64, hex)",
        )
    suspicious = "NaN" in encoded or "Infinity" in encoded
    if suspicious or (len(encoded) > MAX_INT_DIGITS and _LONG_DIGITS.search(encoded)):
        problem = _json_problem(encoded)
        if problem == "non_finite":
            raise _refused(
                record,
                _is_non_finite,
                "is NaN or infinite (or a number too large for a double, such as 1e400), which JSON cannot carry; "
                "send null or a string instead",
            )
        if problem == "huge_int":
            raise _refused(
                record,
                _is_huge_int,
                f"is an integer of more than {MAX_INT_DIGITS} digits, which JSON parsers refuse; send it as a string",
            )


def ensure_readable(encoded: str, record: Interaction) -> None:
    """Raise InvalidRecordError if the worker's JSON parser would refuse `encoded` (the JSON of `record`) for its
    nesting, which Python values validated by the model can exceed: for the publishers' paths from Python values
    (`prepare_record`, `encode_record`). What arrives as JSON text (the gateways, `publish-file`, the worker) is
    parsed by that parser on the way in, and needs no second look."""
    if _nests_too_deeply(encoded):
        raise _too_deep(record)


def _nests_too_deeply(encoded: str) -> bool:
    """Whether the worker's JSON parser refuses `encoded` for its nesting (`parser_refusal`)."""
    refusal = parser_refusal(encoded)
    return refusal is not None and "recursion limit" in refusal


def parser_refusal(encoded: str | bytes) -> str | None:
    """Why the worker's JSON parser (pydantic-core's, which `Interaction.model_validate_json` uses) refuses
    `encoded`, or None, when `encoded` holds `MAX_FAST_BRACKETS` brackets or more; None for any shorter text,
    without parsing it: only so many brackets can nest as deep as that parser refuses (200 levels, arrays and
    objects alike), so the limit is the worker's own. Those inside strings count too: they only cost a parse."""
    if isinstance(encoded, str):
        brackets = encoded.count("[") + encoded.count("{")
    else:
        brackets = len(encoded.translate(None, NOT_BRACKETS))
    if brackets < MAX_FAST_BRACKETS:
        return None
    try:
        from_json(encoded)
    except ValueError as error:
        return str(error)
    return None


def _too_deep(record: Interaction) -> InvalidRecordError:
    return _refused(
        record,
        _nests_too_deeply_as_a_field,
        f"nests deeper than the worker's JSON parser reads (about {MAX_FAST_BRACKETS} levels); flatten it, or send "
        "its deepest part as a string",
    )


def _nests_too_deeply_as_a_field(value: object) -> bool:
    """Whether `value`, as a top-level field of a record, makes the record too deep (the walk of `_path` asks of
    the top-level fields first, so the first it finds is the field to name)."""
    if not isinstance(value, dict | list):
        return False
    try:
        return _nests_too_deeply('{"field":' + to_json(value).decode() + "}")
    except PydanticSerializationError:  # too deep even to write
        return True


def _json_problem(encoded: str) -> str | None:
    """The precise, rare path: does the JSON hold NaN/Infinity tokens or an integer too long to parse back?"""

    def refuse(token: str) -> None:
        raise _NonFiniteError(token)

    try:
        json.loads(encoded, parse_constant=refuse)
    except _NonFiniteError:
        return "non_finite"
    except ValueError:  # Python's int max-str-digits guard, the same limit the worker's parser applies
        return "huge_int"
    return None


class _NonFiniteError(ValueError):
    pass


def _holds_surrogate(value: object) -> bool:
    return isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value)


def _is_huge_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _HUGE_INT


def _holds_nul(value: object) -> bool:
    return isinstance(value, str) and "\x00" in value


def _is_non_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _refused(record: Interaction, offending: Callable[[object], bool], problem: str) -> InvalidRecordError:
    """The error for a record the encoding refuses: its message names the first field holding an offending value
    and says `problem`; its `fields` hold that field's path (for logs that must not show values)."""
    path = _path(record, offending)
    where = "the record" if path is None else f"field '{path}'"
    return InvalidRecordError(f"invalid interaction record: {where} {problem}", fields=() if path is None else (path,))


def _path(record: Interaction, offending: Callable[[object], bool]) -> str | None:
    """The path of the first field holding an offending value, or None; only on the rare error path, so it may
    walk the record."""

    def walk(value: object, path: str) -> str | None:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if offending(value):
            return path
        if isinstance(value, dict):
            for key, item in value.items():
                found = walk(key, path) or walk(item, f"{path}.{key}")
                if found:
                    return found
        if isinstance(value, list):
            for index, item in enumerate(value):
                found = walk(item, f"{path}.{index}")
                if found:
                    return found
        return None

    fields = {name: getattr(record, name) for name in Interaction.model_fields} | (record.model_extra or {})
    for name, value in fields.items():
        found = walk(value, name)
        if found:
            return found
    return None
