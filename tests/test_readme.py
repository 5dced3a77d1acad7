"""The README stays true: every setting is documented, and the two commands it gives are the real ones."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from interactionlog.cli import main
from interactionlog.gateway.config import GatewaySettings
from interactionlog.record import Interaction
from interactionlog.settings import Settings, env_name, flag_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    """Each settings field appears in the README with its flag and its environment variable."""
    missing = [
        field
        for field in Settings.model_fields
        if f"`{flag_name(field)}`" not in README or f"`{env_name(field)}`" not in README
    ]
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_the_test_command_is_what_ci_runs() -> None:
    """The README's set-up and test commands are the ones .ci/run calls, in that order."""
    assert "\nbash scripts/setup\n" in README
    assert "\n.venv/bin/pytest\n" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup" in ci
    assert ".venv/bin/pytest" in ci
    assert ci.index("bash scripts/setup") < ci.index(".venv/bin/pytest")


def test_setup_installs_every_tool_the_tests_look_for() -> None:
    """Each system tool the suite needs (a new user once had 3 failures for a missing promtool) is installed by
    scripts/setup when missing."""
    setup = (ROOT / "scripts" / "setup").read_text()
    for tool, package in (
        ("redis-server", "redis-server"),
        ("initdb", "postgresql"),
        ("promtool", "prometheus"),
        ("pgbouncer", "pgbouncer"),
    ):
        assert tool in setup, f"scripts/setup does not check for {tool}"
        assert f"+=({package})" in setup, f"scripts/setup does not install {package}"


def test_the_main_job_command_names_real_subcommands() -> None:
    """The README's main command migrates and then runs the worker, both real subcommands."""
    assert ".venv/bin/interactionlog migrate && .venv/bin/interactionlog worker" in README
    for command in ("migrate", "worker"):
        assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0


def test_the_quick_start_uses_real_commands_and_a_valid_record() -> None:
    """The quick start's commands exist, and the record it publishes is one a publisher accepts."""
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for command in ("dev", "publish", "tail"):
        assert f".venv/bin/interactionlog {command}" in section
        assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0
    (line,) = (line for line in section.splitlines() if line.startswith("echo '"))
    Interaction.model_validate_json(line.split("'")[1])


def test_every_gateway_setting_is_in_the_ingest_section() -> None:
    """Each setting of `interactionlog serve` appears in the README with its flag and its environment variable."""
    missing = [
        field
        for field in GatewaySettings.model_fields
        if f"`{flag_name(field)}`" not in README or f"`{env_name(field)}`" not in README
    ]
    assert not missing, f"gateway settings missing from the README: {missing}"
