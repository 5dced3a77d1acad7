"""The publish side: `Publisher.publish` latency, and `publish_many` throughput against plain redis-py XADD.

Every contender starts from the same record dicts, as an MCP server would hold them. interactionlog validates and
encodes each with pydantic; plain redis-py only `json.dumps` it, which is the floor a publish helper can reach.
`publish_many` is also timed on `Interaction` objects built beforehand (validation then happens in the caller's
constructor call, outside the timing), to split validation from the Redis round trip. CPU per record is this
process's own (Redis's is not in it): on a shared machine it moves far less than the wall rate.
`BackgroundPublisher.publish` is timed per call (what an MCP tool call pays; sending happens on its thread).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from interactionlog.client.background import BackgroundPublisher
from interactionlog.client.publisher import AsyncPublisher, Publisher
from interactionlog.record import Interaction

from .records import records

STREAM = "bench:publish"
BATCH = 1000
# BackgroundPublisher.publish paced: a pause after each call (about 1,500 calls/s with the sleep's own overhead),
# so its thread sends between calls, as under a busy MCP server; the caller then meets caches its thread (and
# Redis) have just used, which back-to-back calls do not.
PACED_CALLS = 5000
PACED_PAUSE_S = 0.0005


@dataclass(frozen=True)
class PublishFigures:
    """Latency of single publishes and throughput of batched and unbatched ones, in records/s."""

    publish_p50_ms: float
    publish_p99_ms: float
    publish_rate: float
    publish_many_rate: float
    publish_many_models_rate: float
    publish_many_cpu_us: float  # this process's CPU per record, publish_many from dicts
    async_publish_many_rate: float  # AsyncPublisher.publish_many from dicts (the gateways' path)
    async_publish_many_cpu_us: float
    background_p50_us: float  # BackgroundPublisher.publish, per call
    background_p99_us: float
    paced_background_p50_us: float  # the same, calls spread out as a busy MCP server makes them
    paced_background_p99_us: float
    xadd_rate: float
    xadd_pipelined_rate: float
    records: int


def _rate(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def _batches(items: Sequence[dict[str, Any]]) -> list[Sequence[dict[str, Any]]]:
    return [items[start : start + BATCH] for start in range(0, len(items), BATCH)]


def measure_publish(redis_url: str, count: int) -> PublishFigures:
    """Publish `count` records each way onto a scratch stream (deleted between ways, so each starts empty)."""
    items = list(records(count, seed=7))
    client = redis.Redis.from_url(redis_url)
    maxlen = 10 * count
    publisher = Publisher.from_url(redis_url, stream=STREAM, maxlen=maxlen)
    try:
        for item in items[: min(500, count)]:  # warm up connections and pydantic's validators
            publisher.publish(item)
        client.delete(STREAM)

        latencies: list[int] = []
        started = time.perf_counter()
        for item in items:
            began = time.perf_counter_ns()
            publisher.publish(item)
            latencies.append(time.perf_counter_ns() - began)
        publish_rate = count / (time.perf_counter() - started)
        latencies.sort()
        client.delete(STREAM)

        def many() -> None:
            for batch in _batches(items):
                publisher.publish_many(batch)

        cpu_started = time.process_time()
        publish_many_rate = _rate(count, many)
        publish_many_cpu_us = (time.process_time() - cpu_started) / count * 1e6
        client.delete(STREAM)
        async_rate, async_cpu_us = asyncio.run(_async_publish_many(redis_url, items, maxlen))
        client.delete(STREAM)
        background = _background_per_call(redis_url, items)
        client.delete(STREAM)
        paced = _background_per_call(redis_url, items[:PACED_CALLS], pause_s=PACED_PAUSE_S)
        client.delete(STREAM)

        models = [Interaction.model_validate(item) for item in items]

        def many_models() -> None:
            for start in range(0, count, BATCH):
                publisher.publish_many(models[start : start + BATCH])

        publish_many_models_rate = _rate(count, many_models)
        client.delete(STREAM)

        def xadd() -> None:
            for item in items:
                client.xadd(STREAM, {"v": "1", "data": json.dumps(item)}, maxlen=maxlen, approximate=True)

        xadd_rate = _rate(count, xadd)
        client.delete(STREAM)

        def xadd_pipelined() -> None:
            for batch in _batches(items):
                pipe = client.pipeline(transaction=False)
                for item in batch:
                    pipe.xadd(STREAM, {"v": "1", "data": json.dumps(item)}, maxlen=maxlen, approximate=True)
                pipe.execute()

        xadd_pipelined_rate = _rate(count, xadd_pipelined)
        client.delete(STREAM)
    finally:
        publisher.close()
        client.close()
    return PublishFigures(
        publish_p50_ms=latencies[len(latencies) // 2] / 1e6,
        publish_p99_ms=latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] / 1e6,
        publish_rate=publish_rate,
        publish_many_rate=publish_many_rate,
        publish_many_models_rate=publish_many_models_rate,
        publish_many_cpu_us=publish_many_cpu_us,
        async_publish_many_rate=async_rate,
        async_publish_many_cpu_us=async_cpu_us,
        background_p50_us=background[len(background) // 2] / 1e3,
        background_p99_us=background[min(int(len(background) * 0.99), len(background) - 1)] / 1e3,
        paced_background_p50_us=paced[len(paced) // 2] / 1e3,
        paced_background_p99_us=paced[min(int(len(paced) * 0.99), len(paced) - 1)] / 1e3,
        xadd_rate=xadd_rate,
        xadd_pipelined_rate=xadd_pipelined_rate,
        records=count,
    )


async def _async_publish_many(redis_url: str, items: Sequence[dict[str, Any]], maxlen: int) -> tuple[float, float]:
    """`AsyncPublisher.publish_many` of `items` in batches: records/s and this process's CPU us per record."""
    async with AsyncPublisher.from_url(redis_url, stream=STREAM, maxlen=maxlen) as publisher:
        await publisher.publish_many(items[: min(BATCH, len(items))])  # connect, warm up
        cpu_started, started = time.process_time(), time.perf_counter()
        for batch in _batches(items):
            await publisher.publish_many(batch)
        elapsed = time.perf_counter() - started
        cpu_us = (time.process_time() - cpu_started) / len(items) * 1e6
    return len(items) / elapsed, cpu_us


def _background_per_call(redis_url: str, items: Sequence[dict[str, Any]], *, pause_s: float = 0.0) -> list[int]:
    """Nanoseconds each `BackgroundPublisher.publish` call took (sorted), after a warm-up of 500 calls. Timed in
    slices of 1000 calls with a pause between, so the queue never fills and its thread keeps up; with `pause_s`,
    a sleep after every call too (`PACED_PAUSE_S`)."""
    latencies: list[int] = []
    with tempfile.TemporaryDirectory() as spool_dir:
        publisher = BackgroundPublisher.from_url(redis_url, stream=STREAM, spool_dir=spool_dir)
        try:
            for item in items[:500]:
                publisher.publish(item)
            for start in range(0, len(items), 1000):
                for item in items[start : start + 1000]:
                    began = time.perf_counter_ns()
                    publisher.publish(item)
                    latencies.append(time.perf_counter_ns() - began)
                    if pause_s:
                        time.sleep(pause_s)
                time.sleep(0.02)
        finally:
            publisher.close()
    latencies.sort()
    return latencies
