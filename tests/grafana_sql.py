"""What Grafana's PostgreSQL data source sends for a panel's SQL: variables, intervals and macros expanded.

Follows Grafana's own order: the dashboard's template variables are interpolated first (a multi-value variable
becomes a comma-separated list of single-quoted values), then `$__interval_ms` and `$__interval`, then the
macros as pkg/tsdb/grafana-postgresql-datasource/macros.go expands them (`$__timeFilter(col)` is
`col BETWEEN '<from>' AND '<to>'` in RFC 3339 UTC, `$__timeGroup(col, 1m)` is
`floor(extract(epoch from col)/60)*60`, `$__timeGroupAlias` adds `AS "time"`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _seconds(interval: str) -> float:
    match = _INTERVAL.match(interval.strip().strip("'"))
    assert match, f"unparseable interval {interval!r}"
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def interval_ms(interval: str) -> int:
    """`1m` -> 60000."""
    return round(_seconds(interval) * 1000)


def expand(
    raw_sql: str,
    *,
    time_from: datetime,
    time_to: datetime,
    interval: str = "1m",
    variables: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The SQL PostgreSQL receives for `raw_sql`, given the time range, $__interval and the variables' values."""
    text = raw_sql
    for name, values in sorted((variables or {}).items(), key=lambda item: -len(item[0])):
        quoted = ",".join(_quote(value) for value in values)
        text = text.replace("${" + name + "}", quoted).replace("$" + name, quoted)
    text = text.replace("$__interval_ms", str(interval_ms(interval))).replace("$__interval", interval)

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), [arg.strip() for arg in match.group(2).split(",")]
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(time_from)}' AND '{_rfc3339(time_to)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(time_from)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(time_to)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = f"{_seconds(args[1]):g}"
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise AssertionError(f"macro ${name} is not one this expander knows: add it from Grafana's macros.go")

    text = _MACRO.sub(macro, text)
    assert "$" not in text, f"unexpanded variable or macro left in: {text}"
    return text


def window(end: datetime, minutes: int) -> tuple[datetime, datetime]:
    """A dashboard time range of `minutes` ending at `end`."""
    return end - timedelta(minutes=minutes), end
