"""Draining the prefilled stream with one contender into its own fresh database, and measuring the rate.

Each contender gets its own copy of the prefilled stream (Redis COPY: same entries, same ids), cut to the newest
`count` entries, with a fresh consumer group, and its own freshly migrated database. A copy rather than one shared
stream with a group per contender: the worker trims what its groups have acknowledged, as it does in production.

The rate comes from the table, not from the contender: `stored_at` is each row's transaction start, so the rows
stored between the 10th and 90th percentile of `stored_at`, divided by that span, is the steady drain rate with
process start-up and the last stragglers left out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from interactionlog.worker.decode import StoredRow
from interactionlog.worker.store import migrate

from .records import Prefilled
from .servers import Servers, checkpoint, cpu_seconds, create_database, drop_database

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.25
STOP_TIMEOUT_S = 30.0
TRIM = 0.10  # measure between the TRIM and 1 - TRIM quantiles of stored_at


@dataclass(frozen=True)
class Target:
    """Where one contender drains from and into."""

    database_url: str
    stream: str
    group: str


# Builds the command lines of a contender's processes.
Commands = Callable[[Target], list[list[str]]]


@dataclass(frozen=True)
class DrainResult:
    """One contender's drain: how many rows it stored, how fast, and what it cost in memory."""

    label: str
    expected: int
    rows: int
    rate: float | None  # rows/s from the table, steady state; None when too few batches to tell
    wall_s: float  # from the first process start to drained (or stopped), start-up included
    peak_rss_mib: float | None  # the largest VmHWM among the contender's processes
    drained: bool
    note: str = ""
    # CPU seconds used during the drain by the contender's own processes, by PostgreSQL and by Redis.
    cpu_contender_s: float = 0.0
    cpu_postgres_s: float = 0.0
    cpu_redis_s: float = 0.0


# The checkout contenders' processes import `interactionlog` from (`--worker-tree`): this one unless told.
WORKER_TREE = REPO


def _tree(argv: Sequence[str]) -> Path:
    """The checkout a contender's command runs in: WORKER_TREE for `python -m interactionlog` (behind a prefix such
    as valgrind's too), else this one."""
    runs_package = any(list(argv[index : index + 2]) == ["-m", "interactionlog"] for index in range(len(argv)))
    return WORKER_TREE if runs_package else REPO


def checkout_env(tree: Path = REPO) -> dict[str, str]:
    """The environment a contender from checkout `tree` runs in: `tree` first on PYTHONPATH, and none of the
    caller's INTERACTIONLOG_* variables, which would silently change the settings under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERACTIONLOG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH", "")]))
    return env


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) in MiB, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def measure_table(database_url: str) -> tuple[int, float | None]:
    """Rows in `interaction_logs` and the steady-state rate between the trimmed quantiles of stored_at."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*),"
            " percentile_cont(%(lo)s) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at)),"
            " percentile_cont(%(hi)s) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at))"
            " FROM interaction_logs",
            {"lo": TRIM, "hi": 1 - TRIM},
        ).fetchone()
    assert row is not None
    rows, t_lo, t_hi = int(row[0]), row[1], row[2]
    if rows == 0 or t_lo is None or t_hi is None or t_hi <= t_lo:
        return rows, None
    return rows, (1 - 2 * TRIM) * rows / (float(t_hi) - float(t_lo))


def _fresh_database(servers: Servers, slug: str) -> str:
    url = create_database(servers, f"bench_{slug}")
    if WORKER_TREE == REPO:
        asyncio.run(migrate(url))
    else:  # the table the other checkout's worker was written for, by its own migrations
        argv = [sys.executable, "-m", "interactionlog", "migrate", "--database-url", url]
        subprocess.run(argv, cwd=WORKER_TREE, env=checkout_env(WORKER_TREE), check=True, capture_output=True)
    return url


def _group_state(client: redis.Redis, stream: str, group: str) -> tuple[str, int]:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return info["last-delivered-id"].decode(), int(info["pending"])
    raise RuntimeError(f"group {group} vanished from {stream}")


