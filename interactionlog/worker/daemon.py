"""Builds the worker from settings, runs the consumer pool, and owns start-up and shutdown order.

Lifecycle (read top to bottom in `run_worker`): connect lazily (Redis or PostgreSQL may still be starting),
ensure the group exists, start `concurrency` consumers, wait for SIGTERM/SIGINT, then shut down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .. import clusters
from ..errors import ConfigurationError, RedisUnavailableError, WrongKeyTypeError
from ..metrics import WorkerMetrics
from ..redact import redact_url
from ..retry import OutageLog, StoppedError, periodically, until_done
from ..settings import Settings
from ..shards import Shard, check_one_slot
from . import presence
from .consumer import Consumer, ConsumerOptions
from .housekeeping import CHORES, RefusalLog
from .observation import Observer
from .partition_maintenance import keep_partitions
from .shard_work import ShardWork
from .statistics import keep_statistics
from .store import Store
from .streams import connect

log = structlog.get_logger(__name__)

# Read here rather than in Settings on purpose: it is a test-only hook and must not appear as a flag.
CRASH_HOOK_VARIABLE = "INTERACTIONLOG_TEST_CRASH_AT"

# Redis away (or a cluster moving a slot's master): logged once, retried at the next round.
REDIS_AWAY = (RedisError, RedisClusterException, OSError)

EXIT_OK = 0
EXIT_SHUTDOWN_TIMED_OUT = 1
EXIT_FORCED = 130  # 128 + SIGINT, as shells report an interrupted program
EXIT_MISCONFIGURED = 2  # as the CLI's usage errors: nothing to retry until someone changes something


def consumer_options(settings: Settings) -> ConsumerOptions:
    """The per-consumer knobs out of the settings."""
    return ConsumerOptions(
        batch_size=settings.batch_size,
        batch_max_bytes=settings.batch_max_bytes,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        claim_interval_ms=settings.claim_interval_ms,
        max_deliveries=settings.max_deliveries,
        max_record_bytes=settings.max_record_bytes,
        retry_max_backoff_s=settings.retry_max_backoff_s,
        scrub_payloads=settings.scrub_payloads == "on",
        crash_at=os.environ.get(CRASH_HOOK_VARIABLE) or None,
    )


async def run_worker(
    settings: Settings,
    *,
    stopping: asyncio.Event | None = None,
    on_started: Callable[[WorkerMetrics], None] | None = None,
) -> int:
    """Run consumers until `stopping` is set (by SIGTERM/SIGINT when not given); returns the exit code."""
    # Everything alive now (modules, settings) lives as long as the process: frozen, the collector's full passes
    # no longer walk it, where they came about every dozen batches for the batches' own short-lived objects
    # (benchmarks/NOTES.md). Unfrozen at the end, for callers that go on in the same process (tests).
    gc.freeze()
    try:
        return await _run_worker(settings, stopping or stop_on_signals(), on_started)
    finally:
        gc.unfreeze()


async def _run_worker(
    settings: Settings, stopping: asyncio.Event, on_started: Callable[[WorkerMetrics], None] | None
) -> int:
    log.info(
        "worker_starting",
        redis_url=redact_url(settings.redis_url),
        database_url=redact_url(settings.database_url),
        stream=settings.stream,
        shards=settings.shards,
        drain_shards=settings.drain_shards or None,
        group=settings.group,
        concurrency=settings.concurrency,
        batch_size=settings.batch_size,
    )
    outages = OutageLog()
    # A first guess at the kind of Redis, so the probes answer while Redis is still starting; the consumers wait
    # for the node to say (`_detect_cluster`), and the observer follows if the guess was wrong.
    guessed = clusters.guess_sync(settings.redis_url, timeout_s=settings.redis_timeout_s)
    shard_list = _shards(settings)
    metrics = WorkerMetrics.create(shard_list[0].stream, settings.group)
    for shard in shard_list:  # every series of every shard at 0 before /metrics is first served, just below
        metrics.for_stream(shard.stream).export_zeros(chores=CHORES)
    store = await Store.open(
        settings.database_url,
        max_connections=settings.concurrency * len(shard_list) + 1,
        dedupe_window_hours=settings.dedupe_window_hours,
    )
    exit_code = EXIT_OK
    observer = None
    redis: aioredis.Redis | None = None
    masters: clusters.NodeClients | None = None
    try:
        # /metrics, /livez, /readyz and the stream gauges; up before the group exists, so probes answer meanwhile.
        # Inside the try: the pool opened above must be closed whatever happens here.
        observer = await _observe(settings, metrics, store, stopping, cluster=guessed)
        cluster = await _detect_cluster(settings, outages, stopping)
        if cluster is not None and cluster != guessed and observer is not None:
            await observer.stop()
            observer = await _observe(settings, metrics, store, stopping, cluster=cluster)
        # Each consumer holds one connection in its blocking read and may need one more to settle a batch.
        redis = connect(
            settings.redis_url,
            socket_timeout_s=settings.redis_socket_timeout_s,
            connect_timeout_s=settings.redis_timeout_s,
            max_connections=2 * settings.concurrency * len(shard_list) + 2,
            cluster=bool(cluster),
        )
        if isinstance(redis, AsyncRedisCluster):
            masters = clusters.NodeClients(redis, max_connections=settings.concurrency * len(shard_list) + 2)
        work = [ShardWork.build(redis, shard, settings, metrics, masters) for shard in shard_list]
        if cluster is not None:
            ready, exit_code = await _prepare(work, cluster, outages, stopping, settings.retry_max_backoff_s)
            if ready:
                exit_code = await _consume(
                    work, settings, store=store, redis=redis, outages=outages, stopping=stopping, on_started=on_started
                )
    finally:
        # Then the sinks, in reverse order of need: PostgreSQL, Redis, and last the metrics endpoint, so a
        # scrape during the drain still sees the final counts.
        await store.close()
        if masters is not None:
            await masters.aclose()
        if redis is not None:
            await redis.aclose()
        if observer is not None:
            await observer.stop()
    log.info("worker_stopped", exit_code=exit_code)
    return exit_code


async def _prepare(
    work: list[ShardWork], cluster: bool, outages: OutageLog, stopping: asyncio.Event, max_backoff_s: float
) -> tuple[bool, int]:
    """Check the shards' keys and create their groups: (ready, exit code); not ready when stopped first or
    misconfigured (a key of the wrong type, a shard's keys in different cluster slots)."""
    try:
        if cluster:
            for part in work:
                check_one_slot(part.shard)
        return await _ensure_groups(work, outages, stopping, max_backoff_s), EXIT_OK
    except WrongKeyTypeError as error:
        # One line, no traceback: nothing is broken in the worker, a key is wrong.
        log.error("key_has_wrong_type", key=error.key, role=error.role, error=str(error))  # noqa: TRY400
    except ConfigurationError as error:
        log.error("shards_misconfigured", error=str(error))  # noqa: TRY400
    return False, EXIT_MISCONFIGURED


async def _consume(
    work: list[ShardWork],
    settings: Settings,
    *,
    store: Store,
    redis: aioredis.Redis,
    outages: OutageLog,
    stopping: asyncio.Event,
    on_started: Callable[[WorkerMetrics], None] | None,
) -> int:
    """Run `concurrency` consumers per shard and the housekeeping until stopped, then drain; the exit code."""
    exit_code = EXIT_OK
    names = [f"{settings.consumer_prefix}-{index}" for index in range(settings.concurrency)]
    for part in work:
        part.housekeeper.own_consumers = names
    refusals = {part.shard.stream: RefusalLog() for part in work}
    # One round before any consumer reads: a group that never read is owed every entry ever added, and
    # its first read would hide the ones the MAXLEN cap trimmed meanwhile.
    with contextlib.suppress(*REDIS_AWAY):  # Redis away again: the periodic rounds will tell
        for part in work:
            await _housekeeping_round(part, refusals[part.shard.stream])

    # Consumer k of shard i is task i * concurrency + k; its name is the same in every shard's group.
    def new_consumer(task_index: int) -> Consumer:
        part = work[task_index // settings.concurrency]
        return Consumer(
            names[task_index % settings.concurrency],
            streams=part.streams,
            store=store,
            metrics=part.metrics,
            outages=outages,
            stopping=stopping,
            options=consumer_options(settings),
        )

    chores = asyncio.create_task(_keep_house(work, refusals, stopping, settings.housekeeping_interval_ms / 1000))
    # Partitions are the table's, not a shard's: one task per process, counted under the first shard's labels.
    partition_chores = asyncio.create_task(keep_partitions(settings, work[0].metrics, stopping))
    # The dedupe window's probe needs the planner to know each partition being written (worker/statistics.py),
    # so the chore runs while this worker probes.
    statistics = keep_statistics(settings, stopping, probed_rows=lambda: store.probed_rows)
    statistics_chores = asyncio.create_task(statistics)
    tasks = {index: _start(new_consumer(index)) for index in range(settings.concurrency * len(work))}
    if on_started:
        on_started(work[0].metrics)
    await _supervise(tasks, new_consumer, stopping)
    log.info("worker_draining", timeout_s=settings.shutdown_timeout_s)
    # Consumers stop first, while Redis and PostgreSQL are still open: the batch in flight must still
    # commit and be acknowledged. Anything not finished by the deadline stays pending in Redis and is
    # claimed by another worker, so cancelling loses nothing; it only delays those entries.
    _, unfinished = await asyncio.wait(
        [*tasks.values(), chores, partition_chores, statistics_chores], timeout=settings.shutdown_timeout_s
    )
    if unfinished:
        exit_code = EXIT_SHUTDOWN_TIMED_OUT
        log.error(
            "shutdown_timed_out",
            consumers=sorted(task.get_name() for task in unfinished),
            # Where each one was waiting: the innermost frames of its coroutine chain.
            waiting_in={task.get_name(): _waiting_in(task) for task in unfinished},
        )
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
    # Gone, for `interactionlog status`; best effort, as a crash would skip it anyway.
    with contextlib.suppress(*REDIS_AWAY):
        for part in work:
            await presence.depart(redis, part.shard.stream, settings.group, names)
    return exit_code


def _shards(settings: Settings) -> list[Shard]:
    """Every stream this worker consumes: the shards of the current layout, then those of the layouts still
    drained (`--drain-shards`), each stream once."""
    seen: dict[str, Shard] = {}
    for layout in settings.layouts:
        for shard in layout.all():
            seen.setdefault(shard.stream, shard)
    return list(seen.values())


async def _detect_cluster(settings: Settings, outages: OutageLog, stopping: asyncio.Event) -> bool | None:
    """Whether the Redis URL names a cluster node, asking it until it answers; None when stopped before."""

    async def ask() -> bool:
        try:
            return await clusters.detect(settings.redis_url, timeout_s=settings.redis_timeout_s)
        except (RedisError, OSError) as error:
            raise RedisUnavailableError(f"Redis is unreachable: {error}") from error

    try:
        return await until_done(
            ask, failed=outages.failed, max_backoff_s=settings.retry_max_backoff_s, stopping=stopping
        )
    except StoppedError:
        return None


def _start(consumer: Consumer) -> asyncio.Task[None]:
    return asyncio.create_task(consumer.run(), name=consumer.name)


async def _supervise(
    tasks: dict[int, asyncio.Task[None]], new_consumer: Callable[[int], Consumer], stopping: asyncio.Event
) -> None:
    """Wait for `stopping`, restarting any consumer task that ends before it: a worker that is alive and ready
    must never consume nothing. `Consumer.run` catches every error of a step, so an ending task means something
    escaped that guard (a BaseException, a bug in the guard itself); it is logged with its cause, once per death."""
    stop = asyncio.create_task(stopping.wait(), name="stop-signal")
    try:
        while not stopping.is_set():
            done, _ = await asyncio.wait({stop, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
            for index, task in list(tasks.items()):
                if task in done and not stopping.is_set():
                    cause = None if task.cancelled() else task.exception()
                    log.error(
                        "consumer_died_restarted",
                        consumer=task.get_name(),
                        error=repr(cause) if cause else "ended without an error",
                    )
                    await asyncio.sleep(0.1)  # a consumer dying at once on start must not spin the loop
                    tasks[index] = _start(new_consumer(index))
    finally:
        stop.cancel()


async def _observe(
    settings: Settings, metrics: WorkerMetrics, store: Store, stopping: asyncio.Event, *, cluster: bool
) -> Observer | None:
    """Start the metrics port, or carry on without it: a worker whose port is taken (another worker on this host
    with the same settings) still consumes, and says once what it did about its metrics."""
    if not settings.metrics_port:
        return None
    try:
        return await Observer.start(settings, metrics, store, stopping, cluster=cluster)
    except ConfigurationError as error:
        problem = str(error)
    log.error(  # once, and without a traceback: the port being taken is the whole story
        "metrics_unavailable",
        error=problem,
        consequence="consuming without /metrics, /livez and /readyz",
        hint="run several workers on one host with `interactionlog worker --processes N` (one metrics port for "
        "all), or give each its own --metrics-port",
    )
    return None


async def _ensure_groups(work: list[ShardWork], outages: OutageLog, stopping: asyncio.Event, max_s: float) -> bool:
    """Check every shard's key types and create its group, waiting out a Redis that is not up yet; False when
    stopped before that. Raises WrongKeyTypeError when a stream or dead-letter key holds something else."""

    async def prepare() -> None:
        for part in work:
            await part.streams.check_key_types()
            await part.streams.ensure_group()

    try:
        await until_done(prepare, failed=outages.failed, max_backoff_s=max_s, stopping=stopping)
    except StoppedError:
        return False
    outages.succeeded("redis")
    return True


async def _housekeeping_round(part: ShardWork, refusals: RefusalLog) -> None:
    """One round of one shard's chores, with its losses and refused chores counted, and refusals said once."""
    metrics = part.metrics
    labels = metrics.labels()
    report = await part.housekeeper.run_once()
    for group, lost in report.lost.items():
        metrics.lost_to_trimming.labels(stream=labels["stream"], group=group).inc(lost)
    for chore in report.refused:
        metrics.housekeeping_failures.labels(**labels, chore=chore).inc()
    refusals.note(report, part.housekeeper.stream)
    if report.trimmed:
        log.debug("stream_trimmed", stream=part.shard.stream, entries=report.trimmed)


async def _keep_house(
    work: list[ShardWork], refusals: dict[str, RefusalLog], stopping: asyncio.Event, interval_s: float
) -> None:
    """Run every shard's housekeeping chores every `interval_s` until stopped; a failed round is retried next
    time (a shard whose master is away does not hold the others back)."""

    async def round_of_all() -> None:
        failed: BaseException | None = None
        for part in work:
            try:
                await _housekeeping_round(part, refusals[part.shard.stream])
            except REDIS_AWAY as error:
                failed = error
        if failed is not None:
            raise failed

    await periodically(round_of_all, interval_s=interval_s, name="housekeeping", stopping=stopping, expected=REDIS_AWAY)


def _waiting_in(task: asyncio.Task[object]) -> list[str]:
    """`file:line function` of the frames a task is suspended in, outermost first (for a shutdown that hung)."""
    frames: list[str] = []
    coroutine: object = task.get_coro()
    while coroutine is not None and len(frames) < 40:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "ag_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}")
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "ag_await", None)
    return frames


def stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT: stop reading, finish the batch in flight, exit. A second
    signal forces the exit at once (exit code 130): whatever is in flight stays pending in Redis and is claimed
    by another worker later, so nothing is lost, only delayed."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(name: str) -> None:
        if stopping.is_set():
            log.warning("shutdown_forced", signal=name, hint="entries in flight stay pending and are claimed later")
            os._exit(EXIT_FORCED)
        log.info("shutdown_requested", signal=name, hint="send it again to exit at once")
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    return stopping
