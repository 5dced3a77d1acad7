"""Secrets in connection URLs never reach what interactionlog prints, whatever characters they hold."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from interactionlog.redact import redact_text, redact_url, secrets_in

# Every printable ASCII character but the alphanumerics, plus a few beyond ASCII: each may sit in a password.
SPECIALS = [c for c in string.printable if not c.isalnum() and c not in "\t\n\r\x0b\x0c"] + ["é", "€", "密"]
LEFT, RIGHT = "Lq7Wx2", "Rz9Kp4"


def _password(char: str) -> str:
    return f"{LEFT}{char}{RIGHT}"


def _assert_hidden(text: str) -> None:
    assert LEFT not in text, text
    assert RIGHT not in text, text


@pytest.mark.parametrize("char", SPECIALS)
@pytest.mark.parametrize("scheme", ["postgresql", "redis", "rediss"])
def test_a_password_written_as_is_never_shows_whatever_it_holds(scheme: str, char: str) -> None:
    """A password pasted unencoded (holding '#', '?', '/', '%', '@'...) is masked whole, even where the driver
    misreads it as a host, port or database name."""
    url = f"{scheme}://app:{_password(char)}@db.internal:5432/logs"
    _assert_hidden(redact_url(url))


@pytest.mark.parametrize("char", SPECIALS)
@pytest.mark.parametrize("scheme", ["postgresql", "redis"])
def test_a_percent_encoded_password_never_shows_encoded_or_decoded(scheme: str, char: str) -> None:
    """The properly encoded form is masked, and so is the decoded form a driver's error would quote."""
    url = f"{scheme}://app:{quote(_password(char), safe='')}@db:5432/0"
    _assert_hidden(redact_url(url))
    _assert_hidden(redact_text('FATAL: password "' + _password(char) + '" refused', url))


@pytest.mark.parametrize("char", [c for c in SPECIALS if c not in "'\\"])
def test_conninfo_passwords_and_ssl_passwords_are_masked(char: str) -> None:
    """libpq's key=value form: password and sslpassword are masked; the other keys stay readable."""
    conninfo = f"host=db user=app password='{_password(char)}' sslpassword='{_password(char)}' dbname=logs"
    shown = redact_url(conninfo)
    _assert_hidden(shown)
    assert "host=db" in shown
    assert "dbname=logs" in shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://db/logs?sslpassword={LEFT}{RIGHT}&sslmode=require",
        f"redis://h:6379/0?ssl_password={LEFT}{RIGHT}",
        f"postgresql://db/logs?password={LEFT}{RIGHT}",
    ],
)
def test_secret_query_options_are_masked(url: str) -> None:
    """sslpassword=, ssl_password= and password= in a query string are secrets too."""
    _assert_hidden(redact_url(url))
    assert secrets_in(url) >= {f"{LEFT}{RIGHT}"}


def test_a_url_without_secrets_is_shown_unchanged() -> None:
    """Redaction changes nothing that is not a secret."""
    for url in ("redis://localhost:6379/0", "postgresql://localhost:5432/", "postgresql://app@db/logs"):
        assert redact_url(url) == url


def _run_cli(*arguments: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interactionlog", *arguments, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "database_url",
    [
        f"postgresql://app:{LEFT}#{RIGHT}@127.0.0.1:1/logs",  # '#' made urlsplit cut the password short
        f"postgresql://app:{LEFT}/{RIGHT}@127.0.0.1:1/logs",  # '/' makes libpq read the password as a port
        f"postgresql://app:{LEFT}%zz{RIGHT}@127.0.0.1:1/logs",  # a bad '%' escape: libpq quotes it in its error
        f"host=127.0.0.1 port=1 user=app password={LEFT}{RIGHT} sslpassword={LEFT}{RIGHT}",
    ],
)
def test_migrate_never_prints_the_password_in_its_error(database_url: str, tmp_path: Path) -> None:
    """`migrate` against an unreachable or unparseable URL fails with a one-line error free of the password."""
    result = _run_cli("migrate", "--database-url", database_url, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "error" in (result.stdout + result.stderr).lower()
    _assert_hidden(result.stdout + result.stderr)


def test_the_worker_start_line_never_holds_the_password(tmp_path: Path) -> None:
    """The worker's `worker_starting` line and every line after it mask a password holding '#' and '?'."""
    database_url = f"postgresql://app:{LEFT}#?{RIGHT}@127.0.0.1:1/logs"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "interactionlog",
            "worker",
            "--log-format",
            "json",
            "--metrics-port",
            "0",
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--database-url",
            database_url,
            "--retry-max-backoff-s",
            "0.2",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = []
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if '"dependency_unavailable"' in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    starting = [json.loads(line) for line in lines if '"worker_starting"' in line]
    assert starting
    assert starting[0]["database_url"] == "postgresql://app:***@127.0.0.1:1/logs"
    _assert_hidden("".join(lines))
