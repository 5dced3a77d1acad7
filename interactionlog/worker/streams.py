"""The Redis Streams adapter: group creation, reads, claims, delivery counts, holding, acks and dead letters.

Every call translates Redis's failures into the worker's vocabulary: a lost connection or a timeout becomes
`RedisUnavailableError`; an error reply Redis may stop giving (OOM, READONLY, LOADING, BUSY, NOPERM, ...: see
`replies.REFUSAL_CODES`) becomes `RedisRefusedError`, which callers retry in place without re-reading anything;
a missing group (NOGROUP: the group or the whole stream was deleted) is recreated at id 0 and the read returns
nothing, so the worker carries on instead of dying.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import clusters
from ..errors import RedisRefusedError, RedisUnavailableError, TransientError, WrongKeyTypeError
from ..replies import error_code, is_error, is_refusal, text
from ..retry import raise_if_cancelling
from .dead_letters import DeadLetter, dead_letter_fields

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# What a cluster says while a failover moves a slot's master (CLUSTERDOWN, TRYAGAIN, a slot not yet covered):
# transient, retried like a lost connection.
CLUSTER_FAILURES = (ClusterError, TryAgainError, RedisClusterException)

# How long releasing a batch waits for its heartbeat to stop (a cancelled one stops within a turn of the loop).
HEARTBEAT_STOP_WAIT_S = 1.0


def connect(
    url: str, *, socket_timeout_s: float, connect_timeout_s: float, max_connections: int, cluster: bool | None = None
) -> aioredis.Redis:
    """A Redis client for workers and operator commands: redis-py's cluster client when `cluster` (None: ask the
    node, `clusters.guess_sync`), typed as the plain client whose commands it shares.

    Client-side retries are off: a blocking XREADGROUP re-issued behind our back could deliver entries we
    never see. The worker owns retrying, and re-reads its own pending entries after any connection loss.
    """
    if cluster is None:
        cluster = clusters.guess_sync(url, timeout_s=connect_timeout_s)
    client = cast(
        aioredis.Redis,
        clusters.async_client(
            url,
            cluster=cluster,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            health_check_interval=30,
        ),
    )
    if isinstance(client, aioredis.Redis):  # a cluster client's nodes keep redis-py's packing
        _packing_with_hiredis(client)
    return client


class _HiredisPacking:
    """Commands packed by hiredis, as redis-py's synchronous client does (`redis.connection.HiredisRespSerializer`),
    where its asyncio client packs them argument by argument in Python: an XACK of a 1,000-entry batch cost 0.7 us
    per entry id that way (benchmarks/NOTES.md). A mixin put before the pool's own connection class (TCP, TLS, Unix
    socket, Sentinel-managed); arguments hiredis refuses (a bool, None) go to redis-py, which raises its DataError."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # a command name holding its subcommand ("CLIENT SETNAME") goes as two words
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        # Typed by hiredis as a 1-tuple: any length is packed.
        packed: Any = tuple(bytes(arg) if isinstance(arg, bytearray | memoryview) else arg for arg in args)
        try:
            return [hiredis.pack_command(packed)]
        except (TypeError, UnicodeEncodeError):
            return AbstractConnection.pack_command(cast(AbstractConnection, self), *args)


def _packing_with_hiredis(client: aioredis.Redis) -> None:
    """Have `client`'s pool make connections packing commands with hiredis (`_HiredisPacking`); before any exists."""
    pool = client.connection_pool
    base = pool.connection_class
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})


class Entry(NamedTuple):
    """One stream entry as delivered to a consumer; `fields` is empty when it was deleted while pending.

    A named tuple rather than a frozen dataclass: one is built per entry read, and a frozen dataclass's
    `__init__` costs several times a tuple's (measured in benchmarks/NOTES.md)."""

    id: str
    fields: dict[bytes, bytes]

    @property
    def deleted(self) -> bool:
        """XADD needs at least one field, so an empty entry is one XDELed or trimmed while pending."""
        return not self.fields


# Entry.id and Entry.fields as C functions, for map() over a batch.
ENTRY_ID, ENTRY_FIELDS = itemgetter(0), itemgetter(1)


