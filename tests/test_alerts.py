"""The alert rules hold up under promtool: the rule file's own test command passes as written, every alert has a
case where it fires (on series that start with a worker process, where that matters), compose's recorded rule
arms InteractionlogWorkersAbsent, and scrapes of a real worker, replayed through promtool, fire the alerts for
events the worker counted."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import redis
import yaml

from .pipeline import migrate, running_worker, wait_until
from .servers import free_port
from .test_deploy import ALERTS, MONITORING, alert_rules, load_yaml_documents, run_promtool
from .test_observe import Samples, scrape_until, value

STREAM, GROUP = "interactions", "interactionlog"
TEST_FILE = MONITORING / "alerts.test.yaml"


def shipped_test_command() -> list[str]:
    """The `promtool test rules ...` command the header of alerts.yaml tells an operator to run."""
    header = "".join(line for line in ALERTS.read_text().splitlines(keepends=True) if line.startswith("#"))
    match = re.search(r"`(promtool test rules [^`]+)`", header.replace("\n# ", " "))
    assert match, "alerts.yaml's header no longer says how to run its unit tests"
    return shlex.split(match.group(1))


def test_the_rule_files_own_test_command_passes_as_written() -> None:
    """`promtool test rules alerts.test.yaml`, run in deploy/monitoring as the header of alerts.yaml says, passes:
    annotations included, with no copy or rewrite of the rules."""
    command = shipped_test_command()
    assert command[:3] == ["promtool", "test", "rules"]
    assert "SUCCESS" in run_promtool(*command[1:], cwd=MONITORING)


def firing_cases() -> dict[str, list[dict[str, Any]]]:
    """For each alert, the test cases of alerts.test.yaml in which it is expected to fire."""
    (tests,) = load_yaml_documents(TEST_FILE)
    cases: dict[str, list[dict[str, Any]]] = {}
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            if check.get("exp_alerts"):
                cases.setdefault(check["alertname"], []).append(case)
    return cases


def test_every_alert_is_proven_to_fire() -> None:
    """Each alert of alerts.yaml has a promtool case where it fires and states its rendered annotations."""
    (tests,) = load_yaml_documents(TEST_FILE)
    assert tests["rule_files"] == [ALERTS.name]
    cases = firing_cases()
    for rule in alert_rules():
        assert rule["alert"] in cases, f"no case of alerts.test.yaml shows {rule['alert']} firing"
    for case in (case for found in cases.values() for case in found):
        for check in case["alert_rule_test"]:
            for alert in check.get("exp_alerts") or []:
                assert set(alert["exp_annotations"]) == {"summary", "description"}, case["name"]


def test_counter_alerts_fire_on_counters_that_start_with_the_worker() -> None:
    """Every alert on the increase of a worker counter fires in a case whose counter first appears after the
    test's start, already above 0: a worker that counted the event before Prometheus first scraped it."""
    for rule in alert_rules():
        counters = set(re.findall(r"(?:increase|rate)\((interactionlog_\w+_total)", rule["expr"]))
        if not counters:
            continue
        late = [
            case
            for case in firing_cases()[rule["alert"]]
            for series in case["input_series"]
            if series["series"].split("{")[0] in counters and re.match(r"_(x\d+)? [1-9]", series["values"])
        ]
        assert late, f"{rule['alert']}: no firing case where {sorted(counters)} starts late, above 0"


Labels = dict[str, str]


def promtool_case(
    rules: list[Path], series: dict[str, str], alert: str, checks: list[tuple[str, Labels | None]]
) -> str:
    """A promtool test file: `rules`, `series` (selector: values) and, per eval time, the labels `alert` fires
    with there (None: it does not fire)."""
    return yaml.safe_dump(
        {
            "rule_files": [str(path) for path in rules],
            "evaluation_interval": "1m",
            "tests": [
                {
                    "interval": "1m",
                    "input_series": [{"series": name, "values": values} for name, values in series.items()],
                    "alert_rule_test": [
                        {
                            "eval_time": at,
                            "alertname": alert,
                            "exp_alerts": [] if labels is None else [{"exp_labels": labels}],
                        }
                        for at, labels in checks
                    ],
                }
            ],
        }
    )


