"""Instrument an MCP server in one line: ``from interactionlog.mcp import instrument; instrument(server)``.

`instrument` recognises the server's SDK flavour (the official `mcp` SDK 2.x `Server`/`MCPServer`, 1.x
`Server`/`FastMCP`, or the standalone `fastmcp` package's `FastMCP`), hooks into its request path, and records
every `tools/call`, `resources/read` and `prompts/get` through a `BackgroundPublisher`: the request never waits
on the network, what cannot be sent is spooled on disk, and secrets are scrubbed before a record leaves the
process. Calling it twice on one server returns the first handle.

Every keyword has a default: the matching ``INTERACTIONLOG_*`` variable, else a working local value.

| keyword | variable | default |
| --- | --- | --- |
| url | INTERACTIONLOG_REDIS_URL | redis://localhost:6379/0 |
| stream | INTERACTIONLOG_STREAM | interactions |
| mcp_id | INTERACTIONLOG_MCP_ID | the server's name |
| spool_dir | INTERACTIONLOG_SPOOL_DIR | $XDG_STATE_HOME/interactionlog/spool (~/.local/state/...) |
| spool_max_bytes | INTERACTIONLOG_SPOOL_MAX_BYTES | 268435456 (256 MiB) |
| spool_full_policy | INTERACTIONLOG_SPOOL_FULL_POLICY | drop_newest |
| max_record_bytes | INTERACTIONLOG_MAX_RECORD_BYTES | 262144 (oversize records are truncated) |
| record_all_requests | INTERACTIONLOG_RECORD_ALL_REQUESTS | false (true adds tools/list, resources/list, ...) |
| scrub | INTERACTIONLOG_SCRUB | true (false turns scrubbing off) |
| metrics_port | INTERACTIONLOG_CLIENT_METRICS_PORT | 0 (off): serve the publisher's metrics on this port |
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .client.background import BackgroundPublisher
from .client.mcp import fastmcp as fastmcp_flavour
from .client.mcp import sdk_v1, sdk_v2
from .client.mcp.core import Recorder
from .client.metrics import serve_metrics
from .client.spool import DEFAULT_MAX_BYTES, FullPolicy
from .errors import ConfigurationError
from .scrub import Scrubber
from .settings import DEFAULT_MAX_RECORD_BYTES, DEFAULT_REDIS_URL, DEFAULT_STREAM, ENV_PREFIX

Flavour = Literal["mcp-v2", "mcp-v1", "fastmcp"]

__all__ = ["Instrumentation", "instrument"]


@dataclass
class Instrumentation:
    """What `instrument` returns: the publisher it records through, and `flush` / `close`."""

    server: Any
    flavour: Flavour
    recorder: Recorder
    publisher: BackgroundPublisher
    _uninstall: Callable[[], None]
    _owns_publisher: bool

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every record so far was sent to Redis or spooled; False if `timeout_s` ran out."""
        return self.publisher.flush(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop recording, then flush and close the publisher (if `instrument` created it); idempotent."""
        self._uninstall()
        _handles.pop(self.server, None)
        if self._owns_publisher:
            self.publisher.close(timeout_s)


_handles: weakref.WeakKeyDictionary[Any, Instrumentation] = weakref.WeakKeyDictionary()


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value else None


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name} must be an integer, got {value!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{ENV_PREFIX}{name} must be true or false, got {value!r}")


def detect_flavour(server: Any) -> Flavour:
    """Which SDK built `server`; raises TypeError naming what is supported when it is none of them."""
    module = type(server).__module__
    if module.split(".")[0] == "fastmcp" and hasattr(server, "add_middleware"):
        return "fastmcp"
    if isinstance(getattr(server, "middleware", None), list) and module.split(".")[0] == "mcp":
        return "mcp-v2"
    if isinstance(getattr(server, "request_handlers", None), dict) or isinstance(
        getattr(getattr(server, "_mcp_server", None), "request_handlers", None), dict
    ):
        return "mcp-v1"
    raise TypeError(
        f"instrument() does not know a {type(server).__module__}.{type(server).__qualname__}; pass an MCP server "
        "built with the official mcp SDK (2.x Server or MCPServer, 1.x Server or FastMCP) or with fastmcp's FastMCP"
    )


def _server_identity(server: Any) -> tuple[str | None, str | None]:
    lowlevel = getattr(server, "_mcp_server", None) or getattr(server, "_lowlevel_server", None)
    name = getattr(server, "name", None) or getattr(lowlevel, "name", None)
    version = getattr(server, "version", None) or getattr(lowlevel, "version", None)
    return (str(name) if name else None), (str(version) if version else None)


def instrument(
    server: Any,
    *,
    url: str | None = None,
    stream: str | None = None,
    mcp_id: str | None = None,
    spool_dir: str | os.PathLike[str] | Literal[False] | None = None,
    spool_max_bytes: int | None = None,
    spool_full_policy: FullPolicy | None = None,
    max_record_bytes: int | None = None,
    record_all_requests: bool | None = None,
    scrub: bool | Scrubber | None = None,
    metrics_port: int | None = None,
    publisher: BackgroundPublisher | None = None,
) -> Instrumentation:
    """Record every interaction `server` serves; returns a handle with `flush(timeout_s)` and `close()`.

    `publisher` shares an existing `BackgroundPublisher` (then url, stream and the spool options are its own).
    `scrub` takes True/False or a configured `Scrubber` (extra keys, patterns, allowlist, callable). Raises
    TypeError for an unknown server object and ConfigurationError for a malformed INTERACTIONLOG_* variable.
    """
    if (existing := _handles.get(server)) is not None:
        return existing
    flavour = detect_flavour(server)
    server_name, server_version = _server_identity(server)
    owns_publisher = publisher is None
    if publisher is None:
        enabled = _env_bool("SCRUB", True) if scrub is None else bool(scrub)
        scrubber = scrub if isinstance(scrub, Scrubber) else Scrubber(enabled=enabled)
        publisher = BackgroundPublisher.from_url(
            url or _env("REDIS_URL") or DEFAULT_REDIS_URL,
            stream=stream or _env("STREAM") or DEFAULT_STREAM,
            spool_dir=spool_dir if spool_dir is not None else (Path(d) if (d := _env("SPOOL_DIR")) else None),
            spool_max_bytes=spool_max_bytes or _env_int("SPOOL_MAX_BYTES", DEFAULT_MAX_BYTES),
            spool_full_policy=spool_full_policy or _full_policy(_env("SPOOL_FULL_POLICY")),
            max_record_bytes=max_record_bytes or _env_int("MAX_RECORD_BYTES", DEFAULT_MAX_RECORD_BYTES),
            scrubber=scrubber,
            oversize="truncate",
        )
        port = metrics_port if metrics_port is not None else _env_int("CLIENT_METRICS_PORT", 0)
        if port:
            serve_metrics(publisher.registry, port)
    if record_all_requests is None:
        record_all_requests = _env_bool("RECORD_ALL_REQUESTS", False)
    recorder = Recorder(
        publisher,
        mcp_id=mcp_id or _env("MCP_ID") or server_name or "mcp-server",
        server_name=server_name,
        server_version=server_version,
        record_all_requests=record_all_requests,
    )
    uninstall = _install(flavour, server, recorder)
    handle = Instrumentation(server, flavour, recorder, publisher, uninstall, owns_publisher)
    _handles[server] = handle
    return handle


def _full_policy(value: str | None) -> FullPolicy:
    if value is None or value == "drop_newest":
        return "drop_newest"
    if value == "drop_oldest":
        return "drop_oldest"
    raise ConfigurationError(f"{ENV_PREFIX}SPOOL_FULL_POLICY must be drop_newest or drop_oldest, got {value!r}")


def _install(flavour: Flavour, server: Any, recorder: Recorder) -> Callable[[], None]:
    """Hook the recorder into the server; returns the function that takes it out again."""
    if flavour == "fastmcp":
        middleware = fastmcp_flavour.install(server, recorder)
        return lambda: fastmcp_flavour.uninstall(server, middleware)
    if flavour == "mcp-v2":
        v2_middleware = sdk_v2.install(server, recorder)
        return lambda: sdk_v2.uninstall(server, v2_middleware)
    lowlevel = server if isinstance(getattr(server, "request_handlers", None), dict) else server._mcp_server
    handlers = sdk_v1.install(lowlevel, recorder)
    return lambda: sdk_v1.uninstall(lowlevel, handlers)