def total_size_bytes(entries: Sequence[Entry]) -> int:
    """The bytes of the entries' field names and values: what holding them costs, less Python's per-object
    overhead. In C loops over the batch (a property call per entry cost more)."""
    fields = list(map(ENTRY_FIELDS, entries))
    return sum(map(len, chain.from_iterable(fields))) + sum(map(len, chain.from_iterable(map(dict.values, fields))))


@dataclass(frozen=True)
class ClaimPage:
    """One XAUTOCLAIM step: entries now owned by us, ids deleted while pending, and where to continue."""

    next_cursor: str
    entries: list[Entry]
    deleted_ids: list[str]


def _entries(raw: Sequence[tuple[bytes, dict[bytes, bytes] | None]]) -> list[Entry]:
    return [Entry(text(entry_id), fields or {}) for entry_id, fields in raw]


def _unparsed_reply(response: Any, **options: Any) -> Any:
    return response


def _read_entries(flat: Sequence[tuple[bytes, Sequence[bytes] | None]]) -> list[Entry]:
    """Entries from XREADGROUP's reply as hiredis parsed it: [id, [name, value, name, value, ...] or nil]."""
    entries = []
    for entry_id, pairs in flat:
        # The wire format's fields (v, data, and identity when exact): a dict display beats dict(zip(...)).
        if pairs and len(pairs) == 6:
            fields = {pairs[0]: pairs[1], pairs[2]: pairs[3], pairs[4]: pairs[5]}
        elif pairs and len(pairs) == 4:
            fields = {pairs[0]: pairs[1], pairs[2]: pairs[3]}
        else:
            it = iter(pairs or ())
            fields = dict(zip(it, it, strict=False))
        entries.append(_new_entry(Entry, (entry_id.decode(), fields)))
    return entries


# tuple.__new__ straight, skipping the named tuple's generated constructor (a Python frame per entry).
_new_entry = cast(Callable[[type[Entry], tuple[str, dict[bytes, bytes]]], Entry], tuple.__new__)


@dataclass
class Settlement:
    """Settling one batch (`StreamGroup.settle`), carried across attempts so a retry does only what is left.

    `ack_ids` are the entries stored; `dead_letters` the entries to dead-letter (and acknowledge) still owed;
    `uncertain` that the last attempt was sent and its reply lost; `trimmed` the old dead letters the cap removed;
    `trim_uncounted` that an attempt whose reply was lost trimmed too, so `trimmed` is short by an unknown number.
    """

    ack_ids: Sequence[str]
    dead_letters: list[DeadLetter]
    uncertain: bool = False
    trimmed: int = 0
    trim_uncounted: bool = False
    done: bool = False


