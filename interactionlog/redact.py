"""Keeping secrets out of what interactionlog writes: logs, error messages, `status` output.

Today this covers connection URLs; a URL or conninfo is shown with its password (and a gateway URL with its
`token=`) replaced by ``***``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg.conninfo

_SECRET_QUERY_KEYS = frozenset({"password", "token"})


def redact_url(url: str) -> str:
    """The URL with any password or token replaced by '***', safe for logs, errors and status output."""
    if "://" not in url:  # a PostgreSQL key=value conninfo
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            return "<unparseable conninfo>"
        if "password" in params:
            params["password"] = "***"  # noqa: S105
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
