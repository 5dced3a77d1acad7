"""The suite's throwaway servers: the names of `interactionlog.ops.servers`, which `interactionlog dev` shares.

Kept so tests import them as `from .servers import free_port, PostgresServer, RedisServer`.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import psycopg

from interactionlog.ops.servers import (
    POSTGRES_OS_USER,
    PostgresServer,
    RedisServer,
    ServerError,
    StopMode,
    _running_as_root,
    _Server,
    free_port,
    postgres_bindir,
)

__all__ = [
    "POSTGRES_OS_USER",
    "PgBouncerServer",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "StopMode",
    "free_port",
    "postgres_bindir",
]


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
