"""The HTTP ingest body: its three forms, gzip, and the size cap.

- `application/json`: one record (a JSON object) or a JSON array of records;
- `application/x-ndjson` (or `application/jsonl`): one record per line, blank lines skipped;
- either with `Content-Encoding: gzip`.

Records come out as their raw JSON text, never decoded and re-encoded, so numbers reach the table as sent. A body
that cannot be split into records is malformed as a whole (400); one record of an array or a line of NDJSON
that is wrong is that record's problem, answered in its own result.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import msgspec

JSON_TYPES = frozenset({"application/json", ""})
NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/jsonl", "application/json-lines", "application/jsonlines"}
)
_WHITESPACE = b" \t\r\n"
_RECORDS = msgspec.json.Decoder(list[msgspec.Raw])
_ONE_VALUE = msgspec.json.Decoder(msgspec.Raw)


class BodyError(Exception):
    """The body as a whole is refused: `status` (400, 408, 413, 415), a short `error` code and a message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


async def read_capped(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The whole body, refusing (413) one announced or found to be over `max_bytes` before reading it all."""
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise _too_large(int(content_length), max_bytes)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(len(body), max_bytes, at_least=True)
    return bytes(body)


def _too_large(size: int, max_bytes: int, *, at_least: bool = False) -> BodyError:
    return BodyError(
        413,
        "body_too_large",
        f"the body is {'over ' if at_least else ''}{size} bytes, over the {max_bytes}-byte cap (--max-body-bytes); "
        "send fewer records per request",
    )


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding (gzip, or none), inflated to at most `max_bytes` (413 beyond)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in {"gzip", "x-gzip"}:
        raise BodyError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not accepted; send gzip or none"
        )
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        inflated = inflater.decompress(body, max_bytes + 1)  # a bomb stops here, not in memory
    except zlib.error as error:
        raise BodyError(400, "malformed_gzip", f"the gzip body cannot be inflated: {error}") from None
    if len(inflated) > max_bytes:
        raise BodyError(413, "body_too_large", f"the body inflates to over the {max_bytes}-byte cap (--max-body-bytes)")
    if not inflater.eof:
        raise BodyError(400, "malformed_gzip", "the gzip body is truncated")
    return inflated


def split_records(body: bytes, content_type: str | None) -> list[bytes]:
    """The records' raw JSON texts, in order; raises BodyError for a body that is malformed as a whole."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in NDJSON_TYPES:
        records = [line for line in body.split(b"\n") if line.strip(_WHITESPACE)]
    elif media_type in JSON_TYPES:
        records = _json_records(body)
    else:
        raise BodyError(
            415,
            "unsupported_media_type",
            f"Content-Type {media_type!r} is not accepted; send application/json (a record or an array of records) "
            "or application/x-ndjson (one record per line)",
        )
    if not records:
        raise BodyError(400, "no_records", "the body holds no record")
    return records


def _json_records(body: bytes) -> list[bytes]:
    first = body.lstrip(_WHITESPACE)[:1]
    try:
        if first == b"[":
            return [bytes(raw) for raw in _RECORDS.decode(body)]
        if first == b"{":
            _ONE_VALUE.decode(body)  # one well-formed JSON value and nothing after it
            return [body]
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BodyError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    raise BodyError(
        400,
        "malformed_json",
        "the body must be a JSON object (one record) or a JSON array of objects; for one record per line, send "
        "Content-Type: application/x-ndjson",
    )
