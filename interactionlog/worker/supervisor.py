"""`interactionlog worker --processes N`: N worker processes on one host, supervised, behind one metrics port.

A Python process uses one core, so a host with several runs several workers. The supervisor starts each as
`python -m interactionlog worker` with the same settings (passed as INTERACTIONLOG_* variables, never as
arguments, so no password shows in `ps`), its own consumer prefix and a metrics port on 127.0.0.1 of its own;
it restarts a process that dies (with backoff), and serves the one metrics port the operator configured:
/metrics is every process's exposition with a `process` label added, /readyz is ready when every process is,
/livez answers while the supervisor's loop turns. SIGTERM or SIGINT is passed on to every process, which
drains as a single worker does; a second signal kills them all at once (exit 130), as with one worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ..errors import ConfigurationError
from ..metrics import NAMESPACE
from ..probes import READY_TIMEOUT_S, MetricsServer
from ..retry import sleep_unless_stopped
from ..settings import Settings, env_name
from .daemon import EXIT_FORCED, EXIT_OK

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
SCRAPE_TIMEOUT_S = 2.0


@dataclass
class Child:
    """One supervised worker process and where its metrics port listens."""

    index: int
    metrics_port: int
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    next_start_at: float = 0.0
    ready: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The `process` label of this child's series."""
        return str(self.index)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.process is not None and self.process.returncode is None


class ChildrenCollector:
    """Scrapes every child at each scrape of the supervisor and re-serves their series with a `process` label."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def describe(self) -> list[Metric]:
        """Nothing up front: the families are whatever the children serve."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Each family once, with the samples of every child that answered."""
        merged: dict[str, Metric] = {}
        for child in self.children:
            if not child.alive():
                continue
            try:
                with urllib.request.urlopen(  # a fixed http://127.0.0.1 URL of our own child
                    f"http://127.0.0.1:{child.metrics_port}/metrics", timeout=SCRAPE_TIMEOUT_S
                ) as response:
                    text = response.read().decode()
            except (OSError, urllib.error.URLError):
                continue  # starting, dying or stuck: its series are absent for this scrape
            for family in text_string_to_metric_families(text):
                target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    target.add_sample(sample.name, {**sample.labels, "process": child.name}, sample.value)
        return iter(merged.values())


class _Health:
    """The supervisor's /livez (its loop turns) and /readyz (every child is ready)."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.last_beat = time.monotonic()

    def stalled_s(self) -> float:
        return max(time.monotonic() - self.last_beat - CHECK_INTERVAL_S, 0.0)

    async def readiness(self) -> dict[str, str]:
        return {f"process-{child.name}": await asyncio.to_thread(_child_readiness, child) for child in self.children}


def _child_readiness(child: Child) -> str:
    if not child.alive():
        return "not running (being restarted)"
    try:
        with urllib.request.urlopen(  # a fixed http://127.0.0.1 URL of our own child
            f"http://127.0.0.1:{child.metrics_port}/readyz", timeout=READY_TIMEOUT_S * 2
        ):
            return "ok"
    except urllib.error.HTTPError as error:
        return f"not ready ({error.code})"
    except OSError as error:
        return f"unreachable: {error}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment(settings: Settings, child: Child) -> dict[str, str]:
    """The environment of a child: the supervisor's settings as INTERACTIONLOG_* variables, with one process,
    its own consumer prefix and its own metrics port on loopback."""
    values = settings.model_dump()
    values.update(
        processes=1,
        consumer_prefix=f"{settings.consumer_prefix}-p{child.index}",
        metrics_host="127.0.0.1",
        metrics_port=child.metrics_port,
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("INTERACTIONLOG_")}
    environment.update({env_name(name): str(value) for name, value in values.items()})
    for passed_through in ("INTERACTIONLOG_TEST_CRASH_AT",):  # the test suites' hook reaches the children
        if passed_through in os.environ:
            environment[passed_through] = os.environ[passed_through]
    return environment


async def run_supervisor(settings: Settings) -> int:
    """Run `settings.processes` workers until SIGTERM/SIGINT; returns 0 when every one drained in time."""
    children = [Child(index, _free_port()) for index in range(settings.processes)]
    registry = CollectorRegistry()
    restarted = Counter(
        "worker_processes_restarted",
        "Worker processes that died and were restarted by `interactionlog worker --processes N`.",
        namespace=NAMESPACE,
        registry=registry,
    )
    registry.register(ChildrenCollector(children))
    health = _Health(children)
    server = _serve_metrics(settings, registry, health)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(name: str) -> None:
        if stopping.is_set():
            log.warning("shutdown_forced", signal=name)
            for child in children:
                if child.alive() and child.process is not None:
                    child.process.kill()
            os._exit(EXIT_FORCED)
        log.info("shutdown_requested", signal=name, processes=len(children), hint="send it again to exit at once")
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig.name)
    log.info("supervisor_started", processes=len(children), metrics_port=settings.metrics_port)
    try:
        while not stopping.is_set():
            health.last_beat = time.monotonic()
            for child in children:
                if not child.alive() and time.monotonic() >= child.next_start_at:
                    if child.process is not None:
                        child.restarts += 1
                        restarted.inc()
                        log.error(
                            "worker_process_died_restarted",
                            process=child.index,
                            exit_code=child.process.returncode,
                            restarts=child.restarts,
                        )
                    await _start(child, settings)
            await sleep_unless_stopped(CHECK_INTERVAL_S, stopping)
        return await _drain(children, settings.shutdown_timeout_s)
    finally:
        if server is not None:
            await asyncio.to_thread(server.close)


def _serve_metrics(settings: Settings, registry: CollectorRegistry, health: _Health) -> MetricsServer | None:
    if not settings.metrics_port:
        return None
    try:
        return MetricsServer(settings.metrics_host, settings.metrics_port, registry, health)
    except ConfigurationError as error:
        problem = str(error)
    log.error("metrics_unavailable", error=problem, consequence="supervising without a metrics port")
    return None


async def _start(child: Child, settings: Settings) -> None:
    child.process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "interactionlog", "worker", env=child_environment(settings, child)
    )
    # Backoff for the next restart: 1 s, doubling with each restart, up to RESTART_BACKOFF_MAX_S.
    child.next_start_at = time.monotonic() + min(2.0**child.restarts, RESTART_BACKOFF_MAX_S)
    log.info("worker_process_started", process=child.index, pid=child.process.pid, metrics_port=child.metrics_port)


async def _drain(children: list[Child], shutdown_timeout_s: float) -> int:
    """SIGTERM every child and wait for each to drain; kill those still running after the timeout."""
    running = [child.process for child in children if child.alive() and child.process is not None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    waits = [asyncio.create_task(process.wait()) for process in running]
    _, late = await asyncio.wait(waits, timeout=shutdown_timeout_s + 5) if waits else (set(), set())
    for process in running:
        if process.returncode is None:
            process.kill()
    await asyncio.gather(*waits, return_exceptions=True)
    codes = [process.returncode or 0 for process in running]
    exit_code = EXIT_OK if not late and not any(codes) else max([1, *codes])
    log.info("supervisor_stopped", exit_code=exit_code, exit_codes=codes)
    return exit_code
