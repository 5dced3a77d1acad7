"""The `Interaction` record, its wire encoding, and the validation shared by publishers and workers.

Wire format (one stream entry per record): ``XADD <stream> MAXLEN ~ <cap> * v 1 data <JSON object>``.
The publisher and the worker validate with the same model, so whatever a publisher accepts a worker stores,
and whatever a worker would dead-letter a publisher refuses up front.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic_core import PydanticSerializationError

from .errors import InvalidRecordError

WIRE_VERSION = b"1"
VERSION_FIELD = b"v"
DATA_FIELD = b"data"

# Columns are TEXT with B-tree indexes; the caps keep one runaway value from bloating the index.
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
Identifier = Annotated[str, Field(min_length=1, max_length=100)]

# JSON escapes U+0000 as \u0000, preceded by an even number of backslashes (an odd count means the
# backslash itself was escaped and the text is a literal "\u0000"). PostgreSQL refuses U+0000 in both
# TEXT and JSONB, so a record carrying it could never be stored.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

# Python (and the worker's JSON parser) refuse to parse integers longer than this many digits.
MAX_INT_DIGITS = 4300
_HUGE_INT = 10**MAX_INT_DIGITS
# Anchored at the start of a digit run by the lookbehind, so each run is tried once: linear in the record's size.
# Without it the search retried from every digit of a run just under the limit, quadratic (1.8 s on 252 KB).
_LONG_DIGITS = re.compile(rf"(?<!\d)\d{{{MAX_INT_DIGITS + 1}}}")


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

    ``(mcp_id, interaction_id, timestamp)`` identifies a record: publishing it twice stores it once. The
    timestamp defaults to the moment of validation, so a record is republished as the same one only with its
    first timestamp (validate once and publish that object again, or set the timestamp).
    Unknown fields are refused rather than dropped, so a typo (``tool_name`` for ``tool``) is caught at
    publish time instead of silently losing the value.
    """

    # Strict: a string is not coerced into a number or a boolean, so stored values are what was sent.
    # Non-finite numbers (NaN, Infinity, or 1e400, which overflows to infinity) are written as JSON's
    # non-standard tokens rather than as null, so that encode_record can refuse them instead of storing a
    # silently different value.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, ser_json_inf_nan="constants")

    mcp_id: Identifier
    interaction_id: Identifier = Field(default_factory=_new_interaction_id)
    # Lax on purpose: ISO 8601 strings are how JSON and most publishers spell time.
    timestamp: Annotated[AwareDatetime, Field(strict=False)] = Field(default_factory=_utc_now)
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


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, naming the field, what is wrong, and the offending value."""
    problems = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "record"
        value = repr(item.get("input"))
        if len(value) > 60:
            value = value[:57] + "..."
        problems.append(f"field '{field}': {item['msg']} (got {value})")
    return "; ".join(problems)


def validate_record(record: Interaction | dict[str, Any]) -> Interaction:
    """Return `record` as a validated `Interaction`, or raise `InvalidRecordError` naming the fields."""
    if isinstance(record, Interaction):
        return record
    try:
        return Interaction.model_validate(record)
    except ValidationError as error:
        raise InvalidRecordError(f"invalid interaction record: {describe_validation_error(error)}") from error


def encode_record(record: Interaction) -> str:
    """The record's JSON as stored in the `data` field of the stream entry and the `data` column."""
    try:
        encoded = record.model_dump_json(exclude_none=True)
    except PydanticSerializationError as error:  # lone surrogates: text that is not encodable Unicode
        raise InvalidRecordError(
            f"invalid interaction record: {_locate(record, _holds_surrogate)} is not valid Unicode text (a lone "
            f"surrogate, typically from bytes decoded with 'surrogateescape'): {error}"
        ) from None
    ensure_storable(encoded, record)
    return encoded


def ensure_storable(encoded: str, record: Interaction) -> None:
    """Raise InvalidRecordError if PostgreSQL could not store `encoded` (the JSON of `record`) as sent.

    Cheap substring tests guard the precise checks, so the common record pays a few hundred nanoseconds.
    """
    # pydantic raises for a lone surrogate in a value but silently writes U+FFFD for one in a dict key.
    if "\ufffd" in encoded and (where := _locate(record, _holds_surrogate)) != "the record":
        raise InvalidRecordError(
            f"invalid interaction record: {where} has a key that is not valid Unicode text (a lone surrogate)"
        )
    if "\\u0000" in encoded and _NUL_ESCAPE.search(encoded):
        raise InvalidRecordError(
            f"invalid interaction record: {_locate(record, _holds_nul)} contains the NUL character U+0000, "
            "which PostgreSQL cannot store in TEXT or JSONB; remove it or encode the value (base64, hex)"
        )
    suspicious = "NaN" in encoded or "Infinity" in encoded
    if suspicious or (len(encoded) > MAX_INT_DIGITS and _LONG_DIGITS.search(encoded)):
        problem = _json_problem(encoded)
        if problem == "non_finite":
            raise InvalidRecordError(
                f"invalid interaction record: {_locate(record, _is_non_finite)} is NaN or infinite (or a number "
                "too large for a double, such as 1e400), which JSON cannot carry; send null or a string instead"
            )
        if problem == "huge_int":
            raise InvalidRecordError(
                f"invalid interaction record: {_locate(record, _is_huge_int)} is an integer of more than "
                f"{MAX_INT_DIGITS} digits, which JSON parsers refuse; send it as a string"
            )


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


def _locate(record: Interaction, offending: Callable[[object], bool]) -> str:
    """Name the first field holding an offending value; only on the rare error path, so it may walk the record."""

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

    for name in Interaction.model_fields:
        found = walk(getattr(record, name), name)
        if found:
            return f"field '{found}'"
    return "the record"
