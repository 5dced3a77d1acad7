"""Keeping the stream and its group tidy without ever dropping unprocessed data.

Periodic chores, run by each worker process on a timer (and once before its consumers first read). Only the
worker's own group is ever changed; other groups on the stream are only read, to trim nothing they still need.
Each chore runs on its own: one Redis refuses (an ACL without INFO or scripting) is reported in
`HousekeepingReport.refused` while the others still run.

- **Presence.** The process announces its consumers as live (`presence`), so `status` tells them from departed
  ones.

- **Safe trimming.** Workers XTRIM by MINID below the oldest entry any group on the stream still needs
  (its oldest pending entry, or the first entry after its last-delivered id), so only entries every group has
  acknowledged are removed. The publishers' approximate MAXLEN stays as a memory guard rail only.
- **Accounting for guard-rail losses.** When a backlog outgrows MAXLEN, Redis trims entries no group has read.
  Redis 7.0 keeps counting them in the group's lag (entries-added minus entries-read), so the loss is
  `lag - entries actually present after last-delivered-id`. That figure is recorded per group in a Redis hash
  with a compare-and-set, so exactly one replica counts each lost entry, and it is logged at error level. A group
  that has never read (no entries-read, last-delivered-id 0-0) is owed every entry ever added; Redis's estimate
  of its read counter would hide what was trimmed before its first read, so that is measured first, and a worker
  runs one round before its consumers read anything.
- **Consumer hygiene.** Consumers with no pending entries that have been idle past a threshold are deleted
  (departed processes; every process gets new consumer names). The check and the XGROUP DELCONSUMER run in one
  Lua script, so a consumer that just received entries is never deleted with them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ResponseError

from .. import entry_ids
from ..replies import error_code, is_missing_key, text
from . import presence

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

# Measures, records and repairs, atomically (a concurrent trim or read cannot skew it), the entries of the
# stream trimmed before the group read them. Redis 7.0 keeps counting such entries in the group's lag
# (entries-added minus entries-read) for good, so the discrepancy lag - (entries present after
# last-delivered-id) is the loss since the last round. Each round then resets entries-read to the truth with
# XGROUP SETID ... ENTRIESREAD, so the reported lag is again what is left to read, and the next round measures
# only new losses (HINCRBY, which also keeps counting correctly after the group is recreated).
# One false source remains: Redis 7.0 reloads entries-read from the last AOF rewrite on restart, inflating the
# lag. A changed run_id says Redis restarted, and that round repairs the lag without counting a loss.
# Returns {newly counted, discrepancy, restarted (0/1)}; {0, -1, 0} when nothing could be measured.
_ACCOUNT_LOSS = """
-- entry_ids.parse and a comparison, in Lua
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function greater(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams > bms or (ams == bms and aseq > bseq)
end
local function fields(flat)
  local result = {}
  for i = 1, #flat, 2 do result[flat[i]] = flat[i + 1] end
  return result
end
local group, max_scan, run_id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local info
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local candidate = fields(raw)
  if candidate['name'] == group then info = candidate end
end
if not info then return {0, -1, 0} end
local last = info['last-delivered-id']
local lag = info['lag']
if not info['entries-read'] and last == '0-0' then
  -- Never read: every entry ever added is owed to the group. Redis estimates its read counter from the
  -- stream's first entry instead, which counts the entries trimmed before that first read as read.
  lag = fields(redis.call('XINFO', 'STREAM', KEYS[1]))['entries-added']
end
if not lag then return {0, -1, 0} end
lag = tonumber(lag)
local length = redis.call('XLEN', KEYS[1])
local present = 0
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then
  if greater(head[1][1], last) then
    present = length
  else
    local after = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', max_scan + 1)
    if after <= max_scan then
      present = after
    else
      local upto = #redis.call('XRANGE', KEYS[1], '-', last, 'COUNT', max_scan + 1)
      if upto > max_scan then return {0, -1, 0} end
      present = length - upto
    end
  end
end
local run_key = 'run_id:' .. group
local previous_run = redis.call('HGET', KEYS[2], run_key)
redis.call('HSET', KEYS[2], run_key, run_id)
local restarted = previous_run and previous_run ~= run_id
local discrepancy = lag - present
if discrepancy <= 0 then return {0, discrepancy, restarted and 1 or 0} end
local added = tonumber(fields(redis.call('XINFO', 'STREAM', KEYS[1]))['entries-added'])
redis.call('XGROUP', 'SETID', KEYS[1], group, last, 'ENTRIESREAD', added - present)
if restarted then return {0, discrepancy, 1} end
redis.call('HINCRBY', KEYS[2], group, discrepancy)
return {discrepancy, discrepancy, 0}
"""

# Fields of the loss hash that remember the Redis run id a group was last measured under, not losses.
RUN_ID_FIELD_PREFIX = "run_id:"

# A large unread backlog that starts before the stream's head is counted on a later round rather than scanned.
MAX_LOSS_SCAN = 10_000

# Deletes the consumer only if, at this instant, it holds nothing and has been idle long enough.
_DELETE_IF_DEPARTED = """
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""


# The chores, as named in `HousekeepingReport.refused` and the `chore` label of housekeeping_failures_total:
# what each needs from the worker's Redis user, and what is not done while it is refused.
CHORES: dict[str, tuple[str, str]] = {
    "presence": ("HSET, HGETALL and HDEL", "`interactionlog status` cannot tell live consumers from departed ones"),
    "loss_accounting": (
        "INFO, EVALSHA and SCRIPT LOAD, and in the script XINFO, XLEN, XRANGE, XGROUP SETID, HGET, HSET, HINCRBY",
        "entries the MAXLEN cap trims before they are read are not counted",
    ),
    "trimming": ("XINFO, XPENDING and XTRIM", "acknowledged entries stay in the stream until the MAXLEN cap"),
    "consumer_hygiene": (
        "EVALSHA and SCRIPT LOAD, and in the script XINFO and XGROUP DELCONSUMER",
        "consumers of departed workers stay in the group",
    ),
}


@dataclass
class HousekeepingReport:
    """What one round did: chores done, and those Redis refused (chore -> Redis's error)."""

    trimmed: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    deleted_consumers: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class RefusalLog:
    """Says each refused chore once at error level, with what to grant and what is not done meanwhile, and once
    at info level when it works again; the caller counts every refused round in a metric."""

    said: dict[str, str] = field(default_factory=dict)

    def note(self, report: HousekeepingReport, stream: str) -> None:
        """Log what changed since the last round."""
        for chore, error in report.refused.items():
            if self.said.get(chore) != error:
                self.said[chore] = error
                needs, meanwhile = CHORES[chore]
                log.error(
                    "housekeeping_refused",
                    stream=stream,
                    chore=chore,
                    error=error,
                    hint=f"grant the worker's Redis user {needs} (README: Redis ACL); until then {meanwhile}",
                )
        for chore in report.done:
            if self.said.pop(chore, None) is not None:
                log.info("housekeeping_chore_recovered", stream=stream, chore=chore)


def loss_key(stream: str) -> str:
    """The Redis hash holding, per group, how many entries of `stream` were trimmed before it read them."""
    return f"{stream}:interactionlog:lost"


class Housekeeper:
    """One stream's chores for one group; safe to run from every replica at once."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        group: str,
        consumer_idle_ms: int,
        own_prefix: str,
        own_consumers: Sequence[str] = (),
        presence_ttl_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer_idle_ms = consumer_idle_ms
        self.own_prefix = own_prefix
        self.own_consumers = list(own_consumers)
        self.presence_ttl_ms = presence_ttl_ms
        self._measure_loss = redis.register_script(_ACCOUNT_LOSS)
        self._delete_if_departed = redis.register_script(_DELETE_IF_DEPARTED)

    async def run_once(self) -> HousekeepingReport:
        """Announce, account losses (trimming must not hide them), trim, then remove departed consumers.

        Raises RedisError only when Redis cannot be reached at all; a chore Redis refuses is reported instead.
        """
        report = HousekeepingReport()
        await self._chore(report, "presence", self._announce)
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError as error:
            if is_missing_key(error):
                return report
            report.refused["trimming"] = _said(error)
            return report
        if not groups:
            return report  # nobody reads this stream yet: everything in it is still unprocessed
        own = next((group for group in groups if text(group["name"]) == self.group), None)
        if own is not None:
            lost = await self._chore(report, "loss_accounting", self._account_own_loss)
            if lost:
                report.lost[self.group] = lost
        report.trimmed = await self._chore(report, "trimming", lambda: self._trim_safely(groups)) or 0
        if own is not None:
            report.deleted_consumers = await self._chore(report, "consumer_hygiene", self._remove_departed) or []
        return report

    @staticmethod
    async def _chore(report: HousekeepingReport, name: str, work: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run one chore; an error reply (NOPERM, an unknown command, ...) is reported, not raised."""
        try:
            result = await work()
        except ResponseError as error:
            report.refused[name] = _said(error)
            return None
        report.done.append(name)
        return result

    async def _announce(self) -> None:
        await presence.announce(self.redis, self.stream, self.group, self.own_consumers, self.presence_ttl_ms)

    async def _account_own_loss(self) -> int:
        return await self._account_loss(self.group, await self._run_id())

    async def _run_id(self) -> str:
        """The run id of the Redis holding the stream: on a cluster, of the master serving its slot (a cluster
        client's plain INFO asks any node, whose run id would look like a restart every round)."""
        if isinstance(self.redis, AsyncRedisCluster):
            node = self.redis.get_node_from_key(self.stream)
            return text((await self.redis.info("server", target_nodes=node))["run_id"])
        return text((await self.redis.info("server"))["run_id"])

    async def _trim_safely(self, groups: Sequence[dict[str, object]]) -> int:
        """Trim below what every group on the stream still needs (other groups are read, never changed)."""
        bounds = [await self._safe_bound(text(group["name"]), text(group["last-delivered-id"])) for group in groups]
        return await self._trim_below(entry_ids.lowest(*bounds))

    async def _safe_bound(self, group: str, last_delivered: str) -> str:
        """Everything below this id has been delivered to and acknowledged by `group`."""
        summary = await self.redis.xpending(self.stream, group)
        if summary and summary.get("min"):
            return entry_ids.lowest(text(summary["min"]), entry_ids.next_id(last_delivered))
        return entry_ids.next_id(last_delivered)

    async def _trim_below(self, min_id: str) -> int:
        # `~` lets Redis remove only whole macro nodes: cheaper, and it can only ever keep more than asked.
        return int(await self.redis.xtrim(self.stream, minid=min_id, approximate=True))

    async def _account_loss(self, group: str, run_id: str) -> int:
        """Record entries trimmed before `group` read them; returns how many are newly counted by this call."""
        newly, discrepancy, restarted = await self._measure_loss(
            keys=[self.stream, loss_key(self.stream)], args=[group, MAX_LOSS_SCAN, run_id]
        )
        if restarted and int(discrepancy) > 0:
            log.warning(
                "lag_resynchronised_after_redis_restart",
                stream=self.stream,
                group=group,
                phantom_lag=int(discrepancy),
                hint="Redis 7.0 reloads a group's read counter from its last AOF rewrite; not counted as a loss",
            )
        if newly:
            log.error(
                "entries_lost_to_trimming",
                stream=self.stream,
                group=group,
                lost=int(newly),
                hint="the backlog outgrew the stream's MAXLEN cap: add workers or raise --stream-maxlen",
            )
        return int(newly)

    async def _remove_departed(self) -> list[str]:
        group = self.group
        deleted = []
        consumers = await self.redis.xinfo_consumers(self.stream, group)
        for consumer in consumers:
            name = text(consumer["name"])
            if (
                name.startswith(self.own_prefix)
                or int(consumer["pending"])
                or int(consumer["idle"]) < self.consumer_idle_ms
            ):
                continue
            if await self._delete_if_departed(keys=[self.stream], args=[group, name, self.consumer_idle_ms]):
                deleted.append(name)
        if deleted:
            log.info("departed_consumers_deleted", group=group, consumers=deleted)
        # This process's own consumers are kept even before their first XREADGROUP has created them in the group:
        # forgetting them then left a shard without presence (`status` without its live/departed split) until
        # the next round.
        remaining = {text(consumer["name"]) for consumer in consumers} - set(deleted) | set(self.own_consumers)
        await presence.forget_departed(self.redis, self.stream, group, remaining, self.consumer_idle_ms)
        return deleted


def _said(error: ResponseError) -> str:
    code = error_code(error)
    return f"{code}: {error}" if code and not str(error).startswith(code) else str(error)


async def recorded_losses(redis: aioredis.Redis, stream: str) -> dict[str, int]:
    """Per group, how many entries of `stream` were trimmed unread, as recorded so far."""
    raw = await redis.hgetall(loss_key(stream))
    return {text(name): int(value) for name, value in raw.items() if not text(name).startswith(RUN_ID_FIELD_PREFIX)}
