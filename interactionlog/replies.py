"""Reading Redis's replies: reply values as text, and error replies by their documented prefix.

redis-py returns bytes unless a client sets `decode_responses`, and Redis error replies are plain strings
whose first word is a code (``NOGROUP``, ``BUSYGROUP``, ``OOM``, ...; see the Redis protocol spec, "Simple
errors"). Every module reading replies goes through these two helpers so the conventions live in one place.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError


def text(value: Any) -> str:
    """A reply value as text: bytes decoded as UTF-8 (invalid bytes escaped as ``\\xNN``, never lost or
    raised on), str as it is, anything else (an int id, a float) through str()."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else str(value)


def is_error(error: ResponseError, code: str) -> bool:
    """Whether a Redis error reply carries `code` (``NOGROUP``, ``BUSYGROUP``...) as its first word."""
    return str(error).split(" ", 1)[0] == code


def is_missing_key(error: ResponseError) -> bool:
    """XINFO's reply for a stream that does not exist: ``ERR no such key``."""
    return "no such key" in str(error).lower()
