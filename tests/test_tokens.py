"""`interactionlog tokens`: a token printed once, listed without its secret, stored only as a digest, revoked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time

import psycopg
import pytest

from interactionlog.gateway.tokens import Principal, TokenCheckUnavailableError, TokenVerifier
from tests.gateway import migrated
from tests.pipeline import INTERACTIONLOG
from tests.servers import PostgresServer


def tokens(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `interactionlog tokens ...` against `database_url`."""
    return subprocess.run(
        [*INTERACTIONLOG, "tokens", *arguments, "--database-url", database_url, "--log-format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_create_prints_the_token_alone_and_stores_only_its_digest(database_url: str) -> None:
    """stdout holds the token and nothing else; the table holds the SHA-256 of its secret, never the token."""
    migrated(database_url)
    created = tokens(database_url, "create", "--mcp-id", "weather", "--name", "laptop")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n"
    assert token.startswith("il_")
    token_id, secret = token[3:15], token[16:]
    assert f"created token {token_id} for weather" in created.stderr
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT * FROM interactionlog_tokens").fetchone()
        assert row is not None
        dumped = conn.execute("SELECT row_to_json(t)::text FROM interactionlog_tokens t").fetchone()
    assert dumped is not None
    assert secret not in dumped[0]
    assert hashlib.sha256(secret.encode()).digest() in [value for value in row if isinstance(value, bytes)]


def test_list_shows_ids_and_mcps_never_secrets_and_revoke_marks_them(database_url: str) -> None:
    """`list --json` names each token by id with its MCP and name; after `revoke` it shows the revocation time;
    revoking an id that does not exist exits 1."""
    migrated(database_url)
    first = tokens(database_url, "create", "--mcp-id", "weather").stdout.strip()
    tokens(database_url, "create", "--mcp-id", "news", "--name", "ci")
    listed = [json.loads(line) for line in tokens(database_url, "list", "--json").stdout.splitlines()]
    assert [(item["mcp_id"], item["name"], item["revoked_at"]) for item in listed] == [
        ("weather", None, None), ("news", "ci", None),
    ]  # fmt: skip
    assert first[16:] not in json.dumps(listed)
    revoked = tokens(database_url, "revoke", first[3:15])
    assert revoked.stdout.strip() == f"revoked {first[3:15]}"
    weather = tokens(database_url, "list", "--mcp-id", "weather", "--json").stdout
    listed = [json.loads(line) for line in weather.splitlines()]
    assert listed[0]["revoked_at"] is not None
    missing = tokens(database_url, "revoke", "000000000000")
    assert missing.returncode == 1
    assert "do not exist" in missing.stderr


def test_tokens_before_migrate_says_to_migrate(database_url: str) -> None:
    """Without the table, the command exits 1 with one line naming `interactionlog migrate`."""
    result = tokens(database_url, "create", "--mcp-id", "weather")
    assert result.returncode == 1
    assert "interactionlog migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_frozen_database_fails_a_new_token_fast_and_keeps_checked_ones_working(own_postgres: PostgresServer) -> None:
    """With PostgreSQL frozen (SIGSTOP), checking a token the gateway never saw raises TokenCheckUnavailableError
    (503) within the verifier's timeout instead of hanging the request, and a token checked before still works."""
    database_url = own_postgres.url()
    migrated(database_url)
    known, unseen = (tokens(database_url, "create", "--mcp-id", "weather").stdout.strip() for _ in range(2))

    async def check() -> tuple[Principal, float]:
        verifier = TokenVerifier(database_url, cache_s=60, timeout_s=1.0)
        await verifier.open()
        try:
            principal = await verifier.verify(f"Bearer {known}")
            own_postgres.pause()
            started = time.monotonic()
            with pytest.raises(TokenCheckUnavailableError):
                await verifier.verify(f"Bearer {unseen}")
            waited = time.monotonic() - started
            assert await verifier.verify(f"Bearer {known}") == principal
            with pytest.raises(TokenCheckUnavailableError):
                await verifier.ping()
            return principal, waited
        finally:
            own_postgres.resume()
            await verifier.close()

    principal, waited = asyncio.run(check())
    assert principal.mcp_id == "weather"
    assert waited < 3.0
