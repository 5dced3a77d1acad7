"""`interactionlog dev`, run as a real process: the whole stack comes up, stores what is published, prints it,
and on Ctrl-C leaves no process, port or directory behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from interactionlog import Publisher

from .pipeline import wait_until

DEV = [sys.executable, "-m", "interactionlog", "dev"]
STARTED = "Stored interactions, as they arrive:"


def _collect(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc's parent links."""
    parents = {int(entry.name): fields[1] for entry in Path("/proc").iterdir()
               if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None}  # fmt: skip
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if int(parent) in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running, or stopped; a zombie (exited, not yet reaped) holds nothing and counts as gone."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_runs_the_stack_shows_what_is_stored_and_leaves_nothing_on_ctrl_c() -> None:
    """dev starts Redis, PostgreSQL and a worker; the banner's own commands publish and tail; a published record
    is printed as it is stored; SIGINT stops it with 0 and every process, port and directory is gone."""
    process = subprocess.Popen(DEV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    for stream, lines in ((process.stdout, out), (process.stderr, err)):
        threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()
    try:
        wait_until(lambda: STARTED in out or process.poll() is not None, timeout_s=120, what="the dev banner")
        assert STARTED in out, "\n".join(out + err)
        banner = "\n".join(out)
        redis_url = re.search(r"Redis +(redis://\S+)", banner)
        database_url = re.search(r"PostgreSQL +(postgresql://\S+)", banner)
        files = re.search(r"files +(.+)", banner)
        assert redis_url is not None, banner
        assert database_url is not None, banner
        assert files is not None, banner
        directories = [Path(path) for path in files.group(1).split()]
        ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in (redis_url.group(1), database_url.group(1))]
        family = descendants(process.pid)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in family if alive(pid)}
        assert {"redis-server", "postgres"} <= names, names
        assert all(directory.is_dir() for directory in directories)

        publisher = Publisher.from_url(redis_url.group(1))
        try:
            publisher.publish({"mcp_id": "weather", "interaction_id": "dev-1", "method": "tools/call",
                               "tool": "get_forecast", "duration_ms": 12.5})  # fmt: skip
        finally:
            publisher.close()
        wait_until(lambda: any("id=dev-1" in line for line in out), timeout_s=30, what="dev printing the record")
        (printed,) = (line for line in out if "id=dev-1" in line)
        for part in ("weather", "tools/call get_forecast", "12.5 ms"):
            assert part in printed

        # The banner's commands, pasted as they are into a shell: exports, the sample publish, then tail.
        commands = [line.strip() for line in out if line.startswith("  export ") or " publish -" in line]
        assert len(commands) == 3, commands
        shell = subprocess.run(["bash", "-c", "\n".join([*commands, DEV[0] + " -m interactionlog tail --json"])],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert shell.returncode == 0, shell.stderr
        wait_until(lambda: any("demo" in line and "echo" in line for line in out), what="the sample record")
        stored = [json.loads(line)["mcp_id"] for line in shell.stdout.splitlines()]
        assert "weather" in stored

        # The banner's curl line posts the sample through the HTTP gateway that dev runs.
        (curl,) = (line.strip() for line in out if line.strip().startswith("curl "))
        posted = subprocess.run(["bash", "-c", curl + " -o /dev/null -w '%{http_code}'"],
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert posted.stdout == "202", posted.stderr
        wait_until(lambda: sum("demo" in line and "echo" in line for line in out) >= 2, what="the posted record")

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "\n".join(err)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert any("stopped; nothing is left running" in line for line in err), err
    wait_until(lambda: not [pid for pid in family if alive(pid)], timeout_s=15, what="every child gone")
    assert not any(listening(port) for port in ports)
    assert not [directory for directory in directories if directory.exists()]


def test_dev_names_what_to_install_when_the_servers_are_missing(tmp_path: Path) -> None:
    """Without redis-server and PostgreSQL, dev exits 1 naming both and how to install them or use Docker."""
    environment = {**os.environ, "PATH": str(tmp_path), "INTERACTIONLOG_PG_BINDIR": str(tmp_path / "nowhere")}
    result = subprocess.run(DEV, capture_output=True, text=True, env=environment, timeout=60, check=False)
    assert result.returncode == 1
    for part in (
        "redis-server",
        "PostgreSQL server binaries (initdb, postgres)",
        "apt-get install redis-server postgresql",
        "brew install redis postgresql@16",
        "docker compose up",
    ):
        assert part in result.stderr, result.stderr
