"""The publish helpers MCP servers call: validate a record, XADD it to the capped stream.

Everything a helper raises is a `PublishError`: `InvalidRecordError` and `RecordTooLargeError` before anything
is sent (the record would be dead-lettered anyway), `PublishUnavailableError` when Redis cannot be reached
within the bounded wait. A record is never dropped silently: it is either in the stream or the call raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from ..errors import PublishError, PublishUnavailableError, RecordTooLargeError
from ..record import DATA_FIELD, VERSION_FIELD, WIRE_VERSION, Interaction, encode_record, validate_record
from ..replies import text
from ..settings import DEFAULT_MAX_RECORD_BYTES, DEFAULT_REDIS_URL, DEFAULT_STREAM, DEFAULT_STREAM_MAXLEN
from . import transports
from .transports import hybrid

# The publisher's bounded wait for Redis, per attempt: an MCP tool call must not hang on a dead Redis.
DEFAULT_TIMEOUT_S = 1.0

Record = Interaction | Mapping[str, Any]


def encode_fields(record: Record, max_record_bytes: int) -> dict[bytes, bytes]:
    """The stream entry's fields for `record`, after validating it and checking its size."""
    interaction = validate_record(record if isinstance(record, Interaction) else dict(record))
    data = encode_record(interaction).encode()
    if len(data) > max_record_bytes:
        raise RecordTooLargeError(
            f"record {interaction.interaction_id!r} of {interaction.mcp_id!r} encodes to {len(data)} bytes, over "
            f"the {max_record_bytes}-byte cap (max_record_bytes); trim large request or response payloads"
        )
    return {VERSION_FIELD: WIRE_VERSION, DATA_FIELD: data}


class _PublisherCore:
    """Everything the sync and asyncio publishers share; each adds only the awaiting (or not) of the round trip.

    One path for one record and for many: every publish is a non-transactional pipeline of capped XADDs.
    """

    def __init__(
        self,
        client: Any,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        transport: Any = None,
    ) -> None:
        """Publish through `client` (a redis-py client of the twin's kind) to `stream`, capped at about `maxlen`
        entries, refusing records whose JSON is over `max_record_bytes`; raises ValueError for a bad cap.

        With a `transport` (a `client.transports` object of the twin's kind), entries go there instead and
        `client` is None: `stream` and `maxlen` are then the gateway's or moot, validation stays the same."""
        self._redis = client
        self.transport = transport
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        self.stream = stream
        self.maxlen = maxlen
        self.max_record_bytes = max_record_bytes

    def _encode_all(self, records: Iterable[Record]) -> list[dict[bytes, bytes]]:
        return [encode_fields(record, self.max_record_bytes) for record in records]

    def _queue_xadds(
        self, pipe: redis.client.Pipeline | aioredis.client.Pipeline, entries: Sequence[dict[bytes, bytes]]
    ) -> None:
        """Queue one capped XADD per entry on a sync or asyncio pipeline (queueing itself never awaits)."""
        for fields in entries:
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]

    def _failed(self, error: RedisError) -> PublishError:
        if isinstance(error, RedisConnectionError | RedisTimeoutError):
            return PublishUnavailableError(
                f"Redis is unreachable, record not confirmed on {self.stream!r} (publish it again with the same "
                f"interaction_id; it is stored once either way): {error}"
            )
        return PublishError(f"Redis refused the record for stream {self.stream!r}: {error}")

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_REDIS_URL,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
    ) -> Self:
        """A publisher for the Redis at `url` (redis://, rediss:// with TLS, user:password@ for ACLs), waiting
        at most about 2 x `timeout_s` for Redis before raising `PublishUnavailableError`.

        Other schemes go through a transport (`client.transports`): http(s):// and grpc(s):// to
        `interactionlog serve` with the MCP's `token` (or `?token=` in the URL), postgresql:// straight into the
        table, and `hybrid:URL|URL|...` to the first healthy of several (see `from_urls`)."""
        scheme = transports.scheme_of(url)
        if scheme == transports.HYBRID_SCHEME:
            return cls.from_urls(
                transports.hybrid_members(url),
                stream=stream,
                maxlen=maxlen,
                max_record_bytes=max_record_bytes,
                timeout_s=timeout_s,
                token=token,
            )
        if scheme not in transports.REDIS_SCHEMES:
            transport = cls._open_transport(url, timeout_s=timeout_s, token=token)
            return cls(None, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes, transport=transport)
        client = cls._connect(url, timeout_s)
        return cls(client, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes)

    @classmethod
    def from_urls(
        cls,
        urls: Sequence[str],
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        failure_threshold: int = hybrid.DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = hybrid.DEFAULT_RESET_TIMEOUT_S,
    ) -> Self:
        """A hybrid publisher: each batch goes to the first of `urls` whose circuit breaker is closed (or
        half-open), falling through to the next when one does not confirm. Same methods and errors as any
        publisher; `transport.counts()` says how many records each URL took."""
        members = [
            cls.from_url(url, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes, timeout_s=timeout_s,
                         token=token)
            for url in urls
        ]  # fmt: skip
        transport = cls._hybrid(members, urls, failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s)
        return cls(None, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes, transport=transport)

    _open_transport: ClassVar[Any]
    _hybrid: ClassVar[Any]

    @staticmethod
    def _connect(url: str, timeout_s: float) -> Any:
        raise NotImplementedError


