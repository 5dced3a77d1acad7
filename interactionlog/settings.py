"""One frozen settings object, validated once at start-up; every field is a flag and an environment variable.

The click options of each command are generated from the fields below (`--batch-size`,
`INTERACTIONLOG_BATCH_SIZE`), so a setting is declared once, with its default, bounds and help text.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import click
import psycopg.conninfo
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from redis.connection import parse_url

from .clusters import is_sentinel, parse_sentinel_url
from .errors import ConfigurationError
from .redact import redact_text, secrets_in
from .shards import Layout, layouts

ENV_PREFIX = "INTERACTIONLOG_"

# Defaults the publishers share with the worker's settings; Settings below is their one other reader.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_STREAM = "interactions"
DEFAULT_STREAM_MAXLEN = 1_000_000
DEFAULT_MAX_RECORD_BYTES = 256 * 1024
DEFAULT_SHARDS = 1
# A record republished with the same interaction_id within this many hours of a stored copy is stored once.
DEFAULT_DEDUPE_WINDOW_HOURS = 24.0


def _default_consumer_prefix() -> str:
    # host and pid make a consumer recognisable in XINFO CONSUMERS and unique per process.
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseModel):
    """Everything the worker and the operator commands need, validated together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        description="Redis URL (redis://, rediss:// or unix://; any node of a Redis Cluster; "
        "redis+sentinel://host:port[,host:port]/service_name behind Sentinel).",
    )
    database_url: str = Field(
        "postgresql://localhost:5432/",
        description="PostgreSQL URL or conninfo; libpq defaults and PG* variables fill in what it omits.",
    )
    stream: str = Field(DEFAULT_STREAM, min_length=1, description="Stream the publishers XADD to.")
    group: str = Field("interactionlog", min_length=1, description="Consumer group the workers read in.")
    dead_letter_stream: str = Field("", description="Dead-letter stream; empty means '<stream>:dlq'.")
    shards: int = Field(
        DEFAULT_SHARDS,
        ge=1,
        le=256,
        description="Streams the records are spread over, by a hash of mcp_id (README: Redis Cluster and shards); "
        "publishers, gateways and workers must agree.",
    )
    drain_shards: str = Field(
        "",
        pattern=r"^\s*(\d+\s*(,\s*\d+\s*)*)?$",
        description="Workers also consume the streams of these earlier shard counts (comma-separated) until they "
        "are empty, while the shard count changes.",
    )
    wait_replicas: int = Field(
        0,
        ge=0,
        description="After each publish, WAIT until this many replicas have the entries (0: do not wait).",
    )
    wait_timeout_ms: int = Field(
        100, ge=1, description="Longest WAIT for --wait-replicas; a publish not replicated by then raises."
    )
    stream_maxlen: int = Field(
        DEFAULT_STREAM_MAXLEN, ge=1, description="Approximate MAXLEN cap applied by XADD (publish and dlq replay)."
    )
    dead_letter_maxlen: int = Field(
        100_000,
        ge=1,
        description="Approximate cap of the dead-letter stream; dead letters it removes are counted and alerted.",
    )
    max_record_bytes: int = Field(DEFAULT_MAX_RECORD_BYTES, ge=1024, description="Largest encoded record accepted.")
    batch_size: int = Field(1000, ge=1, le=100_000, description="Entries read and stored per batch.")
    batch_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes of entry data per batch, whatever their count: with --concurrency it bounds the "
        "worker's memory (about 2.5 x concurrency x this at most).",
    )
    concurrency: int = Field(2, ge=1, le=256, description="Consumers (asyncio tasks) in this process.")
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes on this host, supervised, behind one metrics port (a process uses one core).",
    )
    block_ms: int = Field(1000, ge=1, le=60_000, description="How long one XREADGROUP waits for new entries.")
    redis_timeout_s: float = Field(
        5.0, gt=0, description="Redis connect timeout, and the socket timeout on top of block_ms."
    )
    claim_idle_ms: int = Field(
        30_000, ge=100, description="A pending entry idle this long is claimed from its (crashed) consumer."
    )
    claim_interval_ms: int = Field(5_000, ge=100, description="How often each consumer runs the XAUTOCLAIM sweep.")
    max_deliveries: int = Field(
        5, ge=1, description="An entry delivered more often than this is dead-lettered as a poison entry."
    )
    housekeeping_interval_ms: int = Field(
        10_000,
        ge=100,
        description="How often to trim acknowledged entries, count trim losses, drop departed consumers.",
    )
    consumer_idle_timeout_ms: int = Field(
        600_000, ge=1_000, description="A consumer with nothing pending and idle this long is deleted from the group."
    )
    partition_interval: Literal["day", "month"] = Field(
        "month",
        description="Width of each interaction_logs partition (UTC); recorded in the database by migrate and "
        "partition-convert, which the workers then follow.",
    )
    partition_premake: int = Field(
        4, ge=1, le=400, description="Partitions kept created ahead of the current day or month."
    )
    retention_days: int = Field(
        0,
        ge=0,
        le=36_500,
        description="Drop interaction_logs partitions whose rows are all older than this many days; 0 keeps "
        "everything forever.",
    )
    dedupe_window_hours: float = Field(
        DEFAULT_DEDUPE_WINDOW_HOURS,
        ge=0,
        le=8_760,
        description="A record whose (mcp_id, interaction_id) is stored already with a timestamp this many hours "
        "either side of its own is skipped as a copy; 0 skips only exact copies (same timestamp too).",
    )
    retry_max_backoff_s: float = Field(
        10.0, gt=0, description="Longest wait between retries while Redis or PostgreSQL is away."
    )
    shutdown_timeout_s: float = Field(
        25.0, gt=0, description="On SIGTERM, how long to finish the batch in flight before giving up."
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port for /metrics; 0 disables it.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the metrics server binds; 0.0.0.0 (or ::) to let Prometheus scrape it from elsewhere.",
    )
    metrics_interval_s: float = Field(
        15.0, ge=0.1, description="How often the stream gauges are refreshed (one replica reads Redis per interval)."
    )
    consumer_prefix: str = Field(
        default_factory=_default_consumer_prefix, min_length=1, description="Consumer name prefix [host-pid]."
    )
    scrub_payloads: Literal["on", "off"] = Field(
        "on", description="Scrub secrets out of record payloads before storing them (see interactionlog.scrub)."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        try:
            if is_sentinel(value):
                parse_sentinel_url(value)
            else:
                parse_url(value)  # type: ignore[no-untyped-call]  # redis-py leaves this helper untyped
        except ValueError as error:
            raise ValueError(
                f"not a Redis URL ({error}); use redis://[[user]:password@]host:port/db, or "
                "redis+sentinel://host:port[,host:port]/service_name"
            ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            psycopg.conninfo.conninfo_to_dict(value)
        except psycopg.ProgrammingError as error:
            raise ValueError(f"not a PostgreSQL URL or conninfo ({error})") from None
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        if self.batch_max_bytes < self.max_record_bytes:
            raise ValueError(
                f"batch_max_bytes ({self.batch_max_bytes}) must be at least max_record_bytes "
                f"({self.max_record_bytes}), or a batch could not hold one record of the largest size"
            )
        try:
            self.layouts  # noqa: B018 - validates the stream name against the shard count
        except ConfigurationError as error:
            raise ValueError(str(error)) from None
        if self.claim_idle_ms <= self.block_ms:
            raise ValueError(
                f"claim_idle_ms ({self.claim_idle_ms}) must exceed block_ms ({self.block_ms}), or live "
                "consumers would have their entries claimed while they wait"
            )
        return self

    @property
    def dead_letter_stream_key(self) -> str:
        """The dead-letter stream's key: `dead_letter_stream`, or `<stream>:dlq` when that is empty."""
        return self.dead_letter_stream or f"{self.stream}:dlq"

    @property
    def layouts(self) -> list[Layout]:
        """The shard layout publishers write (first), then the earlier ones workers still drain."""
        counts = [int(count) for count in self.drain_shards.split(",") if count.strip()]
        return layouts(self.stream, self.shards, self.dead_letter_stream, counts)

    @property
    def secrets(self) -> set[str]:
        """The secrets the connection URLs carry, for masking in logs and errors (`redact.secrets_in`)."""
        return secrets_in(self.redis_url) | secrets_in(self.database_url)

    @property
    def redis_socket_timeout_s(self) -> float:
        """Socket timeout for Redis: always longer than a blocking read, so BLOCK never looks like a hang."""
        return self.block_ms / 1000 + self.redis_timeout_s


# Settings only publishers use (`publish`, `serve`, `dlq replay`): `worker` has no flag for them.
PUBLISHER_ONLY_FIELDS = ("wait_replicas", "wait_timeout_ms", "stream_maxlen")
WORKER_FIELDS = tuple(field for field in Settings.model_fields if field not in PUBLISHER_ONLY_FIELDS)

# SQLSTATEs of a connection refused for who is connecting to what: invalid authorization (28000), no such
# database (3D000). A refused connection usually carries no SQLSTATE in psycopg, so the server's words count too.
_WRONG_ROLE_OR_DATABASE = ("28000", "3D000")
_NO_SUCH_ROLE_OR_DATABASE = re.compile(r'\b(role|database) ".*" does not exist')


def with_database_url_hint(message: str, error: BaseException) -> str:
    """`message`, and on a second line what to do when PostgreSQL refused a connection for a role or database
    that does not exist (`error`, or the error it was raised from). The usual cause is the default URL: libpq then
    connects as the OS user, to a database of the same name (README, Quick start)."""
    cause = error.__cause__ or error
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate not in _WRONG_ROLE_OR_DATABASE and not _NO_SUCH_ROLE_OR_DATABASE.search(str(cause)):
        return message
    return message + (
        f"\nhint: give the role and database to use with {flag_name('database_url')} or {env_name('database_url')} "
        "(postgresql://USER:PASSWORD@HOST:5432/DBNAME); without them libpq connects as your OS user to a "
        'database of the same name, which a local PostgreSQL gets with `sudo -u postgres createuser -s "$USER" '
        '&& sudo -u postgres createdb "$USER"`'
    )


def flag_name(field: str) -> str:
    """The command-line flag of a settings field: `batch_size` -> `--batch-size`."""
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    """The environment variable of a settings field: `batch_size` -> `INTERACTIONLOG_BATCH_SIZE`."""
    return ENV_PREFIX + field.upper()


_M = TypeVar("_M", bound=BaseModel)


def load_settings(values: dict[str, Any]) -> Settings:
    """Validate `values` (from click) into Settings, or raise ConfigurationError naming flag and variable."""
    return validate_settings(Settings, values)


def validate_settings(model: type[_M], values: dict[str, Any]) -> _M:
    """Validate `values` (from click) into `model` (Settings, or another command's settings built the same
    way), or raise ConfigurationError naming flag and variable; None values take the model's default."""
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            if item["loc"]:
                field = str(item["loc"][0])
                where = f"{flag_name(field)} / {env_name(field)}"
                value = "***" if field.endswith("_url") else repr(item["input"])
                problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')} (got {value})")
            else:
                problems.append(item["msg"].removeprefix("Value error, "))
        # A driver refusing a URL may quote it, password included.
        urls = [str(v) for k, v in values.items() if k.endswith("_url") and v]
        raise ConfigurationError(redact_text("invalid settings: " + "; ".join(problems), *urls)) from None


_F = TypeVar("_F", bound=Callable[..., Any])

_CLICK_TYPES: dict[Any, Any] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def settings_options(*fields: str, model: type[BaseModel] = Settings) -> Callable[[_F], _F]:
    """Click options for the named fields of `model`; values arrive as keyword arguments of the same names."""

    def decorate(command: _F) -> _F:
        for field in reversed(fields):
            info = model.model_fields[field]
            annotation = info.annotation
            choices = getattr(annotation, "__args__", None)
            kind = click.Choice(list(choices)) if choices else _CLICK_TYPES[annotation]
            command = click.option(
                flag_name(field),
                field,
                type=kind,
                envvar=env_name(field),
                default=None,  # None means "the Settings default", so defaults live in one place
                show_envvar=True,
                help=f"{info.description} [default: {_describe_default(model, field)}]",
            )(command)
        return command

    return decorate


def _describe_default(model: type[BaseModel], field: str) -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        return "host-pid" if field == "consumer_prefix" else "computed"
    default = info.default
    return repr(default) if default == "" else str(default)
