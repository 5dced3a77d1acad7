"""Every transport bounds its wait on an endpoint that stalls: a server that accepts and never answers, and a
PostgreSQL that answers but holds the insert behind a lock. The publisher raises PublishUnavailableError within a
few multiples of `timeout_s` instead of hanging the caller (or the background publisher's thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from interactionlog import AsyncPublisher, Publisher, PublishUnavailableError
from tests.gateway import migrated
from tests.pipeline import record
from tests.servers import PostgresServer

TIMEOUT_S = 0.5
BOUND_S = 6.0  # connect and request phases, each bounded, plus the transports' one retry
FROZEN_BOUND_S = 8.0  # postgresql://'s whole-publish bound at TIMEOUT_S (6 s), and some slack


@pytest.fixture
def stalling_port() -> Iterator[int]:
    """A loopback port whose server accepts every connection and never reads or writes a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.parametrize("scheme", ["redis", "http", "grpc", "postgresql"])
def test_a_server_that_never_answers_is_unavailable_within_the_bound(stalling_port: int, scheme: str) -> None:
    """Connecting to a server that accepts and then says nothing raises PublishUnavailableError in seconds."""
    url = {
        "redis": f"redis://127.0.0.1:{stalling_port}/0",
        "http": f"http://127.0.0.1:{stalling_port}/?token=t",
        "grpc": f"grpc://127.0.0.1:{stalling_port}?token=t",
        "postgresql": f"postgresql://postgres@127.0.0.1:{stalling_port}/none",
    }[scheme]
    started = time.monotonic()
    with Publisher.from_url(url, timeout_s=TIMEOUT_S) as publisher, pytest.raises(PublishUnavailableError):
        publisher.publish(record(1))
    assert time.monotonic() - started < BOUND_S


@pytest.fixture
def locked_table(database_url: str) -> Iterator[str]:
    """A migrated database whose interaction_logs another session holds under an ACCESS EXCLUSIVE lock (as a
    long migration or a manual LOCK TABLE would); yields the database URL."""
    migrated(database_url)
    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE interaction_logs IN ACCESS EXCLUSIVE MODE")
        yield database_url
        holder.rollback()


def test_a_postgresql_insert_held_behind_a_lock_is_unavailable_within_the_bound(locked_table: str) -> None:
    """postgresql:// bounds a statement that waits on a lock: the sync publisher raises, it does not hang."""
    outcome: list[BaseException | None] = []

    def publish() -> None:
        try:
            with Publisher.from_url(locked_table, timeout_s=TIMEOUT_S) as publisher:
                publisher.publish(record(1))
            outcome.append(None)
        except BaseException as error:  # handed to the test's thread to assert on
            outcome.append(error)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    assert outcome, "publish() still waiting on the lock"
    assert isinstance(outcome[0], PublishUnavailableError)
    assert "statement timeout" in str(outcome[0])


def test_the_async_postgresql_publisher_bounds_a_locked_insert_too(locked_table: str) -> None:
    """The asyncio twin raises PublishUnavailableError within the bound as well."""

    async def publish() -> None:
        async with AsyncPublisher.from_url(locked_table, timeout_s=TIMEOUT_S) as publisher:
            await publisher.publish(record(1))

    started = time.monotonic()
    with pytest.raises(PublishUnavailableError, match="statement timeout"):
        asyncio.run(asyncio.wait_for(publish(), BOUND_S * 2))
    assert time.monotonic() - started < BOUND_S


def test_a_frozen_postgresql_is_unavailable_within_the_bound(own_postgres: PostgresServer) -> None:
    """postgresql:// against a server frozen (SIGSTOP) after the pool connected: neither the statement nor its
    statement_timeout is ever answered; the publisher raises PublishUnavailableError within its bound instead of
    waiting for as long as the server stays frozen."""
    url = own_postgres.url()
    migrated(url)
    with Publisher.from_url(url, timeout_s=TIMEOUT_S) as publisher:
        publisher.publish(record(0))  # the pool holds a live connection now
        own_postgres.pause()
        try:
            started = time.monotonic()
            with pytest.raises(PublishUnavailableError, match="did not answer"):
                publisher.publish(record(1))
            assert time.monotonic() - started < FROZEN_BOUND_S
        finally:
            own_postgres.resume()


def test_the_async_postgresql_publisher_bounds_a_frozen_server_too(own_postgres: PostgresServer) -> None:
    """The asyncio twin, the same way (its attempt abandoned, not cancelled)."""
    url = own_postgres.url()
    migrated(url)

    async def publish() -> float:
        async with AsyncPublisher.from_url(url, timeout_s=TIMEOUT_S) as publisher:
            await publisher.publish(record(0))
            own_postgres.pause()
            try:
                started = time.monotonic()
                with pytest.raises(PublishUnavailableError, match="did not answer"):
                    await publisher.publish(record(1))
                return time.monotonic() - started
            finally:
                own_postgres.resume()

    assert asyncio.run(asyncio.wait_for(publish(), 60)) < FROZEN_BOUND_S
