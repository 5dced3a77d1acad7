"""Structured logging: JSON lines in production, a readable console on a terminal.

Event names are past-tense snake_case (`batch_persisted`); context such as the consumer name is bound with
contextvars so every line of one consumer carries it without passing loggers around. Libraries that log
through the standard library (psycopg_pool's connection warnings) go through the same renderer, so a log
pipeline parsing JSON never meets a plain-text or multi-line record.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


class SecretScrubber:
    """A structlog processor replacing each of `secrets` by ``***`` in every text value of an event, so a
    password that reaches an error message (a driver quoting a URL it could not parse) never reaches the log."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Scrub `event` in place and return it."""
        if self.secrets:
            for key, value in event.items():
                if isinstance(value, str):
                    event[key] = self.scrub(value)
        return event

    def scrub(self, text: str) -> str:
        """`text` with every secret masked."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def configure_logging(log_format: LogFormat = "auto", level: str = "info", *, secrets: Iterable[str] = ()) -> None:
    """Configure structlog and the standard library once for the process; everything goes to stderr, with
    every one of `secrets` (from `redact.secrets_in`) masked wherever it appears."""
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    # Last before rendering: after tracebacks are formatted, so a secret in one is masked too.
    scrubber = SecretScrubber(secrets)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
            scrubber,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
                scrubber,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak at WARNING and above unless debugging: their INFO chatter is not ours to ship.
    root.setLevel(numeric_level if numeric_level <= logging.DEBUG else max(numeric_level, logging.WARNING))


def library_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for code that runs inside someone else's process (an MCP server): it writes through the standard
    library's `logging.getLogger(name)`, never to stdout, which is a stdio MCP server's protocol channel.

    The host's logging configuration decides where lines go; with none, Python's last-resort handler prints
    warnings and errors to stderr.
    """
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        logging.getLogger(name),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
    )
