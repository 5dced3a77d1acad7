"""`interactionlog dev`: the whole pipeline on this machine, without Docker, gone again on Ctrl-C.

A throwaway Redis and PostgreSQL from the machine's binaries (`ops.servers`, the same code the test suite
starts its servers with), on free loopback ports unless told otherwise, the schema migrated, and one
`interactionlog worker` process. Teardown runs in the reverse order: the worker drains and exits first, then
PostgreSQL and Redis are killed and their directories deleted. Nothing is kept: this is for seeing the
pipeline work, not for data.

Every process is started in a session of its own, so a terminal's Ctrl-C reaches only `dev`, which then stops
them in that order; and each is told to die with `dev` (Linux), so even a SIGKILL of `dev` leaves no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..worker.store import migrate
from .servers import (
    INSTALL_HINTS,
    PostgresServer,
    RedisServer,
    ServerError,
    death_signal_setter,
    free_port,
    missing_binaries,
)

DATABASE = "interactionlog"
WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 30.0
SAMPLE_RECORD = (
    '{"mcp_id": "demo", "method": "tools/call", "tool": "echo", "request": {"text": "hi"}, "duration_ms": 1.5}'
)


class DevError(RuntimeError):
    """The dev stack could not start; the message says what to install or what failed, with its log."""


@dataclass(frozen=True)
class DevStack:
    """The running stack: where each part listens and logs."""

    redis: RedisServer
    postgres: PostgresServer
    database_url: str
    worker: subprocess.Popen[bytes]
    worker_log: Path
    metrics_port: int
    gateway: subprocess.Popen[bytes] | None
    gateway_port: int

    @property
    def gateway_url(self) -> str:
        """Where records can be POSTed (no token: `dev` runs the gateway with --no-auth, on loopback only)."""
        return f"http://127.0.0.1:{self.gateway_port}/api/v2/interactions"

    @property
    def redis_url(self) -> str:
        """The Redis URL publishers use."""
        return self.redis.url

    @property
    def metrics_url(self) -> str:
        """The worker's /metrics."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def check_binaries() -> None:
    """Raise DevError naming what is missing and how to install it (Debian, macOS, or Docker instead)."""
    missing = missing_binaries()
    if missing:
        raise DevError(f"`interactionlog dev` needs {' and '.join(missing)} on this machine. Install:\n{INSTALL_HINTS}")


@contextlib.contextmanager
def running_stack(*, redis_port: int | None = None, postgres_port: int | None = None) -> Iterator[DevStack]:
    """Start Redis, PostgreSQL (database `interactionlog`, migrated) and a worker; tear them down on exit."""
    check_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="interactionlog-dev-"))
    try:
        with RedisServer(port=redis_port) as redis, PostgresServer(port=postgres_port) as postgres:
            database_url = postgres.create_database(DATABASE)
            asyncio.run(migrate(database_url))
            metrics_port = free_port()
            worker_log = workdir / "worker.log"
            worker = _start_worker(redis.url, database_url, metrics_port, worker_log)
            gateway = None
            try:
                _wait_until_ready(worker, metrics_port, worker_log)
                gateway_port = free_port()
                gateway = start_gateway(redis.url, database_url, gateway_port, workdir / "gateway.log")
                yield DevStack(redis, postgres, database_url, worker, worker_log, metrics_port, gateway, gateway_port)
            finally:
                # The gateway first (nothing new comes in), then the worker, while Redis and PostgreSQL still
                # run: it finishes and acknowledges its batch.
                if gateway is not None:
                    _stop(gateway)
                _stop(worker)
    except ServerError as error:
        raise DevError(str(error)) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def start_gateway(redis_url: str, database_url: str, port: int, log_path: Path) -> subprocess.Popen[bytes] | None:
    """`interactionlog serve` on 127.0.0.1:`port` without tokens (loopback only), publishing to the stack's
    Redis; None when the gateway's extra (`interactionlog[gateway]`) is not installed."""
    try:
        import fastapi  # noqa: F401, PLC0415 - only to know whether the gateway can run here
    except ImportError:
        return None
    command = [
        sys.executable, "-m", "interactionlog", "serve",
        "--redis-url", redis_url,
        "--database-url", database_url,
        "--gateway-host", "127.0.0.1",
        "--http-port", str(port),
        "--grpc-port", "0",
        "--metrics-port", "0",
        "--no-auth",
        "--log-format", "json",
    ]  # fmt: skip
    return _spawn(command, log_path)


def _start_worker(redis_url: str, database_url: str, metrics_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "interactionlog", "worker",
        "--redis-url", redis_url,
        "--database-url", database_url,
        "--metrics-host", "127.0.0.1",
        "--metrics-port", str(metrics_port),
        "--consumer-prefix", "dev",
        "--log-format", "json",
    ]  # fmt: skip
    return _spawn(command, log_path)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start one of the stack's processes in a session of its own (Ctrl-C reaches `dev` only, which stops them in
    order), logging to `log_path`, and dying with `dev` even if `dev` is killed outright (Linux)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=death_signal_setter(signal.SIGTERM),  # noqa: PLW1509 - see death_signal_setter
        )


def _wait_until_ready(worker: subprocess.Popen[bytes], metrics_port: int, log_path: Path) -> None:
    """Until /readyz answers 200: Redis and PostgreSQL reachable and the consumer group created."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while True:
        if (code := worker.poll()) is not None:
            raise DevError(f"the worker exited with code {code} while starting:\n{_tail(log_path)}")
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise DevError(f"the worker was not ready within {WORKER_READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.1)


def check_worker(stack: DevStack) -> None:
    """Raise DevError with the worker's log if it has exited."""
    if (code := stack.worker.poll()) is not None:
        raise DevError(f"the worker exited with code {code}:\n{_tail(stack.worker_log)}")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def _command_name() -> str:
    """How this process was invoked, so the printed commands can be pasted as they are."""
    invoked = Path(sys.argv[0])
    if invoked.name == "interactionlog":
        return shlex.quote(str(invoked))
    return f"{shlex.quote(sys.executable)} -m interactionlog"


def banner(stack: DevStack) -> str:
    """What is running where, and how to publish and look from another terminal."""
    command = _command_name()
    return "\n".join(
        [
            "interactionlog dev: the whole pipeline on this machine. Ctrl-C stops it and deletes everything.",
            "",
            f"  Redis       {stack.redis_url}  (stream interactions)",
            f"  PostgreSQL  {stack.database_url}",
            f"  worker      pid {stack.worker.pid}, metrics {stack.metrics_url}, log {stack.worker_log}",
            (
                f"  gateway     {stack.gateway_url}  (POST JSON, no token: loopback only)"
                if stack.gateway is not None
                else "  gateway     not started: install interactionlog[gateway] for HTTP ingest"
            ),
            f"  files       {stack.redis.dir} {stack.postgres.dir} {stack.worker_log.parent}",
            "",
            "Publish and look, from another terminal:",
            f"  export INTERACTIONLOG_REDIS_URL={stack.redis_url}",
            f"  export INTERACTIONLOG_DATABASE_URL={stack.database_url}",
            f"  echo {shlex.quote(SAMPLE_RECORD)} | {command} publish -",
            f"  {command} tail -f",
            *(
                [f"  curl -s {stack.gateway_url} -H 'Content-Type: application/json' -d {shlex.quote(SAMPLE_RECORD)}"]
                if stack.gateway is not None
                else []
            ),
            "",
            "Stored interactions, as they arrive:",
        ]
    )
