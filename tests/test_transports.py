"""Every publisher transport end to end: redis://, http://, grpc://, postgresql:// and hybrid, each through the real
gateway and worker (or straight into the table) to PostgreSQL, with the same API and the same errors."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

import interactionlog.client
from interactionlog import (
    AsyncPublisher,
    InvalidRecordError,
    Publisher,
    PublishError,
    PublishUnavailableError,
    RecordTooLargeError,
)
from interactionlog.client.publisher import encode_fields
from interactionlog.client.transports.hybrid import HybridTransport
from interactionlog.errors import ConfigurationError
from interactionlog.record import DATA_FIELD
from tests.gateway import GatewayProcess, migrated, new_token, running_gateway
from tests.pipeline import count_rows, record, running_worker, wait_until
from tests.servers import RedisServer, free_port

KINDS = ("redis", "http", "grpc", "postgresql", "hybrid")


def stored(database_url: str) -> dict[str, tuple[Any, str]]:
    """interaction_id -> (data, stream_entry_id) of every row."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT interaction_id, data, stream_entry_id FROM interaction_logs").fetchall()
    assert len(rows) == len({row[0] for row in rows}), "a record is stored twice"
    return {row[0]: (row[1], row[2]) for row in rows}


def url_of(kind: str, redis_url: str, database_url: str, gateway: GatewayProcess, token: str) -> str:
    """The publisher URL of each transport."""
    return {
        "redis": redis_url,
        "http": f"{gateway.http_url}/?token={token}",
        "grpc": f"grpc://{gateway.grpc_target}?token={token}",
        "postgresql": database_url,
        # A closed port first: the hybrid must fall through to the gateway.
        "hybrid": f"hybrid:redis://127.0.0.1:{free_port()}/0|{gateway.http_url}/?token={token}",
    }[kind]


