"""Reading Redis's replies: reply values as text, and error replies by their documented prefix.

redis-py returns bytes unless a client sets `decode_responses`, and Redis error replies are plain strings
whose first word is a code (``NOGROUP``, ``BUSYGROUP``, ``OOM``, ...; see the Redis protocol spec, "Simple
errors"). Every module reading replies goes through these two helpers so the conventions live in one place.
"""

from __future__ import annotations

import re
from typing import Any

from redis.exceptions import ResponseError

# Error replies that say "not now" rather than "never": memory full under noeviction (OOM), a replica after a
# failover (READONLY, and UNBLOCKED for a blocked read when the role changed), a dataset still loading
# (LOADING), a script running too long (BUSY), an ACL change (NOPERM), persistence failing (MISCONF), missing
# replicas (NOREPLICAS), cluster states (MASTERDOWN, TRYAGAIN, CLUSTERDOWN), a queued command refused inside
# MULTI (EXECABORT), and a key of the wrong type (WRONGTYPE), which an operator fixes. The command was not
# applied; retrying it later is right.
REFUSAL_CODES = frozenset(
    {
        "OOM", "READONLY", "UNBLOCKED", "LOADING", "BUSY", "NOPERM", "MISCONF", "NOREPLICAS", "MASTERDOWN",
        "TRYAGAIN", "CLUSTERDOWN", "EXECABORT", "WRONGTYPE",
    }
)  # fmt: skip
# redis-py rewrites an error raised by a pipelined command as "Command # n (...) of pipeline caused error: (...)".
_PIPELINE_ERROR = re.compile(r"caused error: \(?['\"]?([A-Z]+) ")


def text(value: Any) -> str:
    """A reply value as text: bytes decoded as UTF-8 (invalid bytes escaped as ``\\xNN``, never lost or
    raised on), str as it is, anything else (an int id, a float) through str()."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else str(value)


def is_error(error: ResponseError, code: str) -> bool:
    """Whether a Redis error reply carries `code` (``NOGROUP``, ``BUSYGROUP``...) as its first word."""
    return str(error).split(" ", 1)[0] == code


def error_code(error: ResponseError) -> str:
    """The error reply's code (``OOM``, ``NOGROUP``...): redis-py strips it from the message of the errors it maps
    to classes (keeping it as `status_code`), and buries it in pipeline errors."""
    status_code = getattr(error, "status_code", None)
    if status_code:
        return str(status_code)
    message = str(error)
    if (found := _PIPELINE_ERROR.search(message)) is not None:
        return found.group(1)
    return message.split(" ", 1)[0]


def is_refusal(error: ResponseError) -> bool:
    """Whether an error reply is one Redis may stop giving (see REFUSAL_CODES): retry later, do not crash."""
    return error_code(error) in REFUSAL_CODES


def is_missing_key(error: ResponseError) -> bool:
    """XINFO's reply for a stream that does not exist: ``ERR no such key``."""
    return "no such key" in str(error).lower()
