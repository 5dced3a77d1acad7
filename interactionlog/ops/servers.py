"""Throwaway Redis and PostgreSQL servers (and PgBouncer in front of one), started from the machine's binaries:
`interactionlog dev` runs the whole stack on them, and the test suite starts, kills, freezes and restarts them
(`tests/servers.py` re-exports this module for the tests).

Each server owns a temporary directory (data, log file, PostgreSQL's unix socket) and listens on a port of
127.0.0.1 (a free one unless told), so neither the tests nor `dev` touch the machine's own servers.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import psycopg
import redis
from psycopg import sql

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
INITDB_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 40

# initdb and postgres refuse to run as root, so as root they run as this user.
POSTGRES_OS_USER = "postgres"
PG_BINDIR_ENV = "INTERACTIONLOG_PG_BINDIR"
LEGACY_PG_BINDIR_ENV = "INTERACTIONLOG_TEST_PG_BINDIR"  # the test suite's older name, still honoured
# Where Homebrew puts PostgreSQL (keg-only versioned formulae are not on PATH), Apple silicon then Intel.
HOMEBREW_PREFIXES = (Path("/opt/homebrew/opt"), Path("/usr/local/opt"))

INSTALL_HINTS = (
    "Debian/Ubuntu: sudo apt-get install redis-server postgresql\n"
    "macOS (Homebrew): brew install redis postgresql@16\n"
    "or, with Docker and no local binaries: docker compose up --build"
)

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class ServerError(RuntimeError):
    """A throwaway server failed to start or stop; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _make_dir(prefix: str, owner: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def death_signal_setter(death_signal: signal.Signals) -> Callable[[], None] | None:
    """Make the server die with the test process, so a pytest killed outright leaves no server behind.

    The kernel sends the signal when the *thread* that forked the server exits, so only the main thread, which
    outlives the session, may ask for it: a server restarted from a helper thread (a timer that brings Redis
    back mid-test) would otherwise die as soon as that thread ends. Fixture teardown still covers those.
    """
    if _libc is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _libc.prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(death_signal))

    return set_death_signal


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), or None once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses, so split after its last closing parenthesis.
    return text.rpartition(")")[2].split()


