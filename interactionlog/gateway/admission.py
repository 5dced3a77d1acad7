"""What the gateways accept: one record's JSON text in, its stream entry (or why it is refused) out.

The checks are the worker's own (its fast path `spans.fast_row`, and for whatever that is not sure of
`worker.decode.validate_data` and `record.ensure_storable`), so a record the gateway accepts is one a worker
stores, and a refusal carries the reason the worker would dead-letter it with. The record's JSON is kept as sent:
numbers, key order and spacing reach the table unchanged. The only change is the fields it lacks, written in
front of its first key:

- `mcp_id`: the token's (a record naming another MCP is refused as `forbidden`);
- `interaction_id`: a new UUID, returned to the client so it can retry without a duplicate;
- `timestamp`: the gateway's clock.

A gRPC `InteractionData` may also carry `mcp_id`, `interaction_id` and `timestamp` beside `data`: they fill in
what `data` lacks, and must agree with what it has.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from ..client.transports.outcomes import FORBIDDEN
from ..errors import InvalidRecordError, PermanentEntryError
from ..record import Interaction, ensure_storable, entry_fields, splice_fields
from ..rows import StoredRow
from ..spans import fast_row
from ..worker.decode import validate_data

_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


class _Present(msgspec.Struct):
    """Which of the fields the gateway may fill in a record carries (their values are left undecoded)."""

    mcp_id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    interaction_id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_PRESENT = msgspec.json.Decoder(_Present)


@dataclass(frozen=True)
class Admitted:
    """A record ready for XADD: its entry fields and its interaction_id."""

    fields: dict[bytes, bytes]
    interaction_id: str


@dataclass(frozen=True)
class Refused:
    """A record that will not be added, with the worker's (or the gateway's) reason and a message for people."""

    error_type: str
    message: str
    interaction_id: str = ""


def splice(data: bytes, fields: Mapping[str, str]) -> bytes:
    """`data` with `fields` written in front of its first key (`record.splice_fields`, the worker's own); `data`
    unchanged when it is not a JSON object's UTF-8 text (validation then says what is wrong)."""
    try:
        return splice_fields(data.decode(), fields).encode()
    except ValueError:  # UnicodeDecodeError included
        return data


def _present(data: bytes) -> _Present:
    try:
        return _PRESENT.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Present()  # not JSON, or not an object: nothing to fill, and validation says what is wrong


def admit(
    data: bytes,
    *,
    max_record_bytes: int,
    mcp_id: str | None,
    envelope: Mapping[str, str] | None = None,
    exact_identity: bool = False,
) -> Admitted | Refused:
    """Validate one record as the worker will, filling what it lacks; `mcp_id` is the token's (None without
    authentication), `envelope` the non-empty gRPC fields beside `data`, `exact_identity` whether the client said
    (`record.IDENTITY_HEADER`) that its records carry the timestamps their authors wrote."""
    envelope = envelope or {}
    present = _present(data)
    defaults: dict[str, str] = {}
    if present.mcp_id is msgspec.UNSET and (envelope.get("mcp_id") or mcp_id):
        defaults["mcp_id"] = envelope.get("mcp_id") or mcp_id or ""
    generated_id = ""
    if present.interaction_id is msgspec.UNSET:
        generated_id = envelope.get("interaction_id") or str(uuid.uuid4())
        defaults["interaction_id"] = generated_id
    if present.timestamp is msgspec.UNSET:
        defaults["timestamp"] = envelope.get("timestamp") or datetime.now(UTC).isoformat()
    text = splice(data, defaults)
    # The worker's fast path first (`spans.fast_row`: the column fields checked from the bytes, a third of the
    # model's cost); what it is not sure of, the model decides, with the worker's reasons and messages.
    row = fast_row(_NO_ENTRY, text, scrub=False) if len(text) <= max_record_bytes else None
    record: StoredRow | Interaction
    if row is not None:
        record = row
    else:
        try:
            record = validate_data(text, max_record_bytes)
            ensure_storable(text.decode(), record)
        except PermanentEntryError as error:
            return Refused(error.reason, str(error), generated_id)
        except InvalidRecordError as error:
            return Refused("unstorable_value", str(error), generated_id)
    if envelope and (disagreement := _disagreement(record, envelope)) is not None:
        return Refused("invalid_record", disagreement, record.interaction_id)
    if mcp_id is not None and record.mcp_id != mcp_id:
        return Refused(
            FORBIDDEN,
            f"field 'mcp_id': {record.mcp_id!r} is not the MCP of this token ({mcp_id!r}); publish it with a token "
            f"of {record.mcp_id!r}, or leave mcp_id out",
            record.interaction_id,
        )
    # `identity exact` only on the client's word (a timestamp in what reaches a gateway may be one a publisher
    # stamped) and for a timestamp in the record itself, not one filled in here or taken from the gRPC fields.
    exact = exact_identity and present.timestamp is not msgspec.UNSET
    return Admitted(entry_fields(text, exact=exact), record.interaction_id)


# The entry id a row needs; the gateway's rows are read for their fields only, never stored.
_NO_ENTRY = "0-0"


def _disagreement(record: StoredRow | Interaction, envelope: Mapping[str, str]) -> str | None:
    """What the gRPC envelope says differently from `data` (its row or model: the same three fields), if anything."""
    for name in ("mcp_id", "interaction_id"):
        value = envelope.get(name)
        if value and value != getattr(record, name):
            return (
                f"field '{name}': InteractionData.{name} is {value!r} but data says {getattr(record, name)!r}; "
                "send it in one place, or the same in both"
            )
    value = envelope.get("timestamp")
    if value:
        try:
            instant = _TIMESTAMP.validate_python(value)
        except ValidationError:
            return f"field 'timestamp': InteractionData.timestamp {value!r} is not an RFC 3339 time with a zone"
        if instant != record.timestamp:
            return (
                f"field 'timestamp': InteractionData.timestamp {value!r} is not the time data says "
                f"({record.timestamp.isoformat()}); send it in one place, or the same in both"
            )
    return None
