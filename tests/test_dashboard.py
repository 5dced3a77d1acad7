"""The interactions dashboard: every panel's SQL, expanded as Grafana would, shows the right figures for known data,
and compose provisions it with its PostgreSQL data source beside the pipeline dashboard."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from .grafana_sql import expand
from .stored import store_records
from .test_deploy import COMPOSE, bind_mounts
from .test_query import BASE, NOW, known_records

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "interactions.json"
RANGE = (BASE - timedelta(minutes=1), NOW)  # the last half hour of known_records(), not the two-day-old call


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_sql(title: str) -> str:
    (panel,) = (panel for panel in dashboard()["panels"] if panel["title"] == title)
    (target,) = panel["targets"]
    sql: str = target["rawSql"]
    return sql


def variable_sql(name: str) -> str:
    (variable,) = (variable for variable in dashboard()["templating"]["list"] if variable["name"] == name)
    sql: str = variable["query"]
    return sql


@pytest.fixture
def known_url(database_url: str) -> str:
    """A database holding the same known interactions as the CLI tests."""
    store_records(database_url, known_records())
    return database_url


def run(url: str, sql: str, **variables: Sequence[str]) -> list[dict[str, Any]]:
    """The expanded SQL's rows, over RANGE with a 1 minute interval."""
    expanded = expand(sql, time_from=RANGE[0], time_to=RANGE[1], interval="1m", variables=variables)
    with psycopg.connect(url) as conn, conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(expanded.encode())
        return cursor.fetchall()


ALL = {"mcp_id": ["files", "weather"], "tool": ["file:///a", "get_alerts", "get_forecast"]}


def minute(offset: int) -> float:
    """Epoch seconds of the minute `offset` minutes after BASE, as the time column holds it."""
    return (BASE + timedelta(minutes=offset)).timestamp()


def series(rows: list[dict[str, Any]], value: str) -> dict[tuple[float, str], float]:
    return {(float(row["time"]), row["metric"]): float(row[value]) for row in rows}


def test_variables_list_the_servers_and_tools_of_the_time_range(known_url: str) -> None:
    """The mcp_id and tool variables offer what the range holds; tool follows the chosen mcp_id."""
    assert [row["mcp_id"] for row in run(known_url, variable_sql("mcp_id"))] == ["files", "weather"]
    assert [row["tool"] for row in run(known_url, variable_sql("tool"), mcp_id=ALL["mcp_id"])] == ALL["tool"]
    assert [row["tool"] for row in run(known_url, variable_sql("tool"), mcp_id=["weather"])] == [
        "get_alerts",
        "get_forecast",
    ]


def test_calls_per_minute_by_tool(known_url: str) -> None:
    """Calls per minute per tool, in the minute each call happened."""
    rows = run(known_url, panel_sql("Calls per minute by tool"), **ALL)
    assert series(rows, "calls per minute") == {
        (minute(0), "get_forecast"): 6.0,
        (minute(1), "get_forecast"): 4.0,
        (minute(1), "get_alerts"): 2.0,
        (minute(2), "file:///a"): 3.0,
    }
    assert [row["time"] for row in rows] == sorted(row["time"] for row in rows)  # Grafana needs time order


def test_calls_per_minute_is_a_rate_whatever_the_interval(known_url: str) -> None:
    """With a 5 minute interval the 15 calls of the first 5 minutes show as 3 per minute in total."""
    expanded = expand(panel_sql("Calls per minute by tool"), time_from=RANGE[0], time_to=RANGE[1],
                      interval="5m", variables=ALL)  # fmt: skip
    with psycopg.connect(known_url) as conn:
        rows = conn.execute(expanded.encode()).fetchall()
    assert sum(float(value) for _, _, value in rows) == pytest.approx(15 / 5)


def test_error_rate_by_tool(known_url: str) -> None:
    """The share of failed calls per tool and minute."""
    rows = run(known_url, panel_sql("Error rate by tool"), **ALL)
    assert series(rows, "error rate") == pytest.approx(
        {
            (minute(0), "get_forecast"): 1 / 6,
            (minute(1), "get_forecast"): 1 / 4,
            (minute(1), "get_alerts"): 1 / 2,
            (minute(2), "file:///a"): 1 / 3,
        }
    )


def test_duration_percentiles_by_tool(known_url: str) -> None:
    """p50/p95/p99/max per tool; calls without duration count as calls but leave the percentiles empty."""
    rows = run(known_url, panel_sql("duration_ms percentiles by tool"), **ALL)
    table = {row["tool"]: row for row in rows}
    assert [row["tool"] for row in rows] == ["get_forecast", "get_alerts", "file:///a"]
    forecast = table["get_forecast"]
    assert (forecast["calls"], forecast["p50_ms"], forecast["max_ms"]) == (10, 55.0, 100.0)
    assert (forecast["p95_ms"], forecast["p99_ms"]) == (pytest.approx(95.5), pytest.approx(99.1))
    assert (table["get_alerts"]["p50_ms"], table["get_alerts"]["p95_ms"]) == (6.0, pytest.approx(6.9))
    assert (table["file:///a"]["calls"], table["file:///a"]["p50_ms"]) == (3, None)


