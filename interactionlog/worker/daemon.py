"""Builds the worker from settings, runs the consumer pool, and owns start-up and shutdown order.

Lifecycle (read top to bottom in `run_worker`): connect lazily (Redis or PostgreSQL may still be starting),
ensure the group exists, start `concurrency` consumers, wait for SIGTERM/SIGINT, then shut down in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from ..errors import ConfigurationError
from ..metrics import WorkerMetrics
from ..redact import redact_url
from ..retry import OutageLog, StoppedError, periodically, until_done
from ..settings import Settings
from .consumer import Consumer, ConsumerOptions
from .housekeeping import Housekeeper
from .observation import Observer
from .partition_maintenance import keep_partitions
from .store import Store
from .streams import StreamGroup, connect

log = structlog.get_logger(__name__)

# Read here rather than in Settings on purpose: it is a test-only hook and must not appear as a flag.
CRASH_HOOK_VARIABLE = "INTERACTIONLOG_TEST_CRASH_AT"

EXIT_OK = 0
EXIT_SHUTDOWN_TIMED_OUT = 1
EXIT_FORCED = 130  # 128 + SIGINT, as shells report an interrupted program


def consumer_options(settings: Settings) -> ConsumerOptions:
    """The per-consumer knobs out of the settings."""
    return ConsumerOptions(
        batch_size=settings.batch_size,
        block_ms=settings.block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        claim_interval_ms=settings.claim_interval_ms,
        max_deliveries=settings.max_deliveries,
        max_record_bytes=settings.max_record_bytes,
        retry_max_backoff_s=settings.retry_max_backoff_s,
        crash_at=os.environ.get(CRASH_HOOK_VARIABLE) or None,
    )


async def run_worker(
    settings: Settings,
    *,
    stopping: asyncio.Event | None = None,
    on_started: Callable[[WorkerMetrics], None] | None = None,
) -> int:
    """Run consumers until `stopping` is set (by SIGTERM/SIGINT when not given); returns the exit code."""
    stopping = stopping or _stop_on_signals()
    log.info(
        "worker_starting",
        redis_url=redact_url(settings.redis_url),
        database_url=redact_url(settings.database_url),
        stream=settings.stream,
        group=settings.group,
        concurrency=settings.concurrency,
        batch_size=settings.batch_size,
    )
    # Each consumer holds one connection in its blocking read and may need one more to settle a batch.
    redis = connect(
        settings.redis_url,
        socket_timeout_s=settings.redis_socket_timeout_s,
        connect_timeout_s=settings.redis_timeout_s,
        max_connections=2 * settings.concurrency + 2,
    )
    metrics = WorkerMetrics.create(settings.stream, settings.group)
    streams = StreamGroup(
        redis,
        stream=settings.stream,
        group=settings.group,
        dead_letter_stream=settings.dead_letter_stream_key,
        on_recreated=lambda stream_existed: metrics.groups_recreated.labels(
            **metrics.labels(), stream_vanished=str(not stream_existed).lower()
        ).inc(),
    )
    store = await Store.open(settings.database_url, max_connections=settings.concurrency + 1)
    outages = OutageLog()
    exit_code = EXIT_OK
    observer = None
    try:
        # /metrics, /livez, /readyz and the stream gauges; up before the group exists, so probes answer meanwhile.
        # Inside the try: the pool and the client opened above must be closed whatever happens here.
        observer = await _observe(settings, metrics, store, stopping)
        if await _ensure_group(streams, outages, stopping, settings.retry_max_backoff_s):

            def new_consumer(index: int) -> Consumer:
                return Consumer(
                    f"{settings.consumer_prefix}-{index}",
                    streams=streams,
                    store=store,
                    metrics=metrics,
                    outages=outages,
                    stopping=stopping,
                    options=consumer_options(settings),
                )

            housekeeper = Housekeeper(
                redis,
                stream=settings.stream,
                consumer_idle_ms=settings.consumer_idle_timeout_ms,
                own_prefix=settings.consumer_prefix,
            )
            chores = asyncio.create_task(
                _keep_house(housekeeper, metrics, stopping, settings.housekeeping_interval_ms / 1000)
            )
            partition_chores = asyncio.create_task(keep_partitions(settings, metrics, stopping))
            tasks = {index: _start(new_consumer(index)) for index in range(settings.concurrency)}
            if on_started:
                on_started(metrics)
            await _supervise(tasks, new_consumer, stopping)
            log.info("worker_draining", timeout_s=settings.shutdown_timeout_s)
            # Consumers stop first, while Redis and PostgreSQL are still open: the batch in flight must still
            # commit and be acknowledged. Anything not finished by the deadline stays pending in Redis and is
            # claimed by another worker, so cancelling loses nothing; it only delays those entries.
            _, unfinished = await asyncio.wait(
                [*tasks.values(), chores, partition_chores], timeout=settings.shutdown_timeout_s
            )
            if unfinished:
                exit_code = EXIT_SHUTDOWN_TIMED_OUT
                log.error("shutdown_timed_out", consumers=sorted(task.get_name() for task in unfinished))
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
    finally:
        # Then the sinks, in reverse order of need: PostgreSQL, Redis, and last the metrics endpoint, so a
        # scrape during the drain still sees the final counts.
        await store.close()
        await redis.aclose()
        if observer is not None:
            await observer.stop()
    log.info("worker_stopped", exit_code=exit_code)
    return exit_code


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
    settings: Settings, metrics: WorkerMetrics, store: Store, stopping: asyncio.Event
) -> Observer | None:
    """Start the metrics port, or carry on without it: a worker whose port is taken (another worker on this host
    with the same settings) still consumes, and says once what it did about its metrics."""
    if not settings.metrics_port:
        return None
    try:
        return await Observer.start(settings, metrics, store, stopping)
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


async def _ensure_group(streams: StreamGroup, outages: OutageLog, stopping: asyncio.Event, max_s: float) -> bool:
    """Create the group, waiting out a Redis that is not up yet; False when stopped before that."""
    try:
        await until_done(streams.ensure_group, failed=outages.failed, max_backoff_s=max_s, stopping=stopping)
    except StoppedError:
        return False
    outages.succeeded("redis")
    return True


async def _keep_house(
    housekeeper: Housekeeper, metrics: WorkerMetrics, stopping: asyncio.Event, interval_s: float
) -> None:
    """Run the housekeeping chores every `interval_s` until stopped; a failed round is retried next time."""
    labels = metrics.labels()

    async def chores() -> None:
        report = await housekeeper.run_once()
        for group, lost in report.lost.items():
            metrics.lost_to_trimming.labels(stream=labels["stream"], group=group).inc(lost)
        if report.trimmed:
            log.debug("stream_trimmed", entries=report.trimmed)

    await periodically(
        chores, interval_s=interval_s, name="housekeeping", stopping=stopping, expected=(RedisError, OSError)
    )


def _stop_on_signals() -> asyncio.Event:
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
