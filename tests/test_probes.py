"""The metrics port holds up against idle, slow and rude clients: probes keep answering, logs stay JSON."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from interactionlog import probes
from interactionlog.probes import MetricsServer

from .pipeline import migrate, running_worker, wait_until
from .servers import free_port


class Steady:
    """A process whose loop always turns and whose checks always pass (the server's own input)."""

    def stalled_s(self) -> float:
        return 0.0

    async def readiness(self) -> dict[str, str]:
        return {"redis": "ok"}


@asynccontextmanager
async def serving() -> AsyncIterator[MetricsServer]:
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), Steady())
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


def get(port: int, path: str, timeout_s: float = 5.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_thousand_idle_connections_neither_take_threads_nor_keep_livez_from_answering() -> None:
    """1,000 connections that never send a request (twice the cap) cost no thread each, and /livez and /readyz
    still answer 200 within a second: new connections push out the oldest idle ones."""

    async def scenario() -> None:
        async with serving() as server:
            threads_before = threading.active_count()
            with idle_connections(server.port, 1000):
                await asyncio.sleep(0.5)
                assert threading.active_count() <= threads_before + 1
                started = time.monotonic()
                assert await asyncio.to_thread(get, server.port, "/livez") == 200
                assert await asyncio.to_thread(get, server.port, "/readyz") == 200
                assert time.monotonic() - started < 2.0

    asyncio.run(scenario())


def test_a_client_that_never_finishes_its_request_is_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slowloris client (a request head trickled byte by byte) is disconnected after REQUEST_TIMEOUT_S."""
    monkeypatch.setattr(probes, "REQUEST_TIMEOUT_S", 0.5)

    async def scenario() -> None:
        async with serving() as server:

            def trickle() -> float:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    try:
                        for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\n":
                            sock.sendall(bytes([byte]))
                            time.sleep(0.1)
                    except (BrokenPipeError, ConnectionResetError):
                        return time.monotonic() - started
                    return -1.0  # never disconnected

            closed_after = await asyncio.to_thread(trickle)
            assert 0.4 < closed_after < 3.0

    asyncio.run(scenario())


def test_bad_requests_get_an_answer_not_a_crash() -> None:
    """A POST is refused with 405, an unknown path with 404, garbage closes the connection; the server goes on."""

    async def scenario() -> None:
        async with serving() as server:

            def rude() -> None:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                    sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
                    sock.recv(1024)

            await asyncio.to_thread(rude)
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request("POST", "/metrics", body=b"x")
            assert connection.getresponse().status == 405
            connection.close()
            assert await asyncio.to_thread(get, server.port, "/nowhere") == 404
            assert await asyncio.to_thread(get, server.port, "/livez") == 200

    asyncio.run(scenario())


def test_a_client_resetting_mid_request_leaves_only_json_lines_in_the_worker_log(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A connection reset (RST) halfway through a request prints no traceback: every log line stays JSON."""
    migrate(database_url)
    port = free_port()
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1") as worker:
        wait_until(lambda: "consumer_started" in worker.log_text(), what="the worker to start")
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /metr")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            sock.close()
        assert get(port, "/livez") == 200
        assert worker.stop() == 0
    lines = [line for line in worker.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        json.loads(line)  # raises on a traceback or any plain-text line
    tracebacks = [line for line in lines if "Traceback" in line]
    assert not tracebacks, tracebacks