class StreamGroup:
    """One stream read through one consumer group, plus its dead-letter stream."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        group: str,
        dead_letter_stream: str,
        on_recreated: Callable[[bool], None] | None = None,
        dead_letter_maxlen: int | None = None,
        identity_prefix: str = "",
        masters: clusters.NodeClients | None = None,
    ) -> None:
        self.redis = redis
        # On a cluster: plain clients to single masters, for the MULTI/EXEC of `settle`.
        self.masters = masters
        self.stream = stream
        self.group = group
        self.dead_letter_stream = dead_letter_stream
        # The dead-letter stream's own cap (approximate, like XADD's MAXLEN ~); None leaves it uncapped.
        self.dead_letter_maxlen = dead_letter_maxlen
        # Called with whether the stream itself was gone, each time a vanished group is recreated.
        self.on_recreated = on_recreated
        # Put before an entry id standing in for a missing interaction_id (`shards.Shard.identity_prefix`).
        self.identity_prefix = identity_prefix
        # XREADGROUP's reply as hiredis parsed it (lists of bytes), without redis-py's per-entry callback
        # (pairs_to_dict, a list of tuples): `read` builds the entries in one pass (benchmarks/NOTES.md). Set on
        # a plain client only (a cluster client keeps redis-py's parsing); nothing else the worker runs on it reads
        # with XREADGROUP.
        self._unparsed_reads = isinstance(redis, aioredis.Redis)
        if self._unparsed_reads:
            redis.set_response_callback("XREADGROUP", _unparsed_reply)

    async def check_key_types(self) -> None:
        """Raise WrongKeyTypeError when the stream's or the dead-letter stream's key holds another type (a string
        someone SET by mistake): the worker would otherwise fail on it at every read or every dead letter."""
        for key, role in ((self.stream, "stream"), (self.dead_letter_stream, "dead-letter stream")):
            try:
                await self.redis.xlen(key)  # 0 for a missing key, WRONGTYPE for a key that is not a stream
            except ResponseError as error:
                if error_code(error) == "WRONGTYPE":
                    raise WrongKeyTypeError(key, role) from None
                if is_refusal(error):
                    raise RedisRefusedError(f"Redis refused XLEN {key}: {error}") from error
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                raise RedisUnavailableError(f"Redis is unreachable: {error}") from error

    async def ensure_group(self) -> bool:
        """Create the group at id 0 (creating the stream too) unless it exists; True when it was created.

        Id 0, not $: entries published before the first worker ever started are still stored.
        """
        try:
            await self._call(self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except ResponseError as error:
            if is_error(error, "BUSYGROUP"):
                return False
            raise
        log.info("group_created", stream=self.stream, group=self.group)
        return True

    async def read(
        self, consumer: str, *, count: int, block_ms: int | None, pending: bool, after: str = "0"
    ) -> list[Entry]:
        """XREADGROUP: our own pending entries with ids above `after` when `pending`, else new ones (`>`).
        Only a read of new entries blocks (`block_ms`; None returns at once)."""
        start = after if pending else ">"
        reply = await self._with_group(
            lambda: self.redis.xreadgroup(
                self.group, consumer, {self.stream: start}, count=count, block=None if pending else block_ms
            )
        )
        if not reply:
            return []
        if not self._unparsed_reads:  # redis-py's parsed reply: [[stream, [(id, fields), ...]]]
            return _entries(cast(Any, reply)[0][1])
        # One stream's entries, [[id, [name, value, ...]], ...]: in a map keyed by the stream under RESP3 (redis-py
        # 8's default), in [[stream, entries]] under RESP2.
        unparsed: Any = reply  # typed as redis-py's callback would have parsed it
        return _read_entries(next(iter(unparsed.values())) if isinstance(unparsed, dict) else unparsed[0][1])

    async def claim(self, consumer: str, *, min_idle_ms: int, cursor: str, count: int) -> ClaimPage:
        """One XAUTOCLAIM step; Redis drops deleted entries from the pending list and reports their ids."""
        reply = await self._with_group(
            lambda: self.redis.xautoclaim(self.stream, self.group, consumer, min_idle_ms, cursor, count=count)
        )
        if not reply:
            return ClaimPage("0-0", [], [])
        deleted = [text(entry_id) for entry_id in reply[2]] if len(reply) > 2 else []
        return ClaimPage(text(reply[0]), _entries(reply[1]), deleted)

    async def delivery_counts(self, consumer: str, entries: Sequence[Entry]) -> dict[str, int]:
        """The delivery count of each of `entries` (pending for `consumer`), as XPENDING reports it."""
        if not entries:
            return {}
        rows = await self._with_group(
            lambda: self.redis.xpending_range(
                self.stream,
                self.group,
                entries[0].id,
                entries[-1].id,
                len(entries) * 2,
                consumername=consumer,
            )
        )
        # redis-py names XPENDING's delivery count `times_delivered`.
        return {text(cast(bytes, row["message_id"])): int(row["times_delivered"]) for row in rows or []}

    @contextlib.asynccontextmanager
    async def holding(self, consumer: str, ids: Sequence[str], *, claim_idle_ms: int) -> AsyncIterator[None]:
        """Hold `ids` (pending for `consumer`) for as long as the block runs: their idle time is reset every
        third of `claim_idle_ms`, so the XAUTOCLAIM sweeps of other consumers leave them alone.

        Without this, a batch retried through a long PostgreSQL outage would look abandoned: other consumers
        would claim it again and again, each claim counting as a delivery, until max_deliveries dead-lettered
        perfectly good entries.
        """
        released = asyncio.Event()
        heartbeat = asyncio.create_task(self._keep_holding(consumer, ids, claim_idle_ms / 3000, released))
        try:
            yield
        finally:
            released.set()
            heartbeat.cancel()
            # Wait for the heartbeat, but never let it decide how this block ends: a `suppress(CancelledError)`
            # around `await heartbeat` would also swallow a cancellation of the caller's own (its shutdown), and a
            # heartbeat whose cancellation got lost (Python 3.11's asyncio.timeout can turn a cancel into the
            # TimeoutError of a Redis read, and redis-py can swallow one) would hold the caller forever. The flag ends
            # that one at its next turn.
            await asyncio.wait({heartbeat}, timeout=HEARTBEAT_STOP_WAIT_S)
            if heartbeat.done() and not heartbeat.cancelled() and heartbeat.exception() is not None:
                log.warning("heartbeat_failed", error=str(heartbeat.exception()))

    async def _keep_holding(
        self, consumer: str, ids: Sequence[str], interval_s: float, released: asyncio.Event
    ) -> None:
        while not released.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), timeout=interval_s)
            if released.is_set():
                return
            with contextlib.suppress(TransientError):  # Redis away: then nobody can claim them either
                await self.reset_idle(consumer, ids)
            raise_if_cancelling()  # redis-py may have swallowed the cancellation that ends the hold

    async def reset_idle(self, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer holds with XCLAIM ... JUSTID, which (unlike a plain
        XCLAIM) does not increment their delivery count."""
        if ids:
            await self._with_group(
                lambda: self.redis.xclaim(self.stream, self.group, consumer, 0, list(ids), justid=True)
            )

    async def settle(self, settlement: Settlement, consumer: str) -> None:
        """Dead-letter and acknowledge in one MULTI/EXEC, so an entry is never acked without its dead letter; one
        attempt, recorded in `settlement` (raises TransientError; retry with the same `settlement`).

        Two ways the worker could fail to see what an EXEC did are closed here:
        - Inside EXEC, Redis runs a MULTI's other commands when one fails (the MULTI/EXEC documentation, "Errors
          inside a transaction"): an XADD refused with WRONGTYPE, the dead-letter key overwritten with a string,
          would leave its XACK done and its dead letter unwritten, lost if the worker stopped before someone fixed
          the key. So the key is checked to be a stream (XLEN) first, and a WRONGTYPE stops the settle before
          anything runs. Not under WATCH: every other worker's dead letter would abort the EXEC, and in a flood of
          bad records settles could starve; what is left is a key replaced within the one round trip between the
          two, and even then the retry writes the dead letters once the key is a stream again.
        - A reply lost after Redis ran the EXEC (a dropped connection, a socket timeout) looks like one that never
          arrived. The attempt after such a loss asks XPENDING which dead-lettered entries are still this
          consumer's: an EXEC is all or nothing, so entries no longer pending were settled by it, and their dead
          letters are not written again. How many old dead letters its XTRIM removed is then unknown
          (`settlement.trim_uncounted`).

        With a dead-letter cap, the same MULTI trims the dead-letter stream to about that many entries (XTRIM
        MAXLEN ~); `settlement.trimmed` adds how many old dead letters that removed, for the caller to count.
        """
        if settlement.done:
            return
        try:
            if settlement.uncertain and settlement.dead_letters:
                held = await self._still_held(consumer, settlement.dead_letters)
                if held is None:  # the group was recreated: every entry will be delivered again, and settled then
                    held = []
                elif not held:  # the lost EXEC ran: its dead letters are written and its entries acknowledged
                    settlement.trim_uncounted = settlement.trim_uncounted or self.dead_letter_maxlen is not None
                settlement.dead_letters = held
            settlement.uncertain = False
            settlement.trimmed += await self._settle(settlement.ack_ids, settlement.dead_letters, consumer)
            settlement.done = True
        except RedisUnavailableError:
            settlement.uncertain = True  # sent, perhaps run: the next attempt asks before writing again
            await self._refresh_masters()
            raise
        except TransientError:
            await self._refresh_masters()
            raise

    async def _refresh_masters(self) -> None:
        if self.masters is not None:  # a failover may have moved the slot: learn where it lives now
            await self.masters.refresh()

    def _master(self) -> aioredis.Redis:
        """The client that runs a MULTI/EXEC on the stream's keys: on a cluster, a plain connection to the slot's
        master (`clusters.NodeClients`)."""
        try:
            return self.masters.for_key(self.stream) if self.masters is not None else self.redis
        except CLUSTER_FAILURES as error:
            raise RedisUnavailableError(f"Redis Cluster cannot serve the stream's slot yet: {error}") from error

    async def _still_held(self, consumer: str, dead_letters: list[DeadLetter]) -> list[DeadLetter] | None:
        """Those of `dead_letters` whose entries are still pending for `consumer` (XPENDING of each id alone: a
        range could stop short at its count among the batch's other pending entries); None when the group had
        vanished and was recreated."""

        async def ask() -> list[Any]:
            pipe = self._master().pipeline(transaction=False)
            for letter in dead_letters:
                pipe.xpending_range(self.stream, self.group, letter.entry.id, letter.entry.id, 1, consumer)
            return await pipe.execute()

        replies = await self._with_group(ask)
        if replies is None:
            return None
        return [letter for letter, rows in zip(dead_letters, replies, strict=True) if rows]

    async def _settle(self, ack_ids: Sequence[str], dead_letters: Sequence[DeadLetter], consumer: str) -> int:
        ids = [*ack_ids, *(letter.entry.id for letter in dead_letters)]
        if not ids:
            return 0
        client = self._master()
        keys = (self.stream, self.dead_letter_stream)
        if dead_letters:  # WRONGTYPE here, before anything runs
            await self._call(client.xlen(self.dead_letter_stream), keys=keys)
        pipe = client.pipeline(transaction=True)
        failed_at = datetime.now(UTC).isoformat()
        for letter in dead_letters:
            fields = dead_letter_fields(
                letter, stream=self.stream, group=self.group, consumer=consumer, failed_at=failed_at
            )
            pipe.xadd(self.dead_letter_stream, cast(dict[Any, Any], fields))
        trimming = bool(dead_letters) and self.dead_letter_maxlen is not None
        if trimming:
            pipe.xtrim(self.dead_letter_stream, maxlen=self.dead_letter_maxlen, approximate=True)
        pipe.xack(self.stream, self.group, *ids)
        replies = await self._call(pipe.execute(), keys=keys)
        return int(replies[len(dead_letters)]) if trimming else 0

    async def _with_group(self, command: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run a group command; when the group has vanished, recreate it and return None (nothing read)."""
        try:
            return await self._call(command())
        except ResponseError as error:
            if not is_error(error, "NOGROUP"):
                raise
        stream_existed = bool(await self._call(self.redis.exists(self.stream)))
        if not await self.ensure_group():
            return None  # another consumer recreated it first, and reported it
        # Error level: whatever the group had not yet stored when it vanished may be lost, and someone should
        # know. The stream gone too means Redis restarted without persistence (or the key was deleted).
        log.error(
            "group_missing_recreated",
            stream=self.stream,
            group=self.group,
            stream_existed=stream_existed,
            hint="entries not yet stored when the group vanished may be lost; "
            + ("was the group deleted?" if stream_existed else "did Redis restart without AOF persistence?"),
        )
        if self.on_recreated:
            self.on_recreated(stream_existed)
        return None

    async def _call(self, awaitable: Awaitable[_T], keys: Sequence[str] = ()) -> _T:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise RedisUnavailableError(f"Redis is unreachable: {error}") from error
        except CLUSTER_FAILURES as error:
            raise RedisUnavailableError(f"Redis Cluster cannot serve the stream's slot yet: {error}") from error
        except (MovedError, AskError) as error:  # only from `masters`: the cluster client follows redirections
            raise RedisUnavailableError(f"the stream's slot moved to another master: {error}") from error
        except ResponseError as error:
            if not is_refusal(error):
                raise
            code = error_code(error)
            if code == "WRONGTYPE":
                named = " or ".join(repr(key) for key in keys or (self.stream,))
                raise RedisRefusedError(
                    f"Redis refused a command: the key {named} holds a value that is not a stream (WRONGTYPE); "
                    "rename or delete it, nothing is acknowledged meanwhile"
                ) from error
            raise RedisRefusedError(f"Redis refused a command ({code}), retrying: {error}") from error
