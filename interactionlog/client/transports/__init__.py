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
from importlib import import_module
from typing import Protocol, cast
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


# scheme -> the module (imported only when used: each pulls an optional dependency), its sync and asyncio
# transports, and whether it takes the gateway's token.
_KINDS = (
    (HTTP_SCHEMES, "http", "HttpTransport", "AsyncHttpTransport", True),
    (GRPC_SCHEMES, "grpc", "GrpcTransport", "AsyncGrpcTransport", True),
    (POSTGRES_SCHEMES, "postgres", "PostgresTransport", "AsyncPostgresTransport", False),
)


def open_transport(url: str, *, timeout_s: float, token: str | None) -> Transport:
    """A sync transport for a non-Redis `url` (the optional dependency of its kind is imported only here)."""
    return cast(Transport, _open(url, timeout_s=timeout_s, token=token, asynchronous=False))


def open_async_transport(url: str, *, timeout_s: float, token: str | None) -> AsyncTransport:
    """The asyncio twin of `open_transport`."""
    return cast(AsyncTransport, _open(url, timeout_s=timeout_s, token=token, asynchronous=True))


def _open(url: str, *, timeout_s: float, token: str | None, asynchronous: bool) -> object:
    scheme = scheme_of(url)
    for schemes, module, sync_name, async_name, takes_token in _KINDS:
        if scheme in schemes:
            kind = getattr(import_module(f".{module}", __name__), async_name if asynchronous else sync_name)
            return kind(url, timeout_s=timeout_s, **({"token": token} if takes_token else {}))
    publisher = "AsyncPublisher" if asynchronous else "Publisher"
    raise ConfigurationError(f"{scheme}:// is published by the {publisher} itself, not through a transport")
