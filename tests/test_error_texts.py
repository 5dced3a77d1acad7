"""Error texts that reach logs and dead letters never echo a secret from the payload and never grow with the
input: they name the field and the kind of problem, with at most a short preview of a harmless value."""

from __future__ import annotations

import json

import pytest

from interactionlog.errors import PermanentEntryError
from interactionlog.worker.decode import decode_entry

LIMIT = 64 * 1024 * 1024
SECRETS = ("hunter2", "sk-live-1234567890abcdef")


def _error_of(fields: dict[bytes, bytes]) -> PermanentEntryError:
    with pytest.raises(PermanentEntryError) as caught:
        decode_entry("1700000000000-0", fields, LIMIT)
    return caught.value


@pytest.mark.parametrize(
    "data",
    [
        # mcp_id missing: the whole record was the offending value, and was quoted.
        json.dumps({"request": {"password": SECRETS[0], "api_key": SECRETS[1]}}),
        # a payload field of the wrong shape, holding secrets
        json.dumps({"mcp_id": "m", "metadata": f"password={SECRETS[0]} key={SECRETS[1]}"}),
        # a known field of the wrong type whose value is a secret
        json.dumps({"mcp_id": "m", "session_id": 5, "duration_ms": f"{SECRETS[0]}{SECRETS[1]}"}),
        # broken JSON whose text holds secrets
        '{"mcp_id": "m", "request": {"password": "' + SECRETS[0] + '", "api_key": "' + SECRETS[1] + '"',
    ],
)
def test_an_error_text_never_quotes_a_secret_from_the_record(data: str) -> None:
    """The dead letter's error names the field and the problem, never the payload's values."""
    message = str(_error_of({b"v": b"1", b"data": data.encode()}))
    for secret in SECRETS:
        assert secret not in message, message
    assert "field" in message or "JSON" in message


@pytest.mark.parametrize(
    "fields",
    [
        {b"v": b"9" * 10_000_000, b"data": b"{}"},  # a 10 MB version field
        {f"field-{index}-{'x' * 1000}".encode(): b"1" for index in range(10_000)},  # 10,000 long field names
        {b"v": b"1", b"data": json.dumps({"mcp_id": "m", "x" * 5_000_000: 1, "tool": 5}).encode()},
        {b"v": b"1", b"data": b"{" + b"x" * 5_000_000},
    ],
    ids=["huge version", "ten thousand long names", "huge unknown key beside a bad field", "huge broken JSON"],
)
def test_an_error_text_stays_short_whatever_the_input(fields: dict[bytes, bytes]) -> None:
    """However large the entry, its error text (a log line, a dead letter's field) stays under 2,000 characters."""
    assert len(str(_error_of(fields))) <= 2000


def test_a_harmless_value_is_still_previewed_to_help() -> None:
    """A wrong value in a plain field (tool) is shown, briefly, so the author sees what was sent."""
    message = str(_error_of({b"v": b"1", b"data": b'{"mcp_id": "m", "tool": 12345}'}))
    assert "field 'tool'" in message
    assert "12345" in message
