"""How `tail`, `stats` and `show` print: rich text for people (colour only on a terminal), JSON for scripts.

rich is imported here only, and the CLI imports this module only in the commands that print with it, so the
worker never loads it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from .query import Stats, StoredInteraction

MESSAGE_CHARS_IN_LINE = 160


def _time(moment: datetime) -> str:
    """Local time to the millisecond, e.g. 2026-11-30 15:55:46.123 (JSON output carries UTC instead)."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _utc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _duration(duration_ms: float | None) -> str:
    return "-" if duration_ms is None else f"{duration_ms:.1f} ms"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def interaction_line(row: StoredInteraction) -> Text:
    """One line per call: time (local), mcp_id, method and tool, duration, ok/error, session, interaction id."""
    line = Text()
    line.append(_time(row.timestamp), style="dim")
    line.append("  ")
    line.append(row.mcp_id, style="cyan")
    line.append("  ")
    line.append(" ".join(part for part in (row.method, row.tool) if part) or "-", style="bold")
    line.append("  ")
    line.append(_duration(row.duration_ms))
    line.append("  ")
    line.append("ERROR", style="bold red") if row.is_error else line.append("ok", style="green")
    if row.session_id:
        line.append(f"  session={row.session_id}", style="dim")
    line.append(f"  id={row.interaction_id}", style="dim")
    if row.is_error and row.error_message:
        line.append("  " + _one_line(row.error_message, MESSAGE_CHARS_IN_LINE), style="red")
    return line


def interaction_document(row: StoredInteraction) -> dict[str, Any]:
    """The row as one JSON object: its columns, `error_message`, and the whole record as sent under `record`."""
    return {
        "id": row.id,
        "mcp_id": row.mcp_id,
        "interaction_id": row.interaction_id,
        "timestamp": _utc(row.timestamp),
        "method": row.method,
        "tool": row.tool,
        "session_id": row.session_id,
        "is_error": row.is_error,
        "duration_ms": row.duration_ms,
        "error_message": row.error_message,
        "stored_at": _utc(row.stored_at),
        "record": row.data,
    }


def interaction_json_line(row: StoredInteraction) -> str:
    """`interaction_document` as one line of NDJSON."""
    return json.dumps(interaction_document(row), ensure_ascii=False)


def interaction_detail(row: StoredInteraction) -> RenderableType:
    """`show`: the row's columns as a list, then the record pretty-printed."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    document = interaction_document(row)
    for name, value in document.items():
        if name == "record":
            continue
        style = "bold red" if name in ("is_error", "error_message") and row.is_error else ""
        fields.add_row(name, Text("-" if value is None else str(value), style=style))
    return Group(fields, Text(""), Text("record", style="bold"), JSON(json.dumps(row.data, ensure_ascii=False)))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def stats_tables(stats: Stats) -> RenderableType:
    """`stats` for people: one table per (mcp_id, method, tool), then the top errors."""
    title = f"{_time(stats.since)} to {_time(stats.until)}"
    tools = Table(title=f"Calls per tool, {title}", title_justify="left")
    for name in ("mcp_id", "method", "tool"):
        tools.add_column(name, overflow="fold")
    for name in ("calls", "errors", "err %", "p50 ms", "p95 ms", "p99 ms"):
        tools.add_column(name, justify="right")
    for row in stats.tools:
        tools.add_row(
            row.mcp_id,
            row.method or "-",
            row.tool or "-",
            str(row.calls),
            Text(str(row.errors), style="red" if row.errors else ""),
            f"{100 * row.error_rate:.1f}",
            _ms(row.p50_ms),
            _ms(row.p95_ms),
            _ms(row.p99_ms),
        )
    if not stats.tools:
        return Text(f"no interactions stored from {title}", style="dim")
    errors = Table(title="Top errors", title_justify="left")
    errors.add_column("count", justify="right")
    errors.add_column("mcp_id")
    errors.add_column("tool")
    errors.add_column("last seen")
    errors.add_column("message", overflow="fold")
    for error in stats.top_errors:
        errors.add_row(
            str(error.count), error.mcp_id, error.tool or "-", _time(error.last_seen), Text(error.message or "-", "red")
        )
    return Group(tools, Text(""), errors if stats.top_errors else Text("no errors", style="green"))


def stats_document(stats: Stats) -> dict[str, Any]:
    """`stats --json`: the window, per-tool figures (error_rate from 0 to 1) and the top errors."""
    return {
        "since": _utc(stats.since),
        "until": _utc(stats.until),
        "tools": [
            {
                "mcp_id": row.mcp_id,
                "method": row.method,
                "tool": row.tool,
                "calls": row.calls,
                "errors": row.errors,
                "error_rate": row.error_rate,
                "p50_ms": row.p50_ms,
                "p95_ms": row.p95_ms,
                "p99_ms": row.p99_ms,
            }
            for row in stats.tools
        ],
        "top_errors": [
            {
                "mcp_id": error.mcp_id,
                "tool": error.tool,
                "message": error.message,
                "count": error.count,
                "last_seen": _utc(error.last_seen),
            }
            for error in stats.top_errors
        ],
    }
