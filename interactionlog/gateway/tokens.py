"""Per-MCP bearer tokens: created, listed and revoked by `interactionlog tokens`, checked by the gateways.

A token reads `il_<id>_<secret>`: the 12-hex-digit id is public (it names the token in `tokens list`, in logs
and in metrics-free audit lines), the secret is 32 random bytes, URL-safe base64. PostgreSQL keeps only the
secret's SHA-256 (migration 2, table `interactionlog_tokens`), which suits a random secret of 256 bits: no
password stretching is needed to make guessing hopeless. A presented secret's digest is compared with
`hmac.compare_digest`, in constant time. Tokens never appear in logs or errors; their ids may.

The gateways cache each checked token for `token_cache_s`: a revoked token stops working within that time.
While PostgreSQL is unreachable, tokens checked before keep working and new ones are answered 503.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import InteractionlogError
from ..worker.store import describe_database_error

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "il_"  # noqa: S105 - the public prefix that makes a leaked token recognisable, not a secret
_TOKEN = re.compile(r"il_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})")
_NO_DIGEST = bytes(32)
_CACHE_LIMIT = 10_000  # token ids remembered, valid or not; the cache is emptied beyond it


class TokenError(InteractionlogError):
    """The request carries no token, or one that is malformed, unknown or revoked (HTTP 401, gRPC
    UNAUTHENTICATED); `error` is RFC 6750's code for the WWW-Authenticate header."""

    def __init__(self, message: str, *, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.error = error


class TokenCheckUnavailableError(InteractionlogError):
    """PostgreSQL could not be asked about a token not checked before (HTTP 503, gRPC UNAVAILABLE)."""


@dataclass(frozen=True)
class Principal:
    """Who is publishing: the MCP a token belongs to, and the token's public id."""

    mcp_id: str
    token_id: str


@dataclass(frozen=True)
class TokenInfo:
    """A token as `tokens list` shows it: never its secret."""

    token_id: str
    mcp_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_token() -> tuple[str, str, bytes]:
    """A fresh (token id, whole token, digest of its secret)."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", _digest(secret)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` value; raises TokenError when there is none."""
    if not authorization:
        raise TokenError(
            "no token: send `Authorization: Bearer <token>` (create one with `interactionlog tokens create`)",
            error="invalid_request",
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("the Authorization header must read `Bearer <token>`", error="invalid_request")
    return token.strip()


async def create_token(database_url: str, mcp_id: str, name: str | None) -> tuple[TokenInfo, str]:
    """Store a new token for `mcp_id`; returns its info and the token itself, which is shown once."""
    if not 1 <= len(mcp_id) <= 100:
        raise ValueError(f"mcp_id must be 1 to 100 characters, got {len(mcp_id)}")
    if name is not None and len(name) > 200:
        raise ValueError(f"name must be at most 200 characters, got {len(name)}")
    token_id, token, digest = new_token()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=class_row(TokenInfo))
        await cursor.execute(
            "INSERT INTO interactionlog_tokens (token_id, mcp_id, name, secret_sha256) VALUES (%s, %s, %s, %s) "
            "RETURNING token_id, mcp_id, name, created_at, revoked_at",
            (token_id, mcp_id, name, digest),
        )
        info = await cursor.fetchone()
    assert info is not None  # RETURNING of a successful INSERT
    return info, token


async def list_tokens(database_url: str, mcp_id: str | None = None) -> list[TokenInfo]:
    """Every token (or `mcp_id`'s), oldest first, revoked ones included."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = conn.cursor(row_factory=class_row(TokenInfo))
        await cursor.execute(
            "SELECT token_id, mcp_id, name, created_at, revoked_at FROM interactionlog_tokens "
            "WHERE %(mcp_id)s::text IS NULL OR mcp_id = %(mcp_id)s ORDER BY created_at, token_id",
            {"mcp_id": mcp_id},
        )
        return await cursor.fetchall()


async def revoke_tokens(database_url: str, token_ids: Sequence[str]) -> list[str]:
    """Revoke the tokens named (ids, or whole tokens); returns the ids that exist (revoked now or before)."""
    ids = []
    for value in token_ids:
        match = _TOKEN.fullmatch(value)
        ids.append(match.group("id") if match else value)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "UPDATE interactionlog_tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE token_id = ANY(%s) RETURNING token_id",
            (ids,),
        )
        return [row[0] for row in await cursor.fetchall()]


@dataclass(frozen=True)
class _Known:
    """What the database said about a token id, and when."""

    mcp_id: str | None  # None: no such token, or revoked
    digest: bytes
    checked_at: float


class TokenVerifier:
    """Checks bearer tokens against `interactionlog_tokens`, remembering each answer for `cache_s`.

    Every check waits at most `timeout_s` on PostgreSQL (for a pooled connection and for the query: a frozen or
    locked database answers 503 in bounded time rather than holding the request until the client gives up).
    """

    def __init__(self, database_url: str, *, cache_s: float, timeout_s: float = 3.0) -> None:
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            database_url, min_size=1, max_size=4, timeout=timeout_s, open=False, name="interactionlog-tokens"
        )
        self._known: dict[str, _Known] = {}
        self._database_down = False

    async def open(self) -> None:
        """Start connecting (without waiting: PostgreSQL may still be starting)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def ping(self) -> None:
        """One round trip to PostgreSQL; raises TokenCheckUnavailableError when it does not answer."""
        try:
            async with asyncio.timeout(self.timeout_s), self._pool.connection() as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout, TimeoutError) as error:
            raise TokenCheckUnavailableError(f"PostgreSQL is unreachable: {type(error).__name__}") from error

    async def verify(self, authorization: str | None) -> Principal:
        """The principal of an Authorization value; raises TokenError (401) or TokenCheckUnavailableError (503)."""
        token = bearer_token(authorization)
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise TokenError(f"malformed token: expected {TOKEN_PREFIX}<12 hex digits>_<43 characters>")
        token_id, secret = match.group("id"), match.group("secret")
        known = await self._lookup(token_id)
        # Compared even for an unknown id (against a digest of zeros), so the time taken says nothing either way.
        matches = hmac.compare_digest(known.digest, _digest(secret))
        if known.mcp_id is None or not matches:
            raise TokenError(f"token {token_id} is unknown, revoked, or its secret is wrong")
        return Principal(known.mcp_id, token_id)

    async def _lookup(self, token_id: str) -> _Known:
        known = self._known.get(token_id)
        if known is not None and time.monotonic() - known.checked_at < self.cache_s:
            return known
        try:
            # Shielded: a request that goes away does not cancel a fetch that others may be waiting on.
            fresh = await asyncio.wait_for(asyncio.shield(self._fetch(token_id)), self.timeout_s)
        except (psycopg.Error, PoolTimeout) as error:
            return self._unchecked(known, error)
        except TimeoutError:
            return self._unchecked(known, TimeoutError(f"PostgreSQL did not answer within {self.timeout_s:g}s"))
        if self._database_down:
            self._database_down = False
            log.info("token_check_recovered")
        if len(self._known) >= _CACHE_LIMIT:
            self._known.clear()
        self._known[token_id] = fresh
        return fresh

    def _unchecked(self, known: _Known | None, error: Exception) -> _Known:
        """PostgreSQL did not answer: a token checked before keeps working, a new one cannot be checked."""
        if not self._database_down:
            self._database_down = True
            log.error("token_check_unavailable", error=describe_database_error(error))
        if known is not None and known.mcp_id is not None:
            return known
        raise TokenCheckUnavailableError("cannot check the token now: PostgreSQL is unreachable; retry shortly")

    async def _fetch(self, token_id: str) -> _Known:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT mcp_id, secret_sha256, revoked_at IS NOT NULL FROM interactionlog_tokens WHERE token_id = %s",
                (token_id,),
            )
            row = await cursor.fetchone()
        if row is None or row[2]:
            return _Known(None, _NO_DIGEST, time.monotonic())
        return _Known(str(row[0]), bytes(row[1]), time.monotonic())
