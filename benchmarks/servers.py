"""Throwaway redis-server and PostgreSQL cluster on free loopback ports, torn down when the suite ends.

PostgreSQL runs with fsync and synchronous_commit on, as in production: every contender pays for durable
commits, so the figures compare pipelines rather than how much each one is allowed to lose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

PG_BIN_DIRS = tuple(Path(f"/usr/lib/postgresql/{version}/bin") for version in (15, 16, 17))
START_TIMEOUT_S = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Identical for every contender. WAL is sized so no checkpoint is forced in the middle of a drain; the suite runs
# CHECKPOINT before each contender instead, so none inherits another's dirty buffers.
POSTGRES_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_connections": "100",
    "listen_addresses": "127.0.0.1",
    "log_min_messages": "warning",
}


class ServerError(RuntimeError):
    """A throwaway server could not be started."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the tiny race with other processes is acceptable here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_pg_bin() -> Path | None:
    """The directory holding initdb and postgres, or None when PostgreSQL is not installed."""
    for directory in PG_BIN_DIRS:
        if (directory / "initdb").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: drop to the `postgres` account when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class Servers:
    """The running servers and how to reach them."""

    redis_url: str
    pg_dsn_template: str  # format with dbname=...
    workdir: Path
    redis_pid: int
    postgres_pid: int

    def database_url(self, dbname: str) -> str:
        """The conninfo of database `dbname` on the throwaway cluster."""
        return self.pg_dsn_template.format(dbname=dbname)

    @property
    def admin_url(self) -> str:
        """The maintenance database, for CREATE and DROP DATABASE."""
        return self.database_url("postgres")


def _wait_for(check: Any, what: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            check()
        except Exception:  # any failure means "not up yet"
            time.sleep(0.1)
            continue
        return
    raise ServerError(f"{what} did not come up within {START_TIMEOUT_S} s: {log_path.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def start_servers() -> Iterator[Servers]:
    """Start redis-server and a fresh PostgreSQL cluster in a temporary directory; stop and delete them after."""
    pg_bin = find_pg_bin()
    redis_server = shutil.which("redis-server")
    if pg_bin is None or redis_server is None:
        raise ServerError("the benchmarks need redis-server and PostgreSQL's initdb/postgres on this machine")
    workdir = Path(tempfile.mkdtemp(prefix="interactionlog-bench-"))
    processes: list[tuple[subprocess.Popen[bytes], signal.Signals]] = []
    try:
        redis_port = free_port()
        redis_log = workdir / "redis.log"
        with redis_log.open("wb") as out:
            redis_proc = subprocess.Popen(
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(workdir), "--protected-mode", "no"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        processes.append((redis_proc, signal.SIGTERM))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        _wait_for(lambda: redis.Redis.from_url(redis_url).ping(), "redis-server", redis_proc, redis_log)

        pgdata = workdir / "pgdata"
        pgdata.mkdir()
        if os.geteuid() == 0:
            shutil.chown(workdir, "postgres", "postgres")
            shutil.chown(pgdata, "postgres", "postgres")
        pg_log = workdir / "postgres.log"
        # --no-sync only skips syncing the freshly created template files; the server itself runs with fsync on.
        subprocess.run(
            [str(pg_bin / "initdb"), "-D", str(pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, **_as_postgres_user(),
        )  # fmt: skip
        pg_port = free_port()
        options = [arg for name, value in POSTGRES_SETTINGS.items() for arg in ("-c", f"{name}={value}")]
        with pg_log.open("wb") as out:
            pg_proc = subprocess.Popen(
                [str(pg_bin / "postgres"), "-D", str(pgdata), "-p", str(pg_port), "-k", str(workdir), *options],
                stdout=out, stderr=subprocess.STDOUT, **_as_postgres_user(),
            )  # fmt: skip
        processes.append((pg_proc, signal.SIGINT))  # SIGINT: PostgreSQL's fast shutdown
        template = f"host=127.0.0.1 port={pg_port} user=postgres dbname={{dbname}}"
        _wait_for(
            lambda: psycopg.connect(template.format(dbname="postgres"), connect_timeout=2).close(),
            "postgres", pg_proc, pg_log,
        )  # fmt: skip
        yield Servers(redis_url, template, workdir, redis_proc.pid, pg_proc.pid)
    finally:
        for process, sig in reversed(processes):
            _stop(process, sig)
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants, living or already reaped, so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" that ends the command name: utime, stime, cutime, cstime are fields 12..15 (0-based 11..14).
    own = sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):  # the process, or one of its threads, may exit while we look
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                children += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return children


def create_database(servers: Servers, dbname: str) -> str:
    """A fresh, empty database (dropped first if a previous run left it); returns its conninfo."""
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    return servers.database_url(dbname)


def drop_database(servers: Servers, dbname: str) -> None:
    """Drop a contender's database, freeing its disk before the next contender runs."""
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def checkpoint(servers: Servers) -> None:
    """Flush dirty buffers so the next contender does not pay for the previous one's writes."""
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