def rules_without_annotations(tmp_path: Path) -> Path:
    """alerts.yaml with the annotations dropped, for cases about when an alert fires, not what it says."""
    (rules,) = load_yaml_documents(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def test_compose_records_that_workers_must_run(tmp_path: Path) -> None:
    """With compose's rule file loaded (as compose's Prometheus does), no worker reporting for 10 minutes fires
    InteractionlogWorkersAbsent, and a reporting worker keeps it silent; without that file nothing fires."""
    compose_rules = MONITORING / "compose.rules.yaml"
    assert "SUCCESS" in run_promtool("check", "rules", compose_rules)
    alerts = rules_without_annotations(tmp_path)
    worker = 'interactionlog_entries_persisted_total{stream="interactions", group="interactionlog", instance="w1"}'
    absent = "InteractionlogWorkersAbsent"
    cases = {
        "absent.yaml": promtool_case([alerts, compose_rules], {worker: "0x5 _x30"}, absent,
                                     [("14m", None), ("25m", {"severity": "critical"})]),
        "running.yaml": promtool_case([alerts, compose_rules], {worker: "0+5x30"}, absent, [("25m", None)]),
        "unexpected.yaml": promtool_case([alerts], {worker: "0x5 _x30"}, absent, [("25m", None)]),
    }  # fmt: skip
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert "SUCCESS" in run_promtool("test", "rules", tmp_path / name), name


def as_input_series(scrapes: list[Samples], names: set[str]) -> dict[str, str]:
    """Successive scrapes, one a minute, as promtool input series: a sample missing from a scrape is `_`."""
    keys = sorted({key for samples in scrapes for key in samples if key[0] in names})
    series = {}
    for name, labels in keys:
        selector = name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted({*labels, ("instance", "w1")})) + "}"
        series[selector] = " ".join(
            "_" if (name, labels) not in samples else f"{samples[(name, labels)]:g}" for samples in scrapes
        )
    return series


def test_a_real_workers_first_group_recreation_and_dead_letter_fire(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """Scrapes of a real worker, replayed one a minute through promtool: the group destroyed under it and a
    poisoned entry, both after its first scrape, fire InteractionlogGroupRecreated and
    InteractionlogDeadLettersGrowing. A worker that exported its counters only from the first event would not."""
    migrate(database_url)
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    labels = {"stream": STREAM, "group": GROUP}
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_interval_s="0.2"):
        first = scrape_until(port, lambda _: True, "the worker's first scrape")
        assert value(first, "group_recreated_total", **labels, stream_vanished="false") == 0
        assert value(first, "entries_dead_lettered_total", **labels, reason="invalid_json") == 0
        wait_until(lambda: client.exists(STREAM), what="the worker to create its group")
        client.xgroup_destroy(STREAM, GROUP)
        client.xadd(STREAM, {"v": "1", "data": "not json"})
        after = scrape_until(
            port,
            lambda s: (
                value(s, "group_recreated_total", **labels, stream_vanished="false") == 1
                and value(s, "entries_dead_lettered_total", **labels, reason="invalid_json") == 1
            ),
            "the worker to recreate its group and dead-letter the entry",
        )
    counters = {"interactionlog_group_recreated_total", "interactionlog_entries_dead_lettered_total"}
    series = as_input_series([first] * 3 + [after] * 10, counters)
    alerts = rules_without_annotations(tmp_path)
    expected = {
        "InteractionlogGroupRecreated": {"severity": "critical", **labels, "stream_vanished": "false"},
        "InteractionlogDeadLettersGrowing": {"severity": "warning", "stream": STREAM},
    }
    for alert, fired in expected.items():
        (tmp_path / "live.yaml").write_text(promtool_case([alerts], series, alert, [("2m", None), ("6m", fired)]))
        assert "SUCCESS" in run_promtool("test", "rules", tmp_path / "live.yaml"), alert
