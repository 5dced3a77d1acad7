"""Keeping connection secrets out of what interactionlog writes: logs, error messages, `status` output.

A secret is found two ways, and both count: the drivers' own parsing of a URL or conninfo (libpq's through
`psycopg.conninfo`, redis-py's `parse_url`), which knows every option that carries one (`password`,
`sslpassword`, `ssl_password`, ...), and the userinfo as a person wrote it (everything between ``://`` and the
last ``@``), because a password holding ``/``, ``#`` or ``?`` unencoded makes a driver read it as a host, port
or database name, and a stray ``%`` makes it refuse the URL with the password quoted in its error. Whatever is
shown is rebuilt with every such value replaced by ``***``; error texts are scrubbed of the same values.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import psycopg
import psycopg.conninfo
from redis.connection import parse_url

MASK = "***"

# Option names whose values are secrets, in libpq (password, sslpassword), redis-py (password, ssl_password)
# and anything an operator might pass through a URL query.
_SECRET_OPTION = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"(?P<name>[^?&=#;\s]*(?:pass|secret|token|credential)[^?&=#;\s]*)=(?P<value>[^&#\s]*)", re.IGNORECASE
)


def secrets_in(url: str) -> set[str]:
    """Every secret value `url` (a URL or a libpq conninfo) carries, raw and percent-decoded, and the pieces
    (3 characters or more) of a password a driver would misread; never raises."""
    found: set[str] = set()
    for parse in (_libpq_options, _redis_options):
        for name, value in parse(url).items():
            if _SECRET_OPTION.search(name) and value:
                found.add(str(value))
    if "://" in url:
        rest = url.split("://", 1)[1]
        userinfo, at, _ = rest.rpartition("@")
        if at and ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found.add(password)
            # A driver that misreads an unencoded password shows its pieces as host, port or database name.
            found.update(piece for piece in re.split(r"[/#?]", password) if len(piece) >= 3)
    for match in _QUERY_SECRET.finditer(url):
        found.add(match.group("value"))
    found |= {unquote(value) for value in found}
    return {value for value in found if value}


def redact_url(url: str) -> str:
    """`url` with every secret replaced by ``***``, safe for logs, errors and `status` output."""
    if "://" not in url:  # a libpq key=value conninfo
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "<unparseable conninfo, not shown>"
        shown = {k: (MASK if _SECRET_OPTION.search(k) else str(v)) for k, v in params.items()}
        return psycopg.conninfo.make_conninfo(**shown)
    scheme, rest = url.split("://", 1)
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostpart}"
    rest = _QUERY_SECRET.sub(lambda match: f"{match.group('name')}={MASK}", rest)
    return redact_text(f"{scheme}://{rest}", url)


def redact_text(text: str, *urls: str) -> str:
    """`text` (an error message, a log value) with every secret of `urls` replaced by ``***``, longest first so
    a secret containing another is masked whole."""
    for secret in sorted(set().union(*(secrets_in(url) for url in urls)), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _libpq_options(url: str) -> dict[str, object]:
    try:
        return dict(psycopg.conninfo.conninfo_to_dict(url))
    except psycopg.Error:
        return {}


def _redis_options(url: str) -> dict[str, object]:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    try:
        return dict(parse_url(url))  # type: ignore[no-untyped-call]  # redis-py leaves this helper untyped
    except (ValueError, TypeError):
        return {}
