"""Transports: how a publisher hands its encoded entries over, chosen by the URL's scheme.

| scheme | the record goes | module |
| --- | --- | --- |
| `redis://`, `rediss://`, `unix://` | XADD to the stream (the publisher's own path) | `client.publisher` |
| `http://`, `https://` | POST to `interactionlog serve`, which XADDs it | `http` |
| `grpc://`, `grpcs://` | the PublishBatch call of `interactionlog serve` | `grpc` |
| `postgresql://`, `postgres://` | into `interaction_logs`: an idempotent INSERT, bypassing the stream | `postgres` |
| `hybrid:URL|URL|...` | to the first of several that is healthy, by circuit breaker | `hybrid` |

Every transport takes entries built by `encode_fields`, so a record is validated the same way before any of them
sees it, and answers as the Redis path does: one id per entry, `PublishUnavailableError` when delivery is not
confirmed (sending the same entries again is safe), `PublishError` when refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from ...errors import ConfigurationError

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"})
HTTP_SCHEMES = frozenset({"http", "https"})
GRPC_SCHEMES = frozenset({"grpc", "grpcs"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})
HYBRID_SCHEME = "hybrid"
HYBRID_SEPARATOR = "|"  # not a valid character of any URL above, so it never splits one


class Transport(Protocol):
    """What the sync `Publisher` delegates to (a `Publisher` is one too, which is how a hybrid nests them)."""

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver the entries; one id per entry, or raise PublishUnavailableError / PublishError."""

    def close(self) -> None:
        """Release connections."""


class AsyncTransport(Protocol):
    """What the asyncio `AsyncPublisher` delegates to."""

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver the entries; one id per entry, or raise PublishUnavailableError / PublishError."""

    async def close(self) -> None:
        """Release connections."""


def scheme_of(url: str) -> str:
    """The URL's scheme, lower case; raises ConfigurationError naming the schemes understood."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in REDIS_SCHEMES | HTTP_SCHEMES | GRPC_SCHEMES | POSTGRES_SCHEMES | {HYBRID_SCHEME}:
        raise ConfigurationError(
            f"cannot publish to {scheme + '://' if scheme else url!r}: use redis://, rediss://, unix://, http://, "
            f"https://, grpc://, grpcs://, postgresql:// or hybrid:URL{HYBRID_SEPARATOR}URL..."
        )
    return scheme


def hybrid_members(url: str) -> list[str]:
    """The member URLs of a `hybrid:URL|URL|...` URL, in order of preference."""
    members = [member.strip() for member in url.split(":", 1)[1].split(HYBRID_SEPARATOR) if member.strip()]
    if not members:
        raise ConfigurationError(f"hybrid: lists no URL; write hybrid:redis://...{HYBRID_SEPARATOR}https://...")
    return members


def open_transport(url: str, *, timeout_s: float, token: str | None) -> Transport:
    """A sync transport for a non-Redis `url` (the optional dependency of its kind is imported only here)."""
    scheme = scheme_of(url)
    if scheme in HTTP_SCHEMES:
        from .http import HttpTransport

        return HttpTransport(url, timeout_s=timeout_s, token=token)
    if scheme in GRPC_SCHEMES:
        from .grpc import GrpcTransport

        return GrpcTransport(url, timeout_s=timeout_s, token=token)
    if scheme in POSTGRES_SCHEMES:
        from .postgres import PostgresTransport

        return PostgresTransport(url, timeout_s=timeout_s)
    raise ConfigurationError(f"{scheme}:// is published by the Publisher itself, not through a transport")


def open_async_transport(url: str, *, timeout_s: float, token: str | None) -> AsyncTransport:
    """The asyncio twin of `open_transport`."""
    scheme = scheme_of(url)
    if scheme in HTTP_SCHEMES:
        from .http import AsyncHttpTransport

        return AsyncHttpTransport(url, timeout_s=timeout_s, token=token)
    if scheme in GRPC_SCHEMES:
        from .grpc import AsyncGrpcTransport

        return AsyncGrpcTransport(url, timeout_s=timeout_s, token=token)
    if scheme in POSTGRES_SCHEMES:
        from .postgres import AsyncPostgresTransport

        return AsyncPostgresTransport(url, timeout_s=timeout_s)
    raise ConfigurationError(f"{scheme}:// is published by the AsyncPublisher itself, not through a transport")
