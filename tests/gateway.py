"""Test helpers for the gateways: `interactionlog serve` as a real process, tokens, and an HTTP client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from interactionlog.gateway.tokens import create_token, revoke_tokens
from tests.pipeline import INTERACTIONLOG, migrate, wait_until
from tests.servers import free_port

INGEST = "/api/v2/interactions"

# Quick to notice everything: backlog read often, tokens re-checked at once, short drains.
FAST_GATEWAY_FLAGS: dict[str, str] = {
    "--backlog-interval-s": "0.1",
    "--token-cache-s": "0",
    "--publish-timeout-s": "0.5",
    "--redis-timeout-s": "1",
    "--shutdown-timeout-s": "5",
    "--log-format": "json",
    "--gateway-host": "127.0.0.1",
    "--metrics-port": "0",
}


class GatewayProcess:
    """An `interactionlog serve` running as a real process on free loopback ports, its log captured to a file."""

    def __init__(
        self,
        redis_url: str,
        database_url: str,
        log_dir: Path,
        *,
        no_auth: bool = False,
        tls: bool = False,
        **flags: str,
    ) -> None:
        self.http_port = int(flags.pop("http_port", str(free_port())))
        self.grpc_port = int(flags.pop("grpc_port", str(free_port())))
        arguments = {
            **FAST_GATEWAY_FLAGS,
            "--http-port": str(self.http_port),
            "--grpc-port": str(self.grpc_port),
            **{"--" + k.replace("_", "-"): v for k, v in flags.items()},
        }
        command = [*INTERACTIONLOG, "serve", "--redis-url", redis_url, "--database-url", database_url]
        for flag, value in arguments.items():
            command += [flag, value]
        if no_auth:
            command.append("--no-auth")
        self.scheme = "https" if tls else "http"
        self.log_path = log_dir / f"gateway-{self.http_port}-{self.grpc_port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            wait_until(self._answers, timeout_s=30, what=f"the gateway to answer (log: {self.log_path})")
        except BaseException:
            self.kill()
            raise

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP server (0 ports mean that server is off)."""
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
        port = self.http_port or self.grpc_port
        try:
            if self.http_port:
                # verify=False: only to see a TLS gateway (with its self-signed test certificate) answer at all.
                return httpx.get(f"{self.http_url}/livez", timeout=1, verify=False).status_code == 200  # noqa: S501
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return "gateway_started" in self.log_text()
        except (httpx.HTTPError, OSError):
            return False

    def log_text(self) -> str:
        """Everything the gateway logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


@contextmanager
def running_gateway(redis_url: str, database_url: str, log_dir: Path, **flags: Any) -> Iterator[GatewayProcess]:
    """A gateway for the duration of the block, killed afterwards if still running."""
    gateway = GatewayProcess(redis_url, database_url, log_dir, **flags)
    try:
        yield gateway
    finally:
        gateway.kill()


def new_token(database_url: str, mcp_id: str = "weather", name: str | None = None) -> str:
    """A fresh token of `mcp_id` (the table must exist)."""
    _, token = asyncio.run(create_token(database_url, mcp_id, name))
    return token


def revoke(database_url: str, token: str) -> None:
    """Revoke `token`."""
    assert asyncio.run(revoke_tokens(database_url, [token]))


def migrated(database_url: str) -> str:
    """`database_url`, after `interactionlog migrate`."""
    migrate(database_url)
    return database_url


def post(
    gateway: GatewayProcess,
    body: bytes | str,
    *,
    token: str | None,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """POST `body` to the gateway's ingest endpoint with `token` (None: no Authorization header)."""
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(f"{gateway.http_url}{INGEST}", content=body, headers=sent, timeout=30)
