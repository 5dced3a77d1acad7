"""The worker process's lifecycle under an operator's hands: dead consumer tasks, a second Ctrl-C, process
metrics, several workers from the same settings on one host."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from interactionlog import Publisher
from interactionlog.worker.daemon import CRASH_HOOK_VARIABLE

from .pipeline import WorkerProcess, count_rows, migrate, record, running_worker, wait_until
from .servers import PostgresServer, free_port


def test_a_consumer_task_that_dies_is_restarted_and_consumption_goes_on(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A consumer task ending past its own guard is logged once and restarted: the worker keeps storing."""
    migrate(database_url)
    worker = WorkerProcess(
        redis_url, database_url, tmp_path, env={CRASH_HOOK_VARIABLE: "consumer_task"}, concurrency="1"
    )
    try:
        wait_until(lambda: "consumer_died_restarted" in worker.log_text(), what="the dead consumer restarted")
        with Publisher.from_url(redis_url) as publisher:
            publisher.publish_many([record(index) for index in range(50)])
        wait_until(lambda: count_rows(database_url) == 50, what="50 rows stored by the restarted consumer")
        assert worker.stop() == 0
    finally:
        worker.kill()
    assert worker.log_text().count('"consumer_died_restarted"') == 1


@pytest.mark.fault
@pytest.mark.parametrize("own_postgres", [{}], indirect=True)
def test_a_second_interrupt_forces_the_exit_while_a_batch_hangs(
    redis_url: str, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """With PostgreSQL frozen mid-batch the drain cannot finish; the second SIGINT exits at once with 130."""
    database_url = own_postgres.create_database("forced")
    migrate(database_url)
    worker = WorkerProcess(redis_url, database_url, tmp_path, concurrency="1", shutdown_timeout_s="120")
    try:
        wait_until(lambda: "consumer_started" in worker.log_text(), what="the worker to start")
        own_postgres.pause()
        with Publisher.from_url(redis_url) as publisher:
            publisher.publish_many([record(index) for index in range(10)])
        time.sleep(1.0)  # the batch is read and its COPY waits on the frozen server
        worker.signal(signal.SIGINT)
        wait_until(lambda: "shutdown_requested" in worker.log_text(), what="the first interrupt")
        time.sleep(0.5)
        started = time.monotonic()
        worker.signal(signal.SIGINT)
        assert worker.wait(timeout_s=10) == 130
        assert time.monotonic() - started < 5
        assert "shutdown_forced" in worker.log_text()
    finally:
        own_postgres.resume()
        worker.kill()


def test_the_worker_exports_its_memory_and_cpu_for_the_alerts(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """/metrics carries process_resident_memory_bytes and process_cpu_seconds_total, with real values."""
    migrate(database_url)
    port = free_port()
    with running_worker(redis_url, database_url, tmp_path, metrics_port=str(port), metrics_host="127.0.0.1") as worker:
        wait_until(lambda: "metrics_serving" in worker.log_text(), what="the metrics port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert worker.stop() == 0
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines() if line.startswith("process_")
    }
    assert 10 * 2**20 < values["process_resident_memory_bytes"] < 2**30
    assert values["process_cpu_seconds_total"] > 0


def _samples(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
        return str(response.read().decode())


def _persisted_by_process(body: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("interactionlog_entries_persisted_total{"):
            labels, value = line.rsplit(" ", 1)
            process = labels.split('process="', 1)[1].split('"', 1)[0]
            found[process] = float(value)
    return found


@pytest.mark.fault
def test_processes_n_supervises_workers_behind_one_metrics_port(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """`worker --processes 2` runs two workers that share the stream, serves one /metrics with each process's
    series, restarts a worker killed outright, and drains them all on SIGTERM."""
    migrate(database_url)
    port = free_port()
    supervisor = WorkerProcess(
        redis_url, database_url, tmp_path, processes="2", metrics_port=str(port), metrics_host="127.0.0.1"
    )
    try:
        wait_until(lambda: supervisor.log_text().count('"consumer_started"') == 4, what="2 processes x 2 consumers")
        with Publisher.from_url(redis_url) as publisher:
            for start in range(0, 4000, 500):
                publisher.publish_many([record(index) for index in range(start, start + 500)])
        wait_until(lambda: count_rows(database_url) == 4000, what="4000 rows stored")
        wait_until(
            lambda: sum(_persisted_by_process(_samples(port)).values()) == 4000,
            what="both processes' counters on the one metrics port",
        )
        assert set(_persisted_by_process(_samples(port))) == {"0", "1"}
        first_pid = int(supervisor.log_text().split('"pid": ', 1)[1].split(",", 1)[0])
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: "worker_process_died_restarted" in supervisor.log_text(), what="the restart")
        wait_until(lambda: supervisor.log_text().count('"consumer_started"') == 6, what="the restarted consumers")
        with Publisher.from_url(redis_url) as publisher:
            publisher.publish_many([record(index) for index in range(4000, 4500)])
        wait_until(lambda: count_rows(database_url) == 4500, what="500 more rows after the restart")
        assert "interactionlog_worker_processes_restarted_total 1.0" in _samples(port)
        assert supervisor.stop() == 0
        assert supervisor.log_text().count('"worker_stopped"') == 2
    finally:
        supervisor.kill()