def _children(pid: int) -> list[int]:
    # PostgreSQL puts every backend in a session of its own, so a process group does not reach them;
    # the parent pid does.
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    # A killed child of a killed server becomes a zombie until init reaps it; it holds no port, file or
    # shared memory any more, so it counts as gone.
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class _Started(ABC):
    """Something started by `start()` and removed by `cleanup()`, usable as a context manager."""

    @abstractmethod
    def start(self) -> None:
        """Start it, and wait until it answers."""

    @abstractmethod
    def cleanup(self) -> None:
        """Kill and delete it; safe to call more than once."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.cleanup()


class _Server(_Started):
    """A server process started in the foreground, with its output in a log file of its own directory."""

    kind: str
    death_signal: signal.Signals = signal.SIGKILL

    def __init__(self, *, dir_prefix: str, os_user: str | None = None, port: int | None = None) -> None:
        self.os_user = os_user
        self.dir = _make_dir(dir_prefix, os_user)
        self.log_path = self.dir / "server.log"
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, dir={str(self.dir)!r}, pid={self.pid})"

    @abstractmethod
    def _command(self) -> list[str]:
        """The argv that runs the server in the foreground."""

    @abstractmethod
    def _answers(self) -> bool:
        """Whether the server accepts a client and answers it right now."""

    @property
    def pid(self) -> int | None:
        """The main server process while it runs, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the main server process exists (paused counts as running)."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _error(self, message: str) -> ServerError:
        tail = self.log_tail()
        return ServerError(f"{self.kind} on port {self.port}: {message}\n--- tail of {self.log_path} ---\n{tail}")

    def start(self) -> None:
        """Start the server and return once it answers a client; on failure raise with the log tail."""
        if self.running:
            raise self._error("start() called while it is already running")
        command = self._command()
        group = pwd.getpwnam(self.os_user).pw_gid if self.os_user is not None else None
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(command)}\n".encode())
            log.flush()
            # A session of its own keeps a terminal's Ctrl-C away from the server, so that pytest's teardown,
            # not a race with the signal, decides when it stops.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                user=self.os_user,
                group=group,
                extra_groups=[] if self.os_user is not None else None,
                preexec_fn=death_signal_setter(self.death_signal),  # noqa: PLW1509 - see death_signal_setter
            )
        self._paused = False
        self._wait_until_answering()

    def _wait_until_answering(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if (code := self._process.poll()) is not None:
                raise self._error(f"exited with code {code} while starting")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise self._error(f"did not answer within {START_TIMEOUT_S:.0f} s of starting")
            time.sleep(POLL_INTERVAL_S)

    def _graceful_stop(self, sig: signal.Signals) -> None:
        if not self.running:
            self._process = None
            return
        assert self._process is not None
        # A frozen process cannot act on the stop signal.
        self.resume()
        self._process.send_signal(sig)
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._error(f"did not stop within {STOP_TIMEOUT_S:.0f} s of {sig.name}; killed it") from None
        self._process = None

    def _family(self) -> list[int]:
        """Freeze the main process (so it cannot fork meanwhile) and return it with its children."""
        assert self._process is not None
        main = self._process.pid
        _signal([main], signal.SIGSTOP)
        return [main, *_children(main)]

    def kill(self) -> None:
        """SIGKILL the server and its child processes, as a crash would, and wait until they are gone."""
        if not self.running:
            self._process = None
            return
        assert self._process is not None
        family = self._family()
        _signal(family, signal.SIGKILL)
        self._process.wait(timeout=STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_alive(pid) for pid in family[1:]):
            if time.monotonic() > deadline:
                raise self._error(f"child processes {family[1:]} outlived SIGKILL for {STOP_TIMEOUT_S:.0f} s")
            time.sleep(POLL_INTERVAL_S)
        self._process = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the server and its child processes: connections stay open but nothing answers."""
        if not self.running:
            raise self._error("pause() called while it is not running")
        _signal(self._family(), signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT what pause() froze; a no-op when not paused."""
        if not self._paused or self._process is None:
            return
        _signal([*_children(self._process.pid), self._process.pid], signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """Stop the server gracefully if it runs, then start it again on the same port and data directory."""
        self.stop()
        self.start()

    @abstractmethod
    def stop(self) -> None:
        """Stop the server gracefully and wait for it to exit."""

    def cleanup(self) -> None:
        """Kill the server if it runs and delete its directory; safe to call more than once."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Server):
    """A redis-server with no snapshots; with appendonly=True it keeps its data across kill() and restart()."""

    kind = "redis-server"

    def __init__(self, *, appendonly: bool = False, extra_args: Sequence[str] = (), port: int | None = None) -> None:
        super().__init__(dir_prefix="interactionlog-redis-", port=port)
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        executable = redis_server_path()
        if executable is None:
            raise ServerError(f"redis-server is not on PATH; install it:\n{INSTALL_HINTS}")
        return [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",
            # No RDB snapshots: without the append-only file a restart must start empty, as the tests assume.
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            *self.extra_args,
        ]  # fmt: skip

    def _answers(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # Covers BusyLoadingError too: Redis answers LOADING while it replays the append-only file.
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: Redis finishes the append-only file, if any, and exits."""
        self._graceful_stop(signal.SIGTERM)


def redis_server_path() -> str | None:
    """The redis-server executable on PATH, or None."""
    return shutil.which("redis-server")


def missing_binaries() -> list[str]:
    """What is missing to start the servers: empty when redis-server and PostgreSQL's initdb/postgres are found."""
    missing = [] if redis_server_path() is not None else ["redis-server"]
    try:
        postgres_bindir()
    except ServerError:
        missing.append("PostgreSQL server binaries (initdb, postgres)")
    if _running_as_root():
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            missing.append(f"the {POSTGRES_OS_USER!r} OS user (as root, PostgreSQL runs as that user)")
    return missing


@functools.cache
def postgres_bindir() -> Path:
    """Where initdb and postgres live: $INTERACTIONLOG_PG_BINDIR, Debian's 15, Debian's newest, PATH, Homebrew."""
    if configured := os.environ.get(PG_BINDIR_ENV) or os.environ.get(LEGACY_PG_BINDIR_ENV):
        if not (Path(configured) / "initdb").exists():
            raise ServerError(f"{PG_BINDIR_ENV}={configured} holds no initdb: point it at PostgreSQL's bin directory")
        return Path(configured)
    debian = Path("/usr/lib/postgresql")
    preferred = debian / "15" / "bin"
    if (preferred / "initdb").exists():
        return preferred
    versions = sorted(
        (path.parent for path in debian.glob("*/bin/initdb") if path.parent.parent.name.isdigit()),
        key=lambda bindir: int(bindir.parent.name),
    )
    if versions:
        return versions[-1]
    if (initdb := shutil.which("initdb")) is not None:
        return Path(initdb).parent
    homebrew = sorted(
        (path.parent for prefix in HOMEBREW_PREFIXES for path in prefix.glob("postgresql*/bin/initdb")),
        key=lambda bindir: bindir.parent.name,
    )
    if homebrew:
        return homebrew[-1]
    raise ServerError(
        f"PostgreSQL server binaries (initdb, postgres) not found; install them or set {PG_BINDIR_ENV}:\n"
        f"{INSTALL_HINTS}"
    )


def _run_as(command: Sequence[str], os_user: str | None, timeout_s: float) -> None:
    group = pwd.getpwnam(os_user).pw_gid if os_user is not None else None
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd="/",
        user=os_user,
        group=group,
        extra_groups=[] if os_user is not None else None,
    )
    if result.returncode != 0:
        raise ServerError(f"{' '.join(command)} exited with code {result.returncode}:\n{result.stdout}{result.stderr}")


@functools.cache
def _template_cluster(os_user: str | None) -> Path:
    """One initdb per test process, copied for every server: initdb takes ~0.7 s, a copy ~0.07 s."""
    parent = _make_dir("interactionlog-pg-template-", os_user)
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    data = parent / "data"
    initdb = [
        str(postgres_bindir() / "initdb"),
        "--pgdata", str(data),
        "--username", "postgres",
        "--auth", "trust",
        "--encoding", "UTF8",
        "--locale", "C",
        # Throwaway clusters need no durability on disk, only across process crashes.
        "--no-sync",
        "--no-instructions",
    ]  # fmt: skip
    _run_as(initdb, os_user, INITDB_TIMEOUT_S)
    return data


class PostgresServer(_Server):
    """A PostgreSQL cluster with trust authentication for the superuser `postgres`.

    fsync=False (the default) skips flushing to disk: committed rows still survive kill(), which only ends
    processes, but not a crash of the machine. fsync=True keeps PostgreSQL's normal settings.
    """

    kind = "postgres"
    # SIGQUIT is an immediate shutdown: the postmaster takes its backends down with it.
    death_signal = signal.SIGQUIT

    def __init__(
        self, *, fsync: bool = False, settings: Mapping[str, str] | None = None, port: int | None = None
    ) -> None:
        super().__init__(
            dir_prefix="interactionlog-pg-", os_user=POSTGRES_OS_USER if _running_as_root() else None, port=port
        )
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.data_dir = self.dir / "data"

    def url(self, dbname: str = "postgres") -> str:
        """The connection URL of database `dbname` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server (creating its cluster the first time) and return once it accepts connections."""
        if not self.data_dir.exists():
            # cp -a keeps the owner (the postgres user when running as root) and the 0700 mode postgres insists on.
            _run_as(["cp", "-a", str(_template_cluster(self.os_user)), str(self.data_dir)], None, INITDB_TIMEOUT_S)
        super().start()

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            **({} if self.fsync else {"fsync": "off"}),
            **self.settings,
        }
        options = [argument for name, value in settings.items() for argument in ("-c", f"{name}={value}")]
        return [str(postgres_bindir() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), *options]

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            # Refused while the port is not open yet, "the database system is starting up" during recovery.
            return False

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down: "smart" waits for clients to leave, "fast" disconnects them, "immediate" skips the checkpoint."""
        self._graceful_stop(_STOP_SIGNALS[mode])

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash would; the next start() runs crash recovery."""
        super().kill()
        # PostgreSQL would find these stale itself unless their pid got reused meanwhile; with every process
        # of the cluster known dead, deleting them is safe and rules that out.
        for lock in (self.data_dir / "postmaster.pid", self.dir / f".s.PGSQL.{self.port}.lock"):
            lock.unlink(missing_ok=True)

    def create_database(self, name: str) -> str:
        """Create database `name` and return its URL."""
        # template0: pristine whatever anyone did to template1, and never connected to, so CREATE DATABASE
        # cannot fail with "source database is being accessed by other users". Both take ~14 ms here.
        self._execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, disconnecting whoever is still connected to it."""
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def terminate_backends(self, dbname: str) -> int:
        """End every other client connection to `dbname`, wait until they are gone, and return how many there were."""
        query = """
            SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
            WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'
        """
        with psycopg.connect(self.url(), autocommit=True) as connection:
            rows = connection.execute(query, (dbname,)).fetchall()
        return sum(1 for (terminated,) in rows if terminated)

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(statement)


class PgBouncerServer(_Server):
    """PgBouncer (Debian's `pgbouncer`) in front of a PostgresServer on a loopback port, every database passed
    through, trust authentication, transaction pooling by default: each transaction may run on another server
    connection, as in a common production set-up."""

    kind = "pgbouncer"

    def __init__(self, postgres: PostgresServer, *, pool_mode: str = "transaction", pool_size: int = 2) -> None:
        # PgBouncer refuses to run as root, like PostgreSQL.
        super().__init__(
            dir_prefix="interactionlog-pgbouncer-", os_user=POSTGRES_OS_USER if _running_as_root() else None
        )
        self.postgres = postgres
        self.pool_mode = pool_mode
        self.pool_size = pool_size

    def url(self, dbname: str = "postgres") -> str:
        """The URL of database `dbname` through PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _command(self) -> list[str]:
        executable = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(executable).exists():
            raise ServerError("pgbouncer not found: install it (Debian: apt-get install pgbouncer)")
        users = self.dir / "users.txt"
        users.write_text('"postgres" ""\n')
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.postgres.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        return [executable, str(config)]

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1) as connection:
                connection.execute("SELECT 1")
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """SIGINT: PgBouncer's safe shutdown, after the transactions in flight."""
        self._graceful_stop(signal.SIGINT)


