"""The circuit breaker's state machine, on a fake clock (the breaker's own input, not a mocked dependency)."""

from __future__ import annotations

import pytest

from interactionlog.client.breaker import CircuitBreaker


class Clock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_the_threshold_of_consecutive_failures_and_refuses_calls() -> None:
    """Fewer failures than the threshold keep it closed; reaching it opens the breaker and refuses calls."""
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5, clock=Clock())
    assert breaker.failed() is False
    assert breaker.failed() is False
    assert breaker.allow()
    assert breaker.failed() is True
    assert str(breaker.state) == "open"
    assert not breaker.allow()


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    """Failures separated by a success never add up to the threshold."""
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout_s=5, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    assert breaker.failed() is False
    assert str(breaker.state) == "closed"


def test_after_the_cool_down_exactly_one_trial_call_is_let_through() -> None:
    """Half-open admits one caller; its success closes the breaker, and everyone may call again."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    breaker.failed()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert str(breaker.state) == "half_open"
    assert breaker.allow()
    assert not breaker.allow(), "a second caller must wait for the trial's outcome"
    breaker.succeeded()
    assert str(breaker.state) == "closed"
    assert breaker.allow()


def test_a_failed_trial_opens_the_breaker_for_another_full_cool_down() -> None:
    """The trial's failure re-opens the breaker, counted from the trial, not from the first opening."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=clock)
    breaker.failed()
    clock.now += 6
    assert breaker.allow()
    assert breaker.failed() is True
    clock.now += 4
    assert str(breaker.state) == "open"
    clock.now += 1.5
    assert str(breaker.state) == "half_open"


@pytest.mark.parametrize(("threshold", "timeout_s"), [(0, 1.0), (1, 0.0)])
def test_nonsense_settings_are_refused(threshold: int, timeout_s: float) -> None:
    """A threshold under 1 or a non-positive cool-down is a ValueError, not a breaker that never closes."""
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failure_threshold=threshold, reset_timeout_s=timeout_s)
