"""The dead-letter format: what a dead letter holds, how it is written, and how the original entry is recovered.

A dead letter is the original entry's fields plus the worker's own fields below, XADDed to the dead-letter
stream (`<stream>:dlq` by default) in the same MULTI as the original's XACK. An original field whose name
collides with one of the worker's is kept under ``original.<name>``, so nothing the publisher sent is
overwritten; `original_fields` undoes that for replay. The worker writes this format (`streams.StreamGroup.settle`)
and the operator tools read it (`ops.dlq`); this module is the one place that defines it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import metrics, shards
from ..record import DATA_FIELD, splice_fields
from .decode import entry_defaults

if TYPE_CHECKING:
    from .streams import Entry

# The worker's fields of a dead letter. `deliveries` is the entry's delivery count (Redis's word, XPENDING);
# the field keeps its short name because dead letters already written carry it.
ERROR = b"error"
ERROR_TYPE = b"error_type"
SOURCE_ID = b"source_id"
DELIVERY_COUNT = b"deliveries"
GROUP = b"group"
CONSUMER = b"consumer"
FAILED_AT = b"failed_at"
STREAM = b"stream"
DEAD_LETTER_FIELDS = frozenset({ERROR, ERROR_TYPE, SOURCE_ID, DELIVERY_COUNT, GROUP, CONSUMER, FAILED_AT, STREAM})
ORIGINAL_PREFIX = b"original."

# Every `error_type` a worker writes (the `reason` label of entries_dead_lettered_total): one list, in metrics.
DEAD_LETTER_REASONS = metrics.DEAD_LETTER_REASONS


@dataclass(frozen=True)
class DeadLetter:
    """An entry that can never be stored, with the reason a person needs to act on it."""

    entry: Entry
    reason: str
    error: str
    delivery_count: int


def dead_letter_fields(
    letter: DeadLetter, *, stream: str, group: str, consumer: str, failed_at: str
) -> dict[bytes, bytes | str]:
    """The fields XADDed to the dead-letter stream for `letter`: the original ones, then the worker's."""
    fields: dict[bytes, bytes | str] = {
        (ORIGINAL_PREFIX + name if name in DEAD_LETTER_FIELDS or name.startswith(ORIGINAL_PREFIX) else name): value
        for name, value in letter.entry.fields.items()
    }
    fields.update(
        {
            ERROR: letter.error,
            ERROR_TYPE: letter.reason,
            SOURCE_ID: letter.entry.id,
            STREAM: stream,
            DELIVERY_COUNT: str(letter.delivery_count),
            GROUP: group,
            CONSUMER: consumer,
            FAILED_AT: failed_at,
        }
    )
    return fields


def original_fields(dead_letter_fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields the publisher originally sent, recovered from a dead letter (used by replay)."""
    return {
        (name.removeprefix(ORIGINAL_PREFIX) if name.startswith(ORIGINAL_PREFIX) else name): value
        for name, value in dead_letter_fields.items()
        if name not in DEAD_LETTER_FIELDS
    }


def replay_fields(dead_letter_fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The fields to publish again for a dead letter: the original ones, and, when its record lacks
    `interaction_id` or `timestamp`, the ones the worker derived from the entry it was first published as
    (`source_id`), spliced into the record's text as the worker splices them.

    So a replayed record keeps the identity and time of its first publication: replayed any number of times,
    concurrently or not, it is stored once, with its original time. Entries whose `data` is not a JSON object are
    replayed as they are (they come back as dead letters, unless the worker has learnt to read them).
    """
    fields = original_fields(dead_letter_fields)
    source_id = dead_letter_fields.get(SOURCE_ID)
    data = fields.get(DATA_FIELD)
    if source_id is None or data is None:
        return fields
    try:
        value = json.loads(data)
        missing = {"interaction_id", "timestamp"} - value.keys() if isinstance(value, dict) else set()
        if missing:
            stream = dead_letter_fields.get(STREAM, b"").decode()
            defaults = entry_defaults(source_id.decode(), missing, shards.identity_prefix(stream))
            fields[DATA_FIELD] = splice_fields(data.decode(), defaults).encode()
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or a source id that is not an entry id
        pass
    return fields
