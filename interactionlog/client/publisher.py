"""The publish helpers MCP servers call: validate a record, XADD it to the capped stream.

Everything a helper raises is a `PublishError`: `InvalidRecordError` and `RecordTooLargeError` before anything
is sent (the record would be dead-lettered anyway), `PublishUnavailableError` when Redis cannot be reached
within the bounded wait. A record is never dropped silently: it is either in the stream or the call raised.
An error raised after sending carries the records' `interaction_ids` (generated ones too) and the `entries` as
sent, so the caller can publish the very same records again: each is stored once either way.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from .. import clusters
from ..errors import InvalidRecordError, PublishError, PublishUnavailableError, RecordTooLargeError
from ..record import DATA_FIELD, Interaction, has_exact_identity, prepare_record, wire_fields
from ..replies import text
from ..settings import DEFAULT_MAX_RECORD_BYTES, DEFAULT_REDIS_URL, DEFAULT_STREAM, DEFAULT_STREAM_MAXLEN
from ..shards import Layout, default_shards, entry_mcp_id
from . import transports
from .plain import encode_plain
from .resp import XaddFrames, read_replies, read_replies_async
from .transports import hybrid

# The publisher's bounded wait for Redis, per attempt: an MCP tool call must not hang on a dead Redis.
DEFAULT_TIMEOUT_S = 1.0
# The longest WAIT for replicas when `wait_replicas` is set.
DEFAULT_WAIT_TIMEOUT_MS = 100

Record = Interaction | Mapping[str, Any]


def encode_fields(record: Record, max_record_bytes: int, *, strict: bool = False) -> dict[bytes, bytes]:
    """The stream entry's fields for `record`, after validating it and checking its size.

    `data` holds the caller's values as given (fields of the caller's own included), with a generated
    `interaction_id` and `timestamp` spliced in when absent; `identity exact` is added when the caller wrote the
    timestamp (`record.has_exact_identity`). `strict` refuses fields the wire format does not define, pointing
    to `metadata`. Raises InvalidRecordError or RecordTooLargeError.
    """
    if not isinstance(record, Interaction):
        fields = encode_plain(record, max_record_bytes, strict=strict)  # None: the model decides
        if fields is not None:
            return fields
    interaction, encoded = prepare_record(record, strict=strict)
    present = record.model_fields_set if isinstance(record, Interaction) else record.keys()
    return wire_fields(interaction, encoded, max_record_bytes, exact=has_exact_identity(present))


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
        strict: bool = False,
        shards: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
        url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Publish through `client` (a redis-py client of the twin's kind) to `stream`, capped at about `maxlen`
        entries, refusing records whose JSON is over `max_record_bytes` and, when `strict`, records with fields
        the wire format does not define; raises ValueError for a bad cap.

        `shards` (default: $INTERACTIONLOG_SHARDS, else 1) spreads records over that many streams by a hash of
        their `mcp_id` (`shards.Layout`); `wait_replicas` > 0 makes each publish WAIT up to `wait_timeout_ms`
        for that many replicas to hold the entries, raising PublishUnavailableError when fewer do.
        With `client` None and a `url`, the client is made on first use, once the node said whether it is part of
        a Redis Cluster (`clusters`).

        With a `transport` (a `client.transports` object of the twin's kind), entries go there instead and
        `client` is None: `stream` and `maxlen` are then the gateway's or moot, validation stays the same."""
        self._redis = client
        self._url = url
        self._timeout_s = timeout_s
        self.transport = transport
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        self.layout = Layout(stream, shards if shards is not None else default_shards())
        self._shard_streams = [shard.stream for shard in self.layout.all()]
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.stream = stream
        self.maxlen = maxlen
        self.max_record_bytes = max_record_bytes
        self.strict = strict
        self._frames: dict[tuple[str, int], XaddFrames] = {}  # by stream (one per shard) and cap

    def _encode_all(self, records: Iterable[Record]) -> list[dict[bytes, bytes]]:
        """Encode every record, or raise without sending anything: a lone record's own error, or for several one
        InvalidRecordError naming the index of every bad one (invalid or too large) in its message and `problems`."""
        entries: list[dict[bytes, bytes]] = []
        errors: dict[int, PublishError] = {}
        for index, record in enumerate(records):
            try:
                entries.append(encode_fields(record, self.max_record_bytes, strict=self.strict))
            except (InvalidRecordError, RecordTooLargeError) as error:
                errors[index] = error
        if not errors:
            return entries
        if len(errors) == 1 and not entries:
            raise next(iter(errors.values()))
        problems = {index: str(error).removeprefix("invalid interaction record: ") for index, error in errors.items()}
        listed = "; ".join(f"record {index}: {problem}" for index, problem in problems.items())
        raise InvalidRecordError(
            f"{len(problems)} of {len(entries) + len(problems)} records are invalid, nothing was sent: {listed}",
            problems,
        )

    def _packed_xadds(self, entries: Sequence[dict[bytes, bytes]]) -> bytes:
        """The capped XADD of each entry, framed in RESP (`resp.XaddFrames`) into one payload for one socket write:
        what a redis-py pipeline sends, less its per-command Python (benchmarks/NOTES.md)."""
        frames: list[bytes] = []
        maxlen = self.maxlen
        if self.layout.shards == 1:  # one stream: one framing, no lookup per entry
            framing = self._framing(self.stream, maxlen)
            for fields in entries:
                framing.extend(frames, fields)
            return b"".join(frames)
        for fields in entries:
            self._framing(self.stream_of(fields), maxlen).extend(frames, fields)
        return b"".join(frames)

    def _framing(self, stream: str, maxlen: int) -> XaddFrames:
        """The XADD frames of `stream` capped at `maxlen`, made once."""
        framing = self._frames.get((stream, maxlen))
        if framing is None:
            framing = self._frames[stream, maxlen] = XaddFrames(stream, maxlen)
        return framing

    def _queue_xadds(
        self, pipe: redis.client.Pipeline | aioredis.client.Pipeline, entries: Sequence[dict[bytes, bytes]]
    ) -> None:
        """Queue one capped XADD per entry on a sync or asyncio pipeline (queueing itself never awaits)."""
        for fields in entries:
            pipe.xadd(self.stream_of(fields), fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]

    def stream_of(self, fields: dict[bytes, bytes]) -> str:
        """The stream (of its shard) an encoded entry goes to."""
        if self.layout.shards == 1:
            return self.stream
        return self._shard_streams[self.layout.route(entry_mcp_id(fields))]

    def _by_master(
        self, entries: Sequence[dict[bytes, bytes]], connection_to: Callable[[str], Any]
    ) -> dict[Any, list[int]]:
        """The indexes of `entries` per client of the master their stream lives on (`connection_to(stream)`)."""
        found: dict[Any, list[int]] = {}
        for index, fields in enumerate(entries):
            found.setdefault(connection_to(self.stream_of(fields)), []).append(index)
        return found

    def _queue_replicated(self, pipe: Any, entries: Sequence[dict[bytes, bytes]], indexes: Sequence[int]) -> None:
        """Queue the XADDs of `entries[indexes]`, then the WAIT that follows them on the same connection."""
        self._queue_xadds(pipe, [entries[index] for index in indexes])
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)

    def _take_replicated(
        self, replies: list[Any], entries: Sequence[dict[bytes, bytes]], indexes: Sequence[int], ids: list[Any]
    ) -> None:
        """Put the entry ids of one master's pipeline into `ids`; raise when its WAIT confirmed too few replicas."""
        *added, confirmed = replies
        for index, entry_id in zip(indexes, added, strict=True):
            ids[index] = entry_id
        self._check_replicated(int(confirmed), [entries[index] for index in indexes])

    def _check_replicated(self, confirmed: int, entries: Sequence[dict[bytes, bytes]]) -> None:
        """Raise when WAIT saw fewer than `wait_replicas` replicas take the entries."""
        if confirmed < self.wait_replicas:
            raise carrying(
                PublishUnavailableError(
                    f"interaction_id {_shown_ids(entries)} added, but only {confirmed} of {self.wait_replicas} "
                    f"replicas confirmed it within {self.wait_timeout_ms} ms (--wait-replicas): a failover now could "
                    "lose it. Publish the same entries again (error.entries): each is stored once either way."
                ),
                entries,
            )

    def _connect_options(self) -> tuple[str, bool | None]:
        """The URL for the first connection and whether it says cluster=yes/no (None: ask the node)."""
        assert self._url is not None
        return self._url, clusters.split_url(self._url)[1]

    def _failed(self, error: RedisError | RedisClusterException, entries: Sequence[dict[bytes, bytes]]) -> PublishError:
        """The PublishError for a failed round trip, carrying the records' interaction ids and entries."""
        shown = _shown_ids(entries)
        failure: PublishError
        if isinstance(error, RedisConnectionError | RedisTimeoutError | RedisClusterException | ClusterDownError):
            failure = PublishUnavailableError(
                f"Redis is unreachable, interaction_id {shown} not confirmed on {self.stream!r}: some or all may "
                "have been added. Publish the same entries again (error.entries), or the records with the same "
                f"interaction_ids (error.interaction_ids): each is stored once either way. {error}"
            )
        else:
            failure = PublishError(
                f"Redis refused interaction_id {shown} for stream {self.stream!r} (records before the refused one "
                f"may have been added; publishing error.entries again stores each once): {error}"
            )
        return carrying(failure, entries)

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
        strict: bool = False,
        shards: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
    ) -> Self:
        """A publisher for the Redis at `url` (redis://, rediss:// with TLS, user:password@ for ACLs; a node of a
        Redis Cluster works too, see `clusters`), waiting at most about 2 x `timeout_s` for Redis before raising
        `PublishUnavailableError`. `strict` refuses fields the wire format does not define (a typo such as
        `tool_name`), pointing to `metadata`. `shards`, `wait_replicas`, `wait_timeout_ms`: see `__init__`.

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
                strict=strict,
                shards=shards,
                wait_replicas=wait_replicas,
                wait_timeout_ms=wait_timeout_ms,
            )
        common: dict[str, Any] = {
            "stream": stream, "maxlen": maxlen, "max_record_bytes": max_record_bytes, "strict": strict
        }  # fmt: skip
        if scheme not in transports.REDIS_SCHEMES:
            return cls(None, **common, transport=cls._open_transport(url, timeout_s=timeout_s, token=token))
        return cls(
            None,
            **common,
            shards=shards,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            url=url,
            timeout_s=timeout_s,
        )

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
        strict: bool = False,
        shards: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS,
    ) -> Self:
        """A hybrid publisher: each batch goes to the first of `urls` whose circuit breaker is closed (or
        half-open), falling through to the next when one does not confirm. Same methods and errors as any
        publisher; `transport.counts()` says how many records each URL took."""
        members = [
            cls.from_url(url, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes, timeout_s=timeout_s,
                         token=token, shards=shards, wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
            for url in urls
        ]  # fmt: skip
        transport = cls._hybrid(members, urls, failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s)
        return cls(
            None, stream=stream, maxlen=maxlen, max_record_bytes=max_record_bytes, transport=transport, strict=strict
        )

    _open_transport: ClassVar[Any]
    _hybrid: ClassVar[Any]


def carrying(error: PublishError, entries: Sequence[dict[bytes, bytes]]) -> PublishError:
    """`error` with what was being sent attached (unless a transport attached it already): the entries, exactly
    as sent, and their interaction ids, so the caller can publish the same records again."""
    if not error.entries:
        error.entries = tuple(entries)
        error.interaction_ids = tuple(_interaction_id(fields) for fields in entries)
    return error


def _interaction_id(fields: dict[bytes, bytes]) -> str:
    """The interaction id inside an encoded entry (on the error path only, so parsing it again is fine)."""
    try:
        return str(json.loads(fields[DATA_FIELD])["interaction_id"])
    except (KeyError, ValueError, TypeError):
        return "?"


def _shown_ids(entries: Sequence[dict[bytes, bytes]]) -> str:
    first = _interaction_id(entries[0])
    return first if len(entries) == 1 else f"{first} .. {_interaction_id(entries[-1])} ({len(entries)} records)"


def _round_trip(conn: Any, payload: bytes, replies: int) -> list[str]:
    """Send `payload` (`replies` packed commands) on `conn` (a sync redis-py connection) and read every reply
    (`resp.read_replies`); raises the first error reply, after all."""
    conn.send_packed_command([payload])
    return read_replies(conn, replies)


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

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self._connecting = threading.Lock()

    def _client(self) -> Any:
        """The Redis client, made on first use (a plain or a cluster client, as the node says)."""
        if self._redis is None:
            with self._connecting:
                if self._redis is None:
                    url, cluster = self._connect_options()
                    if cluster is None:
                        cluster = clusters.detect_sync(url, timeout_s=self._timeout_s)
                    retry = SyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1)
                    self._redis = clusters.sync_client(
                        url, cluster=cluster, retry=retry, **_client_options(self._timeout_s)
                    )
        return self._redis

    def publish(self, record: Record) -> str:
        """Validate and XADD one record; returns its stream entry id. An error after sending carries the record's
        `interaction_id` (the generated one too), so the caller can publish it again under the same id."""
        return self.publish_encoded(self._encode_all([record]))[0]

    def publish_many(self, records: Iterable[Record]) -> list[str]:
        """Validate every record first, then XADD them all in one pipelined round trip.

        Validation is all or nothing: if any record is invalid, none is sent, and the InvalidRecordError names
        the index of every bad one. Sending is not a transaction: when the round trip fails, any subset may have
        been added; the error carries every record's interaction id and entry, and publishing them again stores
        each record once.
        """
        return self.publish_encoded(self._encode_all(records))

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """XADD entries already built by `encode_fields`, pipelined; for callers that validate line by line."""
        if not entries:
            return []
        if self.transport is not None:
            try:
                return self.transport.publish_encoded(entries)
            except PublishError as error:
                carrying(error, entries)
                raise
        try:
            client = self._client()
            if self.wait_replicas:
                ids = self._publish_replicated(client, entries)
            elif isinstance(client, redis.Redis):  # one node: the packed, one-write round trip, ids read as text
                return self._xadd_all(client, entries)
            else:  # a cluster client routes each XADD to its slot's master
                pipe = client.pipeline(transaction=False)
                self._queue_xadds(pipe, entries)
                ids = pipe.execute()
        except (RedisError, RedisClusterException) as error:
            raise self._failed(error, entries) from error
        return [text(entry_id) for entry_id in ids]

    def _publish_replicated(self, client: Any, entries: Sequence[dict[bytes, bytes]]) -> list[Any]:
        """XADD then WAIT on the very connection that wrote (WAIT counts that connection's writes): on a cluster,
        one pipeline per master holding some of the entries' streams."""

        def connection_to(key: str) -> Any:
            if isinstance(client, RedisCluster):
                return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]
            return client

        ids: list[Any] = [None] * len(entries)
        try:
            for target, indexes in self._by_master(entries, connection_to).items():
                pipe = target.pipeline(transaction=False)
                self._queue_replicated(pipe, entries, indexes)
                self._take_replicated(pipe.execute(), entries, indexes, ids)
        except (RedisError, OSError):
            if isinstance(client, RedisCluster):  # a failover moved slots: learn the new masters for next time
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    client.nodes_manager.initialize()
            raise
        return ids

    def _xadd_all(self, client: redis.Redis, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """The capped XADDs of `entries`, framed by `resp.XaddFrames` and sent in one socket write, then their
        replies, read by `resp.read_replies`: what a redis-py pipeline does, less its per-command Python
        (benchmarks/NOTES.md, rounds 1 and 5).

        Like the pipeline it replaces, a lost connection is retried once on a fresh one (the client's `retry`),
        and an error reply raises the first one once every reply is read, so the connection stays usable.
        """
        payload = self._packed_xadds(entries)
        pool = client.connection_pool
        conn: Any = pool.get_connection()
        try:
            return conn.retry.call_with_retry(  # type: ignore[no-any-return]  # redis-py's Retry is untyped
                lambda: _round_trip(conn, payload, len(entries)), lambda _: conn.disconnect()
            )
        finally:
            pool.release(conn)

    def close(self) -> None:
        """Close the connection pool."""
        if self.transport is not None:
            self.transport.close()
        elif self._redis is not None:
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

    def __init__(self, client: Any, **options: Any) -> None:
        super().__init__(client, **options)
        self._masters: clusters.NodeClients | None = None  # WAIT on a cluster: one plain client per master

    async def _client(self) -> Any:
        """The Redis client, made on first use (a plain or a cluster client, as the node says)."""
        if self._redis is None:
            url, cluster = self._connect_options()
            if cluster is None:
                cluster = await clusters.detect(url, timeout_s=self._timeout_s)
            retry = AsyncRetry(ExponentialBackoff(cap=0.05, base=0.01), 1)
            made = clusters.async_client(
                url, cluster=cluster, retry=retry, max_connections=2**31, **_client_options(self._timeout_s)
            )
            if isinstance(made, AsyncRedisCluster):
                try:  # the slot map, which WAIT's per-master pipelines look up before any command
                    await made.initialize()
                except BaseException:
                    await made.aclose()
                    raise
                self._masters = clusters.NodeClients(made)
            if self._redis is None:  # another task may have made one while this one awaited
                self._redis = made
            else:
                await made.aclose()
        return self._redis

    async def publish(self, record: Record) -> str:
        """Validate and XADD one record; returns its stream entry id (errors as `Publisher.publish`)."""
        return (await self.publish_encoded(self._encode_all([record])))[0]

    async def publish_many(self, records: Iterable[Record]) -> list[str]:
        """Validate every record first, then XADD them all in one pipelined round trip (see
        `Publisher.publish_many`: validation all or nothing, sending not a transaction)."""
        return await self.publish_encoded(self._encode_all(records))

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """XADD entries already built by `encode_fields`, pipelined."""
        if not entries:
            return []
        if self.transport is not None:
            try:
                return await self.transport.publish_encoded(entries)
            except PublishError as error:
                carrying(error, entries)
                raise
        try:
            client = await self._client()
            if self.wait_replicas:
                ids = await self._publish_replicated(client, entries)
            elif isinstance(client, aioredis.Redis):  # one node: the packed, one-write round trip, ids as text
                return await self._xadd_all(client, entries)
            else:  # a cluster client routes each XADD to its slot's master
                pipe = client.pipeline(transaction=False)
                self._queue_xadds(pipe, entries)
                ids = await pipe.execute()
        except (RedisError, RedisClusterException) as error:
            raise self._failed(error, entries) from error
        return [text(entry_id) for entry_id in ids]

    async def _publish_replicated(self, client: Any, entries: Sequence[dict[bytes, bytes]]) -> list[Any]:
        """XADD then WAIT on the very connection that wrote (see `Publisher._publish_replicated`)."""

        def connection_to(key: str) -> Any:
            return self._masters.for_key(key) if self._masters is not None else client

        ids: list[Any] = [None] * len(entries)
        try:
            for target, indexes in self._by_master(entries, connection_to).items():
                pipe = target.pipeline(transaction=False)
                self._queue_replicated(pipe, entries, indexes)
                self._take_replicated(await pipe.execute(), entries, indexes, ids)
        except (RedisError, OSError):
            if self._masters is not None:  # a failover moved slots: learn the new masters for next time
                await self._masters.refresh()
            raise
        return ids

    async def _xadd_all(self, client: aioredis.Redis, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """`Publisher._xadd_all`'s round trip on an asyncio connection: one write, then every reply under one
        deadline (`resp.read_replies_async`); a lost connection retried once on a fresh one, an error reply raised after
        every reply is read."""
        payload = self._packed_xadds(entries)
        pool = client.connection_pool
        conn: Any = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py asyncio: untyped
        timeout_s = self._timeout_s

        async def round_trip() -> list[str]:
            await conn.send_packed_command([payload])
            return await read_replies_async(conn, len(entries), timeout_s)

        try:
            return await conn.retry.call_with_retry(  # type: ignore[no-any-return]  # redis-py's Retry is untyped
                round_trip, lambda _: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    async def close(self) -> None:
        """Close the connection pool."""
        if self.transport is not None:
            await self.transport.close()
        elif self._redis is not None:
            if self._masters is not None:
                await self._masters.aclose()
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
