"""Test helpers for driving the real pipeline: worker processes, waiting on conditions, reading the table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
import redis

_T = TypeVar("_T")

INTERACTIONLOG = [sys.executable, "-m", "interactionlog"]

# Short timings so recovery paths run in seconds, not minutes.
FAST_WORKER_FLAGS: dict[str, str] = {
    "--block-ms": "200",
    "--claim-idle-ms": "1500",
    "--claim-interval-ms": "300",
    "--retry-max-backoff-s": "0.5",
    "--metrics-port": "0",
    "--log-format": "json",
    "--shutdown-timeout-s": "10",
}


def wait_until(condition: Callable[[], _T], *, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "") -> _T:
    """Poll `condition` until it returns something truthy, and return that; fail with `what` on timeout.

    Tests wait on conditions with generous deadlines instead of sleeping, so a slow machine only makes them slower.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what or condition}")
        time.sleep(interval_s)


class WorkerProcess:
    """An `interactionlog worker` running as a real process, its log captured to a file."""

    def __init__(
        self, redis_url: str, database_url: str, log_dir: Path, *, env: Mapping[str, str] | None = None, **flags: str
    ) -> None:
        self.prefix = flags.pop("consumer_prefix", f"w{uuid.uuid4().hex[:8]}")
        arguments = {**FAST_WORKER_FLAGS, **{"--" + k.replace("_", "-"): v for k, v in flags.items()}}
        command = [
            *INTERACTIONLOG,
            "worker",
            "--redis-url",
            redis_url,
            "--database-url",
            database_url,
            "--consumer-prefix",
            self.prefix,
        ]
        for flag, value in arguments.items():
            command += [flag, value]
        self.log_path = log_dir / f"{self.prefix}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def log_text(self) -> str:
        """Everything the worker logged so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the worker."""
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the worker to exit; returns its exit code."""
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def stop(self) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait()


@contextmanager
def running_worker(redis_url: str, database_url: str, log_dir: Path, **flags: str) -> Iterator[WorkerProcess]:
    """A worker for the duration of the block, killed afterwards if still running."""
    worker = WorkerProcess(redis_url, database_url, log_dir, env=None, **flags)
    try:
        yield worker
    finally:
        worker.kill()


def migrate(database_url: str) -> None:
    """Apply the schema with the real CLI."""
    subprocess.run(
        [*INTERACTIONLOG, "migrate", "--database-url", database_url],
        check=True,
        capture_output=True,
    )


def stored_rows(database_url: str) -> list[tuple[str, str]]:
    """Every (mcp_id, interaction_id) in the table, in id order."""
    with psycopg.connect(database_url) as conn:
        return [(m, i) for m, i in conn.execute("SELECT mcp_id, interaction_id FROM interaction_logs ORDER BY id")]


def count_rows(database_url: str) -> int:
    """Rows in interaction_logs."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM interaction_logs").fetchone()
        return int(row[0]) if row else 0


def group_pending(client: redis.Redis, stream: str = "interactions", group: str = "interactionlog") -> int:
    """Entries delivered to the group but not acknowledged; -1 while the group does not exist yet."""
    try:
        summary = client.xpending(stream, group)
    except redis.ResponseError as error:
        if "NOGROUP" in str(error):
            return -1
        raise
    return int(summary["pending"])


def stream_entries(client: redis.Redis, stream: str = "interactions") -> list[tuple[str, dict[bytes, bytes]]]:
    """Every entry of `stream` as (id, fields)."""
    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    return [(entry_id.decode(), fields) for entry_id, fields in raw]


def group_info(client: redis.Redis, stream: str = "interactions") -> dict[str, Any]:
    """XINFO GROUPS of the stream's only group."""
    groups: list[dict[str, Any]] = client.xinfo_groups(stream)
    return groups[0]


def record(index: int, mcp_id: str = "weather", **extra: object) -> dict[str, Any]:
    """A realistic tool-call record with a known interaction id."""
    return {
        "mcp_id": mcp_id,
        "interaction_id": f"rec-{index:06d}",
        "method": "tools/call",
        "tool": "get_forecast",
        "request": {"city": "Oslo", "days": 3},
        "response": {"content": [{"type": "text", "text": "Sunny, 21C"}]},
        "duration_ms": 12.5,
        **extra,
    }


def scrape(port: int) -> str:
    """The text of a worker's /metrics on `port`, or "" while it is not served yet (for `wait_until`)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""