def test_slowest_calls(known_url: str) -> None:
    """The slowest calls first, each with what identifies it; calls without duration are left out."""
    rows = run(known_url, panel_sql("Slowest calls"), **ALL)
    assert [row["interaction_id"] for row in rows[:3]] == ["fc-9", "fc-8", "fc-7"]
    assert [row["duration_ms"] for row in rows[:3]] == [100.0, 90.0, 80.0]
    assert rows[2]["is_error"] is True
    assert len(rows) == 12


def test_recent_errors_with_their_message(known_url: str) -> None:
    """Failed calls, newest first, each with the message the error carried."""
    rows = run(known_url, panel_sql("Recent errors"), **ALL)
    assert [(row["interaction_id"], row["message"]) for row in rows] == [
        ("rd-2", "permission denied"),
        ("al-1", "upstream timeout"),
        ("fc-7", "unknown city"),
        ("fc-3", "unknown city"),
    ]


def test_calls_per_client(known_url: str) -> None:
    """Calls and errors per announced client; calls from no known client grouped as (unknown)."""
    rows = run(known_url, panel_sql("Calls per client"), **ALL)
    assert [(row["client"], row["calls"], row["errors"]) for row in rows] == [
        ("claude-desktop 1.0", 10, 2),
        ("(unknown)", 5, 2),
    ]


def test_calls_per_session(known_url: str) -> None:
    """Calls, errors, first and last call and total time per session."""
    rows = run(known_url, panel_sql("Calls per session"), **ALL)
    assert [(row["session_id"], row["calls"], row["errors"], row["total_ms"]) for row in rows] == [
        ("s1", 5, 1, 150.0),
        ("s2", 5, 1, 400.0),
        ("s3", 2, 1, 12.0),
    ]
    assert rows[0]["first_call"] == BASE
    assert rows[1]["last_call"] == BASE + timedelta(seconds=90)


def test_variables_narrow_every_panel(known_url: str) -> None:
    """With mcp_id=weather and tool=get_alerts chosen, each panel shows get_alerts' calls only."""
    chosen = {"mcp_id": ["weather"], "tool": ["get_alerts"]}
    for panel in dashboard()["panels"]:
        rows = run(known_url, panel["targets"][0]["rawSql"], **chosen)
        assert rows, panel["title"]
        tools = {row.get("tool", row.get("metric")) for row in rows} - {None}
        assert tools <= {"get_alerts"}, panel["title"]
    assert [row["calls"] for row in run(known_url, panel_sql("Calls per client"), **chosen)] == [2]


def test_panels_outside_the_time_range_show_nothing(known_url: str) -> None:
    """A time range before every call leaves every panel empty: the range is applied everywhere."""
    before = datetime(2020, 1, 1, tzinfo=UTC)
    for panel in dashboard()["panels"]:
        expanded = expand(panel["targets"][0]["rawSql"], time_from=before, time_to=before + timedelta(hours=1),
                          variables=ALL)  # fmt: skip
        with psycopg.connect(known_url) as conn:
            assert conn.execute(expanded.encode()).fetchall() == [], panel["title"]


def test_dashboard_is_well_formed_and_names_the_issue_panels() -> None:
    """Unique ids, the data-source, mcp_id and tool variables, every query on the PostgreSQL variable and filtered."""
    board = dashboard()
    assert {variable["name"] for variable in board["templating"]["list"]} == {"datasource", "mcp_id", "tool"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {panel["title"] for panel in board["panels"]} == {
        "Calls per minute by tool",
        "Error rate by tool",
        "duration_ms percentiles by tool",
        "Slowest calls",
        "Recent errors",
        "Calls per client",
        "Calls per session",
    }
    for panel in board["panels"]:
        (target,) = panel["targets"]
        assert target["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "${datasource}"}
        for part in ('$__timeFilter("timestamp")', "mcp_id IN ($mcp_id)", "tool IN ($tool)"):
            assert part in target["rawSql"], f"{panel['title']}: missing {part}"


def test_compose_provisions_the_interactions_dashboard_and_its_postgres_source() -> None:
    """Grafana's dashboard directory holds both dashboards, and a PostgreSQL data source points at compose's
    database with compose's credentials."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = bind_mounts(services["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "interactionlog.yaml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).samefile(DASHBOARD)
    assert (dashboards / "interactionlog.json").exists()
    (source,) = yaml.safe_load((provisioning / "datasources" / "postgres.yaml").read_text())["datasources"]
    environment = services["postgres"]["environment"]
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["url"] == "postgres:5432"
    assert (source["user"], source["secureJsonData"]["password"], source["jsonData"]["database"]) == (
        environment["POSTGRES_USER"],
        environment["POSTGRES_PASSWORD"],
        environment["POSTGRES_DB"],
    )
    assert "postgres" in services["grafana"]["depends_on"]
