"""From stream entry to table row: the worker's validation of one entry, and the row shape it produces.

The checks are the publisher's (`record.Interaction`, `record.ensure_storable`), so whatever a publisher accepts
a worker stores; what the worker adds is the wire-format envelope (`v`, `data`) and the defaults derived from
the entry id for records sent without `interaction_id` or `timestamp`. Fields the model does not know are kept
in `data` as sent; `data` is the publisher's JSON text, with only those defaults spliced in.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from itertools import repeat
from typing import cast

from pydantic import ValidationError

from .. import entry_ids
from ..errors import InvalidRecordError, PermanentEntryError
from ..record import (
    DATA_FIELD,
    VERSION_FIELD,
    WIRE_VERSION,
    Interaction,
    bounded,
    describe_validation_error,
    ensure_storable,
    format_timestamp,
    splice_fields,
)
from ..rows import StoredRow, row_of
from ..scrub import scrub_stored_json
from ..spans import fast_row, fast_rows

__all__ = ["StoredRow", "decode_entries", "decode_entry", "entry_defaults", "model_row", "validate_data"]


def entry_defaults(entry_id: str, missing: set[str] | frozenset[str], identity_prefix: str = "") -> dict[str, str]:
    """The defaults a raw record lacking the `missing` fields gets from the id of the entry it was first
    published as: that id as `interaction_id` (after `identity_prefix`, a shard's `shards.Shard.identity_prefix`,
    empty with one stream), the time Redis added it as `timestamp` (RFC 3339, milliseconds).

    Derived from the entry id, not from the clock or a random UUID, so a redelivered entry is still stored once;
    `dlq replay` writes them into a dead letter's record from its `source_id`, so a replayed one is too.
    """
    found: dict[str, str] = {}
    if "interaction_id" in missing:
        found["interaction_id"] = identity_prefix + entry_id
    if "timestamp" in missing:
        found["timestamp"] = format_timestamp(entry_ids.added_at(entry_id), "milliseconds")
    return found


def decode_entry(
    entry_id: str, fields: dict[bytes, bytes], max_record_bytes: int, *, scrub: bool = True, identity_prefix: str = ""
) -> StoredRow:
    """Validate one stream entry as the worker receives it, or raise `PermanentEntryError` saying why.

    Most records take `spans.fast_row`, which builds no Python object for the payloads; whatever it is not sure
    of comes here to the model, so reasons and messages are the model's.

    With `scrub` (the `scrub_payloads` setting), secrets in the payload are replaced by markers before storage;
    the data column otherwise holds the publisher's JSON unchanged (see `scrub.scrub_stored_json`).

    A record sent without `interaction_id` or `timestamp` (a plain XADD from another language) gets them
    from the entry id, not from the clock or a random UUID, so a redelivered entry is still stored once.
    """
    version = fields.get(VERSION_FIELD)
    data = fields.get(DATA_FIELD)
    if version is None or data is None:
        names = sorted(bounded(name.decode("utf-8", "replace"), 40) for name in list(fields)[:10])
        more = f" and {len(fields) - len(names)} more" if len(fields) > len(names) else ""
        raise PermanentEntryError(
            "not_wire_format",
            f"entry has fields {names}{more}, expected 'v' and 'data'; publish with "
            "XADD <stream> MAXLEN ~ <cap> * v 1 data <JSON object>",
        )
    if version != WIRE_VERSION:
        raise PermanentEntryError(
            "unsupported_version",
            f"wire version {bounded(repr(version.decode('utf-8', 'replace')), 40)} is not supported by this worker "
            f"(it reads version {WIRE_VERSION.decode()}); upgrade the worker or publish with v 1",
        )
    if len(data) <= max_record_bytes and (row := fast_row(entry_id, data, scrub=scrub)) is not None:
        return row  # the common record, validated from its bytes; anything else is the model's to decide
    return model_row(entry_id, data, max_record_bytes, scrub=scrub, identity_prefix=identity_prefix)


def decode_entries(
    entry_ids: Sequence[str],
    fields: Sequence[dict[bytes, bytes]],
    max_record_bytes: int,
    *,
    scrub: bool = True,
    identity_prefix: str = "",
) -> tuple[list[StoredRow], dict[int, PermanentEntryError]]:
    """`decode_entry` of each entry (`entry_ids[i]`, `fields[i]`), with the same answers: the rows of the entries
    that decode, in order, and the error of each one that does not, by its position.

    The entries in the wire format and within max_record_bytes take `spans.fast_rows` together, which does each
    check once over many records; those it is not sure of take the model's path (`model_row`), and the others
    `decode_entry` each (which says why they cannot be stored). Before, one entry outside the wire format or the
    cap (a newer publisher's version, an oversize record) sent its whole batch one entry at a time.
    """
    datas = list(map(dict.get, fields, repeat(DATA_FIELD)))
    versions = list(map(dict.get, fields, repeat(VERSION_FIELD)))
    eligible: Container[int]
    if (
        None not in datas
        and versions.count(WIRE_VERSION) == len(versions)
        and max(map(len, cast(list[bytes], datas)), default=0) <= max_record_bytes
    ):
        fast = fast_rows(entry_ids, cast(list[bytes], datas), scrub=scrub)
        if None not in fast:
            return cast(list[StoredRow], fast), {}
        eligible = range(len(datas))
    else:
        chosen = [
            position
            for position, (data, version) in enumerate(zip(datas, versions, strict=True))
            if data is not None and version == WIRE_VERSION and len(data) <= max_record_bytes
        ]
        fast = [None] * len(datas)
        if chosen:
            answers = fast_rows([entry_ids[i] for i in chosen], [cast(bytes, datas[i]) for i in chosen], scrub=scrub)
            for position, row in zip(chosen, answers, strict=True):
                fast[position] = row
        eligible = set(chosen)
    rows: list[StoredRow] = []
    errors: dict[int, PermanentEntryError] = {}
    for position, (entry_id, entry_fields, row) in enumerate(zip(entry_ids, fields, fast, strict=True)):
        if row is not None:
            rows.append(row)
            continue
        try:
            if position in eligible:  # fast_rows has said what fast_row would: the model decides
                data = entry_fields[DATA_FIELD]
                rows.append(model_row(entry_id, data, max_record_bytes, scrub=scrub, identity_prefix=identity_prefix))
            else:  # outside the wire format or the cap: decode_entry says why
                rows.append(
                    decode_entry(entry_id, entry_fields, max_record_bytes, scrub=scrub, identity_prefix=identity_prefix)
                )
        except PermanentEntryError as error:
            errors[position] = error
    return rows, errors


def model_row(
    entry_id: str, data: bytes, max_record_bytes: int, *, scrub: bool, identity_prefix: str = ""
) -> StoredRow:
    """The row for an entry's `data` as the `Interaction` model validates it, or `PermanentEntryError` saying
    why: the slower path, which decides whatever `spans.fast_row` is not sure of (tests hold the two to the same
    rows). The fast path leaves every record lacking `interaction_id` to this one, so `identity_prefix` (see
    `entry_defaults`) is applied here only."""
    record = validate_data(data, max_record_bytes)
    missing = {"interaction_id", "timestamp"} - record.model_fields_set
    # The publisher's JSON goes to the data column as sent: already validated, cheaper than re-encoding it,
    # and exact (PostgreSQL keeps numbers as numeric, where a round trip through Python would turn them into
    # doubles). Defaults a raw record lacks are spliced into its text, never re-encoded.
    encoded = data.decode()
    if missing:
        encoded = splice_fields(encoded, entry_defaults(entry_id, missing, identity_prefix))
        values = {"interaction_id": identity_prefix + entry_id, "timestamp": entry_ids.added_at(entry_id)}
        record = record.model_copy(update={name: values[name] for name in missing})
    try:
        ensure_storable(encoded, record)
    except InvalidRecordError as error:
        raise PermanentEntryError("unstorable_value", str(error)) from error
    if scrub:  # the worker's scrubbing pass: covers publishers in any language
        encoded = scrub_stored_json(encoded)
    return row_of(record, encoded, entry_id)


def validate_data(data: bytes, max_record_bytes: int) -> Interaction:
    """Validate one record's JSON text (an entry's `data`, or a record sent to a gateway), or raise
    `PermanentEntryError` with the reason: too_large, invalid_json, not_json_object or invalid_record."""
    if len(data) > max_record_bytes:
        raise PermanentEntryError(
            "too_large",
            f"data is {len(data)} bytes, over the {max_record_bytes}-byte cap (max_record_bytes); "
            "shrink the record or raise the cap on publishers and workers alike",
        )
    try:
        record = Interaction.model_validate_json(data)
    except ValidationError as error:
        kinds = {(item["type"], bool(item["loc"])) for item in error.errors()}
        if ("json_invalid", False) in kinds:
            raise PermanentEntryError(
                "invalid_json", f"data is not valid JSON: {describe_validation_error(error)}"
            ) from error
        if ("model_type", False) in kinds:
            raise PermanentEntryError(
                "not_json_object", "data is JSON but not a JSON object; send one object per record"
            ) from error
        raise PermanentEntryError("invalid_record", describe_validation_error(error, data)) from error
    return record
