"""`interactionlog publish FILE`: JSON lines to stream entries, each line's text kept as it is, and ids that make
running the same file again safe.

A line without `interaction_id` gets one derived from its own text and how many identical lines came before it
in the input (``line-<sha256 of the line, 32 hex digits>-<n>``, n counting from 1). Publishing the file again,
after a failure part-way or with bad lines fixed, therefore gives every line the id it had the first time, and
the sink stores each line once. Identical lines are told apart by their rank among identical lines, so two equal
lines stay two records; the same line in another file is taken for the same record (give such records an
`interaction_id` of their own). A line without `timestamp` gets the time it is published.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator

from pydantic import ValidationError

from ..errors import InvalidRecordError, RecordTooLargeError
from ..record import (
    Interaction,
    defaults_to_splice,
    describe_validation_error,
    ensure_storable,
    has_exact_identity,
    refuse_unknown_fields,
    splice_fields,
    wire_fields,
)


def line_interaction_id(line: bytes, occurrence: int) -> str:
    """The interaction id of a line that has none: its text's digest and its rank among identical lines."""
    return f"line-{hashlib.sha256(line).hexdigest()[:32]}-{occurrence}"


def encode_line(line: bytes, occurrence: int, max_record_bytes: int, *, strict: bool = False) -> dict[bytes, bytes]:
    """The stream entry's fields for one JSON line (without its line break): the line's own text, with the
    defaults it lacks spliced in. Raises InvalidRecordError or RecordTooLargeError saying what is wrong."""
    try:
        record = Interaction.model_validate_json(line)
    except ValidationError as error:
        raise InvalidRecordError(describe_validation_error(error, line)) from None
    if strict:
        refuse_unknown_fields(record)
    present = record.model_fields_set
    if "interaction_id" not in present:
        record = record.model_copy(update={"interaction_id": line_interaction_id(line, occurrence)})
    encoded = splice_fields(line.decode(), defaults_to_splice(record, present))
    ensure_storable(encoded, record)
    # The id of a line without one is derived from the line, so publishing the file again repeats it: only a
    # timestamp written in the line makes its identity exact.
    return wire_fields(record, encoded, max_record_bytes, exact=has_exact_identity(present))


def read_json_lines(
    source: Iterable[bytes], max_record_bytes: int, *, strict: bool = False
) -> Iterator[tuple[int, dict[bytes, bytes] | str]]:
    """Yield (line number, entry fields) or (line number, what is wrong) for each non-blank line of `source`."""
    seen: Counter[bytes] = Counter()
    for number, raw in enumerate(source, start=1):
        line = raw.strip()
        if not line:
            continue
        seen[line] += 1
        try:
            yield number, encode_line(line, seen[line], max_record_bytes, strict=strict)
        except (InvalidRecordError, RecordTooLargeError) as error:
            yield number, str(error).removeprefix("invalid interaction record: ")
