"""A circuit breaker: stop calling a dependency that keeps failing, and try it again after a cool-down.

States as in Fowler's and resilience4j's description: *closed* (calls go through; `failure_threshold`
consecutive failures open it), *open* (calls are refused at once, without touching the network, for
`reset_timeout_s`), *half-open* (one trial call is let through; its success closes the breaker, its failure
opens it again for another cool-down). Thread-safe; the clock is monotonic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Decides whether a call to one dependency should be tried now; the caller reports each outcome."""

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout_s <= 0:
            raise ValueError(f"reset_timeout_s must be positive, got {reset_timeout_s}")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> State:
        """The breaker's state now (an open breaker whose cool-down has passed reads as half-open)."""
        with self._lock:
            return self._state()

    def allow(self) -> bool:
        """Whether to try the dependency now. In half-open state only one caller gets True until it reports."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return True
            return False

    def succeeded(self) -> None:
        """Report a successful call: the breaker closes and the failure count restarts."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def failed(self) -> bool:
        """Report a failed call; returns True when this failure opened (or re-opened) the breaker."""
        with self._lock:
            self._failures += 1
            was_trial = self._trial_in_flight
            self._trial_in_flight = False
            if was_trial or (self._opened_at is None and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                return True
            return False

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return "half_open"
        return "open"
