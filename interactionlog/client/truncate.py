"""Truncating an oversize record from instrumentation so that it fits the size cap, with a marker, not refused.

Only the payload fields (`request`, `response`, `error`, `metadata` apart from interactionlog's own notes) are
truncated, largest first: each is replaced by a marker object holding the original size and a prefix of its
JSON text. The plain `Publisher` never truncates: it refuses an oversize record with `RecordTooLargeError`.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RecordTooLargeError
from ..record import Interaction, encode_record

TRUNCATED_NOTE = "interactionlog.truncated"
_FIELDS = ("request", "response", "error")
_PREVIEW_CHARS = 1024


def _marker(value: Any, preview_chars: int) -> dict[str, Any]:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return {TRUNCATED_NOTE: True, "original_bytes": len(text.encode()), "preview": text[:preview_chars]}


def truncate_to_fit(record: Interaction, max_record_bytes: int) -> Interaction:
    """`record` with its largest payload fields replaced by truncation markers until its JSON fits.

    ``metadata["interactionlog.truncated"]`` then holds the record's original encoded size and the fields cut.
    Raises RecordTooLargeError if even the record without payloads is over the cap (its metadata is too big).
    """
    original_bytes = len(encode_record(record).encode())
    sizes = {
        name: len(json.dumps(getattr(record, name), ensure_ascii=False, default=str))
        for name in _FIELDS
        if getattr(record, name) is not None
    }
    cut: list[str] = []
    update: dict[str, Any] = {}
    candidate = record
    for preview_chars in (_PREVIEW_CHARS, 0):
        for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
            update[name] = _marker(getattr(record, name), preview_chars)
            if name not in cut:
                cut.append(name)
            metadata: dict[str, Any] = dict(record.metadata or {})
            metadata[TRUNCATED_NOTE] = {"original_bytes": original_bytes, "fields": cut}
            candidate = record.model_copy(update={**update, "metadata": metadata})
            if len(encode_record(candidate).encode()) <= max_record_bytes:
                return candidate
    raise RecordTooLargeError(
        f"record {record.interaction_id!r} of {record.mcp_id!r} is over the {max_record_bytes}-byte cap even with "
        "its request, response and error truncated; shrink its metadata"
    )