class RedisCluster(_Started):
    """A Redis Cluster on loopback: `masters` redis-servers splitting the 16384 slots evenly (as
    `redis-cli --cluster create` does), each with `replicas_per_master` replicas that take over when it dies.

    `url` names the first node; a client that detects cluster mode learns the rest from it. Use as a context
    manager, or `start()` and `cleanup()`.
    """

    def __init__(self, *, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.replicas_per_master = replicas_per_master
        extra = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica that lost its master for long still takes over: the tests kill masters on purpose.
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip
        self._extra = extra
        count = masters * (1 + replicas_per_master)
        self.nodes = [self._new_node() for _ in range(count)]
        self.url = self.nodes[0].url

    def _new_node(self) -> RedisServer:
        # The bus port defaults to port + 10000, out of range for the high ports free_port() hands out.
        return RedisServer(extra_args=[*self._extra, "--cluster-port", str(free_port())])

    def start(self) -> None:
        """Start every node, join them into a cluster and wait until every slot is served."""
        for index in range(len(self.nodes)):
            for attempt in range(5):
                try:
                    self.nodes[index].start()
                    break
                except ServerError:
                    # Another process took one of its two ports between free_port() and the bind: new ports.
                    self.nodes[index].cleanup()
                    if attempt == 4:
                        raise
                    self.nodes[index] = self._new_node()
        self.url = self.nodes[0].url
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerError(f"redis-cli is not on PATH; install it:\n{INSTALL_HINTS}")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        command = [cli, "--cluster", "create", *addresses]
        command += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
        self.wait_until_healthy()

    def wait_until_healthy(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node says cluster_state:ok and sees a master for each slot range."""
        deadline = time.monotonic() + timeout_s
        while True:
            if all(self._state_ok(node) for node in self.nodes if node.running) and self._masters_agree():
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the cluster did not become healthy within {timeout_s:.0f} s")
            time.sleep(0.2)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each running master -> its slot ranges (inclusive), as CLUSTER SLOTS on a live node says."""
        live = next(node for node in self.nodes if node.running)
        client = redis.Redis(host="127.0.0.1", port=live.port, socket_timeout=2)
        try:
            slots = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
        finally:
            client.close()
        found: dict[int, list[tuple[int, int]]] = {}
        for start, end, master, *_ in slots:
            found.setdefault(int(master[1]), []).append((int(start), int(end)))
        return found

    def node_on(self, port: int) -> RedisServer:
        """The node listening on `port`."""
        return next(node for node in self.nodes if node.port == port)

    def master_of_slot(self, slot: int) -> RedisServer:
        """The node currently serving `slot` as master."""
        for port, ranges in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return self.node_on(port)
        raise ServerError(f"no master serves slot {slot}")

    def _state_ok(self, node: RedisServer) -> bool:
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return str(client.info("cluster").get("cluster_enabled")) == "1" and bool(
                client.cluster("INFO").get("cluster_state") == "ok"
            )
        except (redis.exceptions.RedisError, OSError):
            return False
        finally:
            client.close()

    def _masters_agree(self) -> bool:
        try:
            masters = self.masters()
        except (redis.exceptions.RedisError, OSError, StopIteration):
            return False
        covered = sum(end - start + 1 for ranges in masters.values() for start, end in ranges)
        return covered == 16384 and all(self.node_on(port).running for port in masters)

    def cleanup(self) -> None:
        """Kill every node and delete its directory."""
        for node in self.nodes:
            node.cleanup()


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode watching the master at `master_port` as `service` (quorum `quorum`)."""

    kind = "redis-sentinel"

    def __init__(self, *, master_port: int, service: str, quorum: int, down_after_ms: int = 1000) -> None:
        super().__init__()
        # Sentinel rewrites its configuration file as it learns replicas and failovers: it must be writable.
        (self.dir / "sentinel.conf").write_text(
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {10 * down_after_ms}\n"
        )

    def _command(self) -> list[str]:
        executable = redis_server_path()
        if executable is None:
            raise ServerError(f"redis-server is not on PATH; install it:\n{INSTALL_HINTS}")
        return [
            executable, str(self.dir / "sentinel.conf"), "--sentinel",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip


class RedisSentinels(_Started):
    """A master, `replicas` replicas and `sentinels` sentinels on loopback, watching the service `service`.

    `url` is the `redis+sentinel://` URL of the setup; `master()` is the node the sentinels name master now.
    """

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, service: str = "interactionlog") -> None:
        self.service = service
        self.master_node = RedisServer()
        replica_of = ["--replicaof", "127.0.0.1", str(self.master_node.port)]
        self.replicas = [RedisServer(extra_args=replica_of) for _ in range(replicas)]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            SentinelServer(master_port=self.master_node.port, service=service, quorum=quorum) for _ in range(sentinels)
        ]
        addresses = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        self.url = f"redis+sentinel://{addresses}/{service}/0"

    @property
    def nodes(self) -> list[RedisServer]:
        """The master and the replicas, as started (a failover swaps their roles)."""
        return [self.master_node, *self.replicas]

    def start(self) -> None:
        """Start the master, the replicas and the sentinels, and wait until the sentinels see every replica."""
        for server in [*self.nodes, *self.sentinels]:
            server.start()
        deadline = time.monotonic() + 30
        while self._replicas_seen() < len(self.replicas):
            if time.monotonic() > deadline:
                raise ServerError("the sentinels did not discover the replicas within 30 s")
            time.sleep(0.2)

    def master(self) -> RedisServer:
        """The node a live sentinel names master now."""
        port = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1]
        return next(node for node in self.nodes if node.port == int(port))

    def _replicas_seen(self) -> int:
        try:
            return len(self._ask("SENTINEL", "REPLICAS", self.service))
        except (redis.exceptions.RedisError, OSError, StopIteration):
            return 0

    def _ask(self, *command: str) -> Any:
        live = next(sentinel for sentinel in self.sentinels if sentinel.running)
        client = redis.Redis(host="127.0.0.1", port=live.port, socket_timeout=2)
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def cleanup(self) -> None:
        """Kill everything and delete the directories."""
        for server in [*self.sentinels, *self.nodes]:
            server.cleanup()
