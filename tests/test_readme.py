"""The README stays true: every setting is documented, and the two commands it gives are the real ones."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from interactionlog.cli import main
from interactionlog.gateway.config import GatewaySettings
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
    """The README's test command is the one .ci/run calls."""
    assert "\n.venv/bin/pytest\n" in README
    assert ".venv/bin/pytest" in (ROOT / ".ci" / "run").read_text()


def test_the_main_job_command_names_real_subcommands() -> None:
    """The README's main command migrates and then runs the worker, both real subcommands."""
    assert ".venv/bin/interactionlog migrate && .venv/bin/interactionlog worker" in README
    for command in ("migrate", "worker"):
        assert CliRunner().invoke(main, [command, "--help"]).exit_code == 0


def test_every_gateway_setting_is_in_the_ingest_section() -> None:
    """Each setting of `interactionlog serve` appears in the README with its flag and its environment variable."""
    missing = [
        field
        for field in GatewaySettings.model_fields
        if f"`{flag_name(field)}`" not in README or f"`{env_name(field)}`" not in README
    ]
    assert not missing, f"gateway settings missing from the README: {missing}"
