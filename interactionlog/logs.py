"""Structured logging: JSON lines in production, a readable console on a terminal.

Event names are past-tense snake_case (`batch_persisted`); context such as the consumer name is bound with
contextvars so every line of one consumer carries it without passing loggers around. Libraries that log
through the standard library (psycopg_pool's connection warnings) go through the same renderer, so a log
pipeline parsing JSON never meets a plain-text or multi-line record.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(log_format: LogFormat = "auto", level: str = "info") -> None:
    """Configure structlog and the standard library once for the process; everything goes to stderr."""
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
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if not console else structlog.dev.set_exc_info,
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
