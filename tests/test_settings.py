"""Settings: every option is a flag and an INTERACTIONLOG_* variable, wrong values fail naming the setting,
and secrets never leak into output."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from interactionlog.cli import main
from interactionlog.errors import ConfigurationError
from interactionlog.redact import redact_url
from interactionlog.settings import (
    PUBLISHER_ONLY_FIELDS,
    WORKER_FIELDS,
    Settings,
    env_name,
    flag_name,
    load_settings,
)


def test_defaults_point_at_local_redis_and_postgres() -> None:
    """With nothing configured the worker targets Redis and PostgreSQL on localhost's standard ports."""
    settings = load_settings({})
    assert settings.redis_url == "redis://localhost:6379/0"
    assert "localhost:5432" in settings.database_url
    assert settings.dead_letter_stream_key == "interactions:dlq"
    assert settings.redis_socket_timeout_s > settings.block_ms / 1000


def test_every_setting_has_a_flag_and_an_environment_variable() -> None:
    """`worker --help` lists each settings field the worker uses with its flag and INTERACTIONLOG_ variable;
    `serve --help` lists the publisher-only ones."""
    runner = CliRunner()
    for command, fields in (("worker", WORKER_FIELDS), ("serve", PUBLISHER_ONLY_FIELDS)):
        result = runner.invoke(main, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        help_text = " ".join(result.output.split())
        for field in fields:
            assert flag_name(field) in help_text
            assert env_name(field) in help_text
    assert set(WORKER_FIELDS) | set(PUBLISHER_ONLY_FIELDS) == set(Settings.model_fields)


@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_wrong_setting_fails_at_start_naming_flag_and_variable(source: str) -> None:
    """An out-of-range batch size exits 2 with a message naming --batch-size and INTERACTIONLOG_BATCH_SIZE."""
    runner = CliRunner()
    if source == "flag":
        result = runner.invoke(main, ["worker", "--batch-size", "0"])
    else:
        result = runner.invoke(main, ["worker"], env={"INTERACTIONLOG_BATCH_SIZE": "0"})
    assert result.exit_code == 2
    assert "--batch-size / INTERACTIONLOG_BATCH_SIZE" in result.output
    assert "greater than or equal to 1" in result.output


def test_settings_that_contradict_each_other_are_refused() -> None:
    """A claim idle time shorter than the blocking read would steal live consumers' entries, so it is refused."""
    with pytest.raises(ConfigurationError, match="claim_idle_ms"):
        load_settings({"claim_idle_ms": 500, "block_ms": 1000})


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    """A malformed Redis URL is reported by setting name, and its value (which may hold a password) is masked."""
    with pytest.raises(ConfigurationError, match="--redis-url / INTERACTIONLOG_REDIS_URL") as caught:
        load_settings({"redis_url": "http://user:hunter2@host"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://app:s3cret@host:6380/1", "rediss://app:***@host:6380/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("postgresql://app:s3cret@db:5432/logs?sslmode=require", "postgresql://app:***@db:5432/logs?sslmode=require"),
        ("postgresql://db/logs?password=s3cret", "postgresql://db/logs?password=***"),
        ("host=db user=app password=s3cret dbname=logs", "host=db user=app password=*** dbname=logs"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    """Passwords in URLs, query strings and conninfo strings are replaced before anything is printed."""
    redacted = redact_url(url)
    if "://" in url:
        assert redacted == expected
    else:  # conninfo: key order carries no meaning, compare the parsed parameters
        assert conninfo_to_dict(redacted) == conninfo_to_dict(expected)
    assert "s3cret" not in redacted
