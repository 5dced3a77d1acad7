"""`interactionlog worker` processes the suite starts, kills, freezes and resumes, each logging to its own file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interactionlog.worker.daemon import CRASH_HOOK_VARIABLE
from tests.servers import free_port

STOP_TIMEOUT_S = 30.0

# Timings short enough that every recovery path runs within seconds; the fault suite's bounds derive from them.
FAST_FLAGS: dict[str, str] = {
    "block_ms": "200",
    "claim_idle_ms": "2000",
    "claim_interval_ms": "500",
    "retry_max_backoff_s": "1",
    "redis_timeout_s": "2",
    "housekeeping_interval_ms": "500",
    "consumer_idle_timeout_ms": "3000",
    "shutdown_timeout_s": "10",
    "log_format": "json",
    "log_level": "info",
}


def new_prefix() -> str:
    """A consumer prefix no other worker of the run has, nor is a prefix of (hygiene skips its own prefix)."""
    return f"w{uuid.uuid4().hex[:10]}"


@dataclass
class Worker:
    """One worker process, one incarnation: a restart is a new `Worker`."""

    prefix: str
    concurrency: int
    process: subprocess.Popen[bytes]
    log_path: Path
    crash_at: str | None = None
    metrics_port: int | None = None
    frozen: bool = False
    killed: bool = False  # ended by the suite (SIGKILL or SIGTERM), so its exit is expected
    observed: bool = False  # kept alive and unfrozen by the schedule, for memory readings

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process exists (frozen counts as running)."""
        return self.process.poll() is None

    @property
    def consumers(self) -> set[str]:
        """The consumer names this process reads under."""
        return {f"{self.prefix}-{index}" for index in range(self.concurrency)}

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would, and reap it."""
        self.killed = True
        if self.running:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_S)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process holds its connections and pending entries but does nothing."""
        if self.running:
            self.process.send_signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT what freeze() stopped."""
        if self.frozen and self.running:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (after SIGCONT if frozen) and wait: the clean shutdown path; returns the exit code."""
        self.killed = True
        if self.running:
            self.thaw()
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
            raise AssertionError(f"worker {self.prefix} did not exit within {timeout_s}s of SIGTERM") from None

    def rss_kib(self) -> int | None:
        """Resident memory of the process in KiB, None once it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None

    def log_lines(self) -> list[str]:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The structured log events the process wrote, optionally only those called `name`."""
        found = []
        for line in self.log_lines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def metrics(self) -> dict[str, float]:
        """A scrape of /metrics as {'name{labels}': value}; needs a worker started with metrics on."""
        if self.metrics_port is None:
            raise AssertionError(f"worker {self.prefix} runs without a metrics port")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric_total(self, name: str) -> float:
        """The sum of every sample of metric `name` (all label values), 0 when absent."""
        return sum(value for key, value in self.metrics().items() if key.partition("{")[0] == name)


@dataclass
class WorkerFleet:
    """The worker processes of one run, current and past, sharing one set of flags."""

    redis_url: str
    database_url: str
    log_dir: Path
    concurrency: int = 2
    flags: Mapping[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    _incarnations: int = 0
    # Workers started without their own metrics port all get this one, as several workers started from the same
    # default settings on one host would: the first to bind it serves it, the others log once and consume anyway.
    shared_metrics_port: int = field(default_factory=free_port)

    def start(
        self,
        prefix: str | None = None,
        *,
        crash_at: str | None = None,
        metrics: bool = False,
        observed: bool = False,
        **flags: str,
    ) -> Worker:
        """Start a worker (under `prefix` to take over a dead one's consumer names), optionally set to crash."""
        prefix = prefix or new_prefix()
        port = free_port() if metrics else 0
        options = {
            **FAST_FLAGS,
            **self.flags,
            **flags,
            "metrics_port": str(port or self.shared_metrics_port),
            "metrics_host": "127.0.0.1",
            "consumer_prefix": prefix,
        }
        options.setdefault("concurrency", str(self.concurrency))
        command = [sys.executable, "-m", "interactionlog", "worker"]
        command += ["--redis-url", self.redis_url, "--database-url", self.database_url]
        for name, value in options.items():
            command += ["--" + name.replace("_", "-"), value]
        env = {name: value for name, value in os.environ.items() if name != CRASH_HOOK_VARIABLE}
        if crash_at:
            env[CRASH_HOOK_VARIABLE] = crash_at
        self._incarnations += 1
        log_path = self.log_dir / f"worker-{self._incarnations:03d}-{prefix}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        worker = Worker(
            prefix,
            int(options["concurrency"]),
            process,
            log_path,
            crash_at=crash_at,
            metrics_port=port or None,
            observed=observed,
        )
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        """Workers whose process runs, frozen or not."""
        return [worker for worker in self.workers if worker.running]

    def live_consumers(self) -> set[str]:
        """The consumer names of every running worker."""
        return {name for worker in self.live() for name in worker.consumers}

    def unexpected_exits(self) -> list[Worker]:
        """Workers that ended on their own: neither killed by the suite nor crashed by the test hook."""
        return [
            worker
            for worker in self.workers
            if not worker.running and not worker.killed and not (worker.crash_at and worker.process.returncode == -9)
        ]

    def events(self, name: str) -> Iterator[tuple[Worker, dict[str, Any]]]:
        """Every log event called `name`, from every incarnation."""
        for worker in self.workers:
            for event in worker.events(name):
                yield worker, event

    def tracebacks(self) -> list[str]:
        """Log lines of Python tracebacks that escaped structured logging (a process-level crash)."""
        return [
            f"{worker.log_path}: {line}"
            for worker in self.workers
            for line in worker.log_lines()
            if line.startswith("Traceback")
        ]

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every running worker (thawing frozen ones), SIGKILL any that does not exit in time; returns
        the exit code of each worker that was running (None when it had to be killed)."""
        running = self.live()
        # A worker SIGTERMed before it installs its handlers (imports take seconds on a loaded machine) dies of the
        # signal (-15), which says nothing about how it drains: give each one until it has logged its start.
        started_by = time.monotonic() + STOP_TIMEOUT_S
        for worker in running:
            worker.thaw()
            while (
                worker.process.poll() is None
                and "worker_starting" not in worker.log_path.read_text(errors="replace")
                and time.monotonic() < started_by
            ):
                time.sleep(0.1)
        for worker in running:
            worker.killed = True
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        codes: dict[str, int | None] = {}
        for worker in running:
            try:
                codes[worker.prefix] = worker.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=STOP_TIMEOUT_S)
                codes[worker.prefix] = None
        return codes