def _stop_all(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_snapshot(servers: Servers, processes: Sequence[subprocess.Popen[bytes]]) -> tuple[float, float, float]:
    """CPU seconds so far of the contender's processes, of PostgreSQL and of Redis."""
    contender = sum(cpu_seconds(process.pid) for process in processes)
    return contender, cpu_seconds(servers.postgres_pid), cpu_seconds(servers.redis_pid)


def run_processes(
    servers: Servers,
    prefilled: Prefilled,
    *,
    label: str,
    slug: str,
    commands: Commands,
    count: int,
    max_s: float,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> DrainResult:
    """Drain the newest `count` entries with the contender's processes; stop them at max_s if not drained, and
    kill those still running `stop_timeout_s` after SIGTERM.

    CPU is counted from the first delivery (the group's last-delivered id moves) to the end of the drain, so the
    interpreter's start-up does not inflate the per-row figures of short runs.
    """
    target = Target(_fresh_database(servers, slug), f"{prefilled.stream}:{slug}", f"bench-{slug}")
    client = redis.Redis.from_url(servers.redis_url)
    client.copy(prefilled.stream, target.stream, replace=True)
    if count < len(prefilled.entry_ids):
        client.xtrim(target.stream, minid=prefilled.entry_ids[-count], approximate=False)
    client.xgroup_create(target.stream, target.group, id="0")
    checkpoint(servers)
    log_path = servers.workdir / f"{slug}.log"
    processes: list[subprocess.Popen[bytes]] = []
    peaks: dict[int, float] = {}
    drained = False
    note = ""
    cpu_start: tuple[float, float, float] | None = None
    cpu_end = (0.0, 0.0, 0.0)
    with log_path.open("wb") as log:
        started = time.monotonic()
        try:
            for argv in commands(target):
                tree = _tree(argv)
                processes.append(
                    subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=checkout_env(tree))
                )
            while time.monotonic() - started < max_s:
                for process in processes:
                    peak = peak_rss_mib(process.pid)
                    if peak is not None:
                        peaks[process.pid] = max(peak, peaks.get(process.pid, 0.0))
                    elif process.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{label}: process exited with {process.returncode}:\n{tail}")
                last_delivered, pending = _group_state(client, target.stream, target.group)
                if cpu_start is None and last_delivered != "0-0":
                    cpu_start = _cpu_snapshot(servers, processes)
                if last_delivered == prefilled.last_id and pending == 0:
                    drained = True
                    break
                time.sleep(POLL_S if cpu_start else POLL_S / 10)
            wall_s = time.monotonic() - started
            cpu_end = _cpu_snapshot(servers, processes)
            if not drained:
                note = f"stopped after {max_s:.0f} s"
        finally:
            _stop_all(processes, stop_timeout_s)
    cpu = [end - begin for end, begin in zip(cpu_end, cpu_start or cpu_end, strict=True)]
    rows, rate = measure_table(target.database_url)
    drop_database(servers, f"bench_{slug}")
    client.delete(target.stream)
    client.close()
    if drained and rows != count:
        note = f"LOST ROWS: stored {rows:,} of {count:,}"
    peak = max(peaks.values(), default=None)
    return DrainResult(label, count, rows, rate, wall_s, peak, drained, note, *cpu)


_COPY_SQL = "COPY interaction_logs ({}) FROM STDIN".format(", ".join(f'"{name}"' for name in StoredRow._fields))


def run_bound(servers: Servers, prefilled: Prefilled, *, connections: int, fmt: str, slug: str) -> DrainResult:
    """The machine's bound: the same rows, already encoded for COPY (`fmt`: text or binary), COPYed in one
    transaction per block over `connections` parallel connections."""
    database_url = _fresh_database(servers, slug)
    checkpoint(servers)
    blocks = prefilled.copy_blocks[fmt]
    statement = _COPY_SQL + (" (FORMAT BINARY)" if fmt == "binary" else "")
    errors: list[BaseException] = []

    def copy_every(start: int) -> None:
        try:
            with psycopg.connect(database_url) as conn:
                for block in blocks[start::connections]:
                    with conn.transaction(), conn.cursor() as cursor, cursor.copy(statement) as copy:
                        copy.write(block)
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    cpu_before = cpu_seconds(servers.postgres_pid)
    started = time.monotonic()
    threads = [threading.Thread(target=copy_every, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.monotonic() - started
    cpu_postgres = cpu_seconds(servers.postgres_pid) - cpu_before
    if errors:
        raise errors[0]
    rows, rate = measure_table(database_url)
    drop_database(servers, f"bench_{slug}")
    expected = len(prefilled.entry_ids)
    label = f"machine bound: {fmt} COPY, {prefilled.rows_per_block}-row txns, {connections} conn"
    return DrainResult(label, expected, rows, rate, wall_s, None, rows == expected, cpu_postgres_s=cpu_postgres)


def worker_commands(
    servers: Servers, *, processes: int = 1, batch_size: int | None = None, concurrency: int | None = None
) -> Commands:
    """`interactionlog worker` through its CLI; None keeps the setting's default."""
    extra: list[str] = []
    if batch_size is not None:
        extra += ["--batch-size", str(batch_size)]
    if concurrency is not None:
        extra += ["--concurrency", str(concurrency)]

    def build(target: Target) -> list[list[str]]:
        argv = [
            sys.executable, "-m", "interactionlog", "worker",
            "--redis-url", servers.redis_url, "--database-url", target.database_url,
            "--stream", target.stream, "--group", target.group, "--metrics-port", "0", *extra,
        ]  # fmt: skip
        return [argv for _ in range(processes)]

    return build


def module_commands(servers: Servers, module: str, *args: str) -> Commands:
    """A contender implemented in this package: `python -m benchmarks.<module> REDIS DB STREAM GROUP CONSUMER`."""

    def build(target: Target) -> list[list[str]]:
        argv = [sys.executable, "-m", f"benchmarks.{module}", servers.redis_url, target.database_url]
        return [[*argv, target.stream, target.group, f"{target.group}-1", *args]]

    return build
