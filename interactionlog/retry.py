"""Retrying through outages: jittered exponential backoff, and logging an outage once rather than per retry."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import structlog

from .errors import TransientError

log = structlog.get_logger(__name__)


@dataclass
class Backoff:
    """Full-jitter exponential backoff (AWS architecture blog), reset after a success."""

    initial_s: float = 0.05
    max_s: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; grows until `max_s`."""
        ceiling = min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from the shortest wait."""
        self.attempt = 0


@dataclass
class OutageLog:
    """Shared by every consumer of a process: each dependency's outage is logged once at error level,
    retries at debug, and the recovery once with how long it lasted."""

    _since: dict[str, float] = field(default_factory=dict)

    def failed(self, error: TransientError, **context: object) -> None:
        """Record a failure; logs `dependency_unavailable` only for the first failure of an outage."""
        component = error.component
        if component not in self._since:
            self._since[component] = time.monotonic()
            log.error("dependency_unavailable", component=component, error=str(error), **context)
        else:
            log.debug("dependency_retry_failed", component=component, error=str(error), **context)

    def succeeded(self, component: str) -> None:
        """Record a success; logs `dependency_recovered` when it ends an outage."""
        started = self._since.pop(component, None)
        if started is not None:
            log.warning("dependency_recovered", component=component, outage_s=round(time.monotonic() - started, 3))

    def is_down(self, component: str) -> bool:
        """Whether the last call to `component` failed."""
        return component in self._since
