"""The README stays true: every setting is documented, and the two commands it gives are the real ones."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

import interactionlog
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


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of `text`: (language, body)."""
    parts = text.split("```")
    return [(block.split("\n", 1)[0].strip(), block.split("\n", 1)[1]) for block in parts[1::2] if "\n" in block]


def test_code_meant_for_pasting_has_no_placeholders_of_dots() -> None:
    """No shell or Python block holds `...` where a value belongs (a new user pasted `"content": [...]`, which is
    Python's Ellipsis, and `--database-url ...`)."""
    found = [
        line
        for language, body in code_blocks(README)
        if language in {"sh", "python"}
        for line in body.splitlines()
        if "..." in line
    ]
    assert not found, f"README code with ... in it: {found}"


def test_the_publishing_snippet_publishes_one_record(redis_url: str) -> None:
    """The first Python block of "Publishing from an MCP server", pointed at the test's Redis, runs and leaves one
    valid record in the stream."""
    section = README.split("## Publishing from an MCP server", 1)[1].split("\n## ", 1)[0]
    snippet = next(body for language, body in code_blocks(section) if language == "python")
    exec(compile(snippet.replace("redis://localhost:6379/0", redis_url), "README", "exec"), {})  # noqa: S102
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.Redis.from_url(redis_url).xrange("interactions")  # type: ignore[assignment]
    ((_, fields),) = entries
    record = Interaction.model_validate_json(fields[b"data"])
    assert record.response == {"content": [{"type": "text", "text": "sunny"}]}


def test_encode_fields_is_importable_from_the_package_as_the_readme_says() -> None:
    """`interactionlog.encode_fields(record, max_record_bytes, *, strict=...)`, as the README presents it, exists
    and refuses a field the wire format does not define under strict=True."""
    assert "`interactionlog.encode_fields(record, max_record_bytes, *, strict=False)`" in README
    fields = interactionlog.encode_fields({"mcp_id": "weather"}, 262144)
    assert fields[b"v"] == b"1"
    with pytest.raises(interactionlog.InvalidRecordError, match="tool_name"):
        interactionlog.encode_fields({"mcp_id": "weather", "tool_name": "x"}, 262144, strict=True)


def test_the_main_job_says_whom_the_default_database_url_connects_as() -> None:
    """Before the main command, the README says the default URL connects as the OS user to a database of the same
    name, how to create them, and which flag and variable name another."""
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    before = section.split(".venv/bin/interactionlog migrate && .venv/bin/interactionlog worker", 1)[0]
    assert "as your OS user, to a database of the same name" in before
    assert 'sudo -u postgres createuser -s "$USER" && sudo -u postgres createdb "$USER"' in before
    assert "`--database-url`" in before
    assert "`INTERACTIONLOG_DATABASE_URL`" in before


def test_the_example_client_calls_the_example_server_and_its_call_is_published(redis_url: str, tmp_path: Path) -> None:
    """The README's client for examples/weather_server.py, run as it says (from the repository's root, over
    stdio), prints the forecast, and the server's instrumentation publishes the call to the Redis it is given."""
    section = README.split("## Instrument your MCP server", 1)[1].split("\n## ", 1)[0]
    client = next(body for language, body in code_blocks(section) if language == "python" and "Client(" in body)
    script = tmp_path / "call_weather.py"
    script.write_text(client)
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(script)],
        cwd=ROOT,
        env={**os.environ, "INTERACTIONLOG_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Oslo: sunny for 2 day(s)" in done.stdout
    entries: list[tuple[bytes, dict[bytes, bytes]]] = redis.Redis.from_url(redis_url).xrange("interactions")  # type: ignore[assignment]
    records = [Interaction.model_validate_json(fields[b"data"]) for _, fields in entries]
    assert [(record.mcp_id, record.tool) for record in records] == [("weather", "get_forecast")]


def test_setup_starts_no_service() -> None:
    """The README says scripts/setup starts no service: each package that brings one (redis-server, postgresql,
    prometheus, pgbouncer) is installed under the policy-rc.d that forbids starting it, never by plain apt_install."""
    setup = (ROOT / "scripts" / "setup").read_text()
    for package in ("redis-server", "postgresql", "prometheus", "pgbouncer"):
        assert f"quiet+=({package})" in setup, f"scripts/setup may start {package}'s service"
    assert 'apt_install_without_starting "${quiet[@]}"' in setup
    assert "so none is started" in README