def _client_options(timeout_s: float) -> dict[str, Any]:
    # One quick retry covers a pooled connection that went stale (Redis restarted); the total wait stays
    # bounded by about 2 x timeout_s. A retried XADD can add an entry twice; the sink stores it once.
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


class Publisher(_PublisherCore):
    """Publishes interactions from synchronous code. Thread-safe: redis-py pools its connections."""

    _redis: redis.Redis
    transport: transports.Transport | None
    _open_transport = staticmethod(transports.open_transport)
    _hybrid = hybrid.HybridTransport

    @staticmethod
    def _connect(url: str, timeout_s: float) -> redis.Redis:
        return redis.Redis.from_url(
            url, retry=SyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1), **_client_options(timeout_s)
        )

    def publish(self, record: Record) -> str:
        """Validate and XADD one record; returns its stream entry id."""
        return self.publish_encoded(self._encode_all([record]))[0]

    def publish_many(self, records: Iterable[Record]) -> list[str]:
        """Validate every record first, then XADD them all in one pipelined round trip.

        Validation is all-or-nothing: if any record is invalid, none is sent.
        """
        return self.publish_encoded(self._encode_all(records))

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """XADD entries already built by `encode_fields`, pipelined; for callers that validate line by line."""
        if not entries:
            return []
        if self.transport is not None:
            return self.transport.publish_encoded(entries)
        pipe = self._redis.pipeline(transaction=False)
        self._queue_xadds(pipe, entries)
        try:
            ids = pipe.execute()
        except RedisError as error:
            raise self._failed(error) from error
        return [text(entry_id) for entry_id in ids]

    def close(self) -> None:
        """Close the connection pool."""
        if self.transport is not None:
            self.transport.close()
        else:
            self._redis.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncPublisher(_PublisherCore):
    """Publishes interactions from asyncio code; same validation, errors and wire format as `Publisher`."""

    _redis: aioredis.Redis
    transport: transports.AsyncTransport | None
    _open_transport = staticmethod(transports.open_async_transport)
    _hybrid = hybrid.AsyncHybridTransport

    @staticmethod
    def _connect(url: str, timeout_s: float) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            url, retry=AsyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1), **_client_options(timeout_s)
        )

    async def publish(self, record: Record) -> str:
        """Validate and XADD one record; returns its stream entry id."""
        return (await self.publish_encoded(self._encode_all([record])))[0]

    async def publish_many(self, records: Iterable[Record]) -> list[str]:
        """Validate every record first, then XADD them all in one pipelined round trip."""
        return await self.publish_encoded(self._encode_all(records))

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """XADD entries already built by `encode_fields`, pipelined."""
        if not entries:
            return []
        if self.transport is not None:
            return await self.transport.publish_encoded(entries)
        pipe = self._redis.pipeline(transaction=False)
        self._queue_xadds(pipe, entries)
        try:
            ids = await pipe.execute()
        except RedisError as error:
            raise self._failed(error) from error
        return [text(entry_id) for entry_id in ids]

    async def close(self) -> None:
        """Close the connection pool."""
        if self.transport is not None:
            await self.transport.close()
        else:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