@pytest.fixture
def pipeline(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[tuple[GatewayProcess, str]]:
    """A migrated database, a gateway and a worker on the test's Redis; yields the gateway and a token."""
    migrated(database_url)
    token = new_token(database_url)
    with (
        running_gateway(redis_url, database_url, tmp_path) as gateway,
        running_worker(redis_url, database_url, tmp_path),
    ):
        yield gateway, token


def exact_records() -> list[dict[str, Any]]:
    """Records whose values a careless path would change: a 20-digit integer, 0.1, non-ASCII text, nesting."""
    return [
        record(i, request={"big": 12345678901234567890, "tenth": 0.1, "text": "Ünïcødé ✓", "deep": [[{"a": None}]]})
        for i in range(40)
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_each_transport_stores_every_record_once_as_the_publisher_encoded_it(
    kind: str, redis_url: str, database_url: str, pipeline: tuple[GatewayProcess, str]
) -> None:
    """publish_many and publish through each transport store every record once (publishing some twice), with the
    `data` the publisher encoded, and return one id per record: the entry id, or "direct" for postgresql://."""
    gateway, token = pipeline
    records = exact_records()
    with Publisher.from_url(url_of(kind, redis_url, database_url, gateway, token)) as publisher:
        ids = publisher.publish_many(records[:30]) + [publisher.publish(item) for item in records[30:]]
        publisher.publish_many(records[:5])
    wait_until(lambda: count_rows(database_url) >= 40, what="40 rows")
    rows = stored(database_url)
    assert set(rows) == {item["interaction_id"] for item in records}
    for item, entry_id in zip(records, ids, strict=True):
        data, stream_entry_id = rows[item["interaction_id"]]
        assert data == json.loads(encode_fields(item, 1 << 20)[DATA_FIELD]) | {"timestamp": data["timestamp"]}
        assert data["request"]["big"] == 12345678901234567890
        assert stream_entry_id == entry_id
    assert (ids[0] == "direct") == (kind == "postgresql")


@pytest.mark.parametrize("kind", ["http", "grpc", "postgresql"])
def test_the_async_publisher_speaks_every_transport(
    kind: str, redis_url: str, database_url: str, pipeline: tuple[GatewayProcess, str]
) -> None:
    """AsyncPublisher.from_url takes the same URLs, with the same outcome."""
    gateway, token = pipeline

    async def publish() -> list[str]:
        async with AsyncPublisher.from_url(url_of(kind, redis_url, database_url, gateway, token)) as publisher:
            return await publisher.publish_many(exact_records()[:10]) + [await publisher.publish(record(99))]

    ids = asyncio.run(publish())
    assert len(ids) == 11
    wait_until(lambda: count_rows(database_url) == 11, what="11 rows")


def test_bad_input_gets_the_same_error_on_every_transport(database_url: str) -> None:
    """An invalid or oversized record raises InvalidRecordError or RecordTooLargeError before anything is sent,
    whichever the transport (every endpoint here is unreachable, so sending would raise something else)."""
    closed = free_port()
    urls = [
        f"redis://127.0.0.1:{closed}/0",
        f"http://127.0.0.1:{closed}/?token=t",
        f"grpc://127.0.0.1:{closed}?token=t",
        f"postgresql://postgres@127.0.0.1:{closed}/none",
        f"hybrid:redis://127.0.0.1:{closed}/0|http://127.0.0.1:{closed}/",
    ]
    for url in urls:
        with Publisher.from_url(url, max_record_bytes=2048) as publisher:
            with pytest.raises(InvalidRecordError, match="field 'duration_ms'"):
                publisher.publish({**record(1), "duration_ms": "slow"})
            with pytest.raises(RecordTooLargeError, match="max_record_bytes"):
                publisher.publish({**record(2), "request": "x" * 4096})


def test_an_unreachable_endpoint_raises_publish_unavailable_within_the_bounded_wait() -> None:
    """Every transport answers an endpoint that is not there with PublishUnavailableError, within seconds."""
    closed = free_port()
    for url in [
        f"http://127.0.0.1:{closed}/",
        f"grpc://127.0.0.1:{closed}",
        f"postgresql://postgres@127.0.0.1:{closed}/none",
        f"hybrid:redis://127.0.0.1:{closed}/0|grpc://127.0.0.1:{closed}",
    ]:
        started = time.monotonic()
        with Publisher.from_url(url, timeout_s=0.5) as publisher, pytest.raises(PublishUnavailableError):
            publisher.publish(record(1))
        assert time.monotonic() - started < 5, url


def test_an_unknown_scheme_is_refused_naming_the_schemes() -> None:
    """A URL of another scheme raises ConfigurationError listing what is understood."""
    with pytest.raises(ConfigurationError, match="grpc://"):
        Publisher.from_url("amqp://localhost/")


def test_a_wrong_token_or_another_mcps_record_is_a_refusal_not_an_outage(
    redis_url: str, database_url: str, pipeline: tuple[GatewayProcess, str]
) -> None:
    """Over http:// and grpc://, a wrong token and a record of another MCP raise PublishError (not
    PublishUnavailableError: sending again cannot help), naming the fix or the record."""
    gateway, token = pipeline
    for url in (gateway.http_url, f"grpc://{gateway.grpc_target}"):
        with Publisher.from_url(url, token="il_000000000000_" + "A" * 43) as publisher:
            with pytest.raises(PublishError, match="tokens create") as refused:
                publisher.publish(record(1))
            assert not isinstance(refused.value, PublishUnavailableError)
        with Publisher.from_url(url, token=token) as publisher:
            with pytest.raises(PublishError, match=r"record 1 \[forbidden\]") as forbidden:
                publisher.publish_many([record(2), record(3, mcp_id="news")])
            assert not isinstance(forbidden.value, PublishUnavailableError)


def test_an_http_batch_over_the_body_cap_is_split_and_sent(redis_url: str, database_url: str, tmp_path: Path) -> None:
    """publish_many over http:// of more than the gateway's --max-body-bytes is split in halves until it fits."""
    migrated(database_url)
    token = new_token(database_url)
    with (
        running_gateway(redis_url, database_url, tmp_path, max_body_bytes="8192") as gateway,
        Publisher.from_url(gateway.http_url, token=token) as publisher,
    ):
        ids = publisher.publish_many([record(i) for i in range(200)])
    assert len(set(ids)) == 200


def test_postgresql_without_the_table_says_to_migrate(database_url: str) -> None:
    """postgresql:// against a database that was never migrated is PublishUnavailableError naming the fix."""
    with Publisher.from_url(database_url) as publisher, pytest.raises(PublishUnavailableError, match="migrate"):
        publisher.publish(record(1))


def test_hybrid_falls_back_logs_once_per_episode_and_returns_to_the_first(
    own_redis: RedisServer, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis, then PostgreSQL: with Redis killed, records go straight to the table and the fallback is logged once;
    once Redis is back and its breaker lets a trial through, records go to Redis again, `transport_recovered` is
    logged, and every record is stored once. `counts()` says how many each transport took."""
    migrated(database_url)
    publisher = Publisher.from_urls([own_redis.url, database_url], timeout_s=0.3, reset_timeout_s=0.3)
    transport = publisher.transport
    assert isinstance(transport, HybridTransport)
    caplog.set_level(logging.INFO, logger="interactionlog.client.transports.hybrid")
    with running_worker(own_redis.url, database_url, tmp_path):
        publisher.publish_many([record(i) for i in range(5)])
        wait_until(lambda: count_rows(database_url) == 5, what="the first 5 rows")
        own_redis.kill()
        for index in range(5, 25):
            publisher.publish(record(index))
        own_redis.start()
        time.sleep(0.4)  # the breaker's cool-down
        publisher.publish_many([record(i) for i in range(25, 30)])
        wait_until(lambda: count_rows(database_url) == 30, what="30 rows")
    publisher.close()
    events = [json.loads(entry.getMessage())["event"] for entry in caplog.records if "transport_" in entry.getMessage()]
    assert events.count("transport_fallback") == 1
    assert events.count("transport_recovered") == 1
    redis_name, postgres_name = transport.names
    assert transport.counts() == {redis_name: 10, postgres_name: 20}
    assert len(stored(database_url)) == 30


def test_a_hybrid_fallback_in_a_process_without_logging_writes_nothing_to_stdout(database_url: str) -> None:
    """In a process that configured no logging (a stdio MCP server, whose stdout is its protocol channel), the
    hybrid's fallback warning goes to stderr through the standard library, and stdout stays empty."""
    migrated(database_url)
    script = (
        "import sys; from interactionlog import Publisher; from tests.pipeline import record\n"
        "with Publisher.from_urls(sys.argv[1:], timeout_s=0.3) as publisher: publisher.publish(record(1))"
    )
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    completed = subprocess.run(
        [sys.executable, "-c", script, dead_redis, database_url],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout == ""
    assert "transport_fallback" in completed.stderr
    assert count_rows(database_url) == 1


def test_no_module_of_the_client_side_logs_through_structlogs_default_stdout_logger() -> None:
    """Every module that runs inside an MCP process (`interactionlog.client.*`) logs through `library_logger`:
    none holds a logger from `structlog.get_logger`, which prints to stdout unless the process configured it. (Both
    are lazy proxies; `get_logger`'s wraps no logger of its own, `_logger is None`, and takes structlog's default.)"""
    offenders = []
    for module_info in pkgutil.walk_packages(interactionlog.client.__path__, "interactionlog.client."):
        module = importlib.import_module(module_info.name)
        offenders += [
            f"{module_info.name}.{name}"
            for name, value in vars(module).items()
            if isinstance(value, structlog._config.BoundLoggerLazyProxy) and value._logger is None
        ]
    assert offenders == []
