"""`retry.Abandonment`: an attempt past its bound is given up on at once, never awaited, and stops when it resumes;
within the bound its result or its own error is the caller's. The worker's batches and the postgresql:// transport
bound their PostgreSQL attempts with it (tests/test_transport_stalls.py and the fault suite drive it end to end)."""

from __future__ import annotations

import asyncio
import time

import pytest

from interactionlog.retry import Abandonment


class Hung(Exception):
    """The caller's error for an abandoned attempt."""


def test_an_attempt_past_its_bound_is_abandoned_at_once_and_stops_when_it_resumes() -> None:
    """A never-answering attempt raises the caller's error after the bound; the attempt, held meanwhile, is
    cancelled, so when its wait ends it does not go on to do the rest of its work."""
    steps: list[str] = []

    async def attempt(resume: asyncio.Event) -> str:
        await resume.wait()  # a frozen server: nothing comes back until it does
        steps.append("finished the work nobody waits for")
        return "late"

    async def scenario() -> float:
        abandonment = Abandonment()
        resume = asyncio.Event()
        started = time.monotonic()
        with pytest.raises(Hung):
            await abandonment.within(attempt(resume), 0.2, Hung)
        waited = time.monotonic() - started
        resume.set()
        await asyncio.sleep(0.05)
        return waited

    waited = asyncio.run(scenario())
    assert 0.2 <= waited < 1.0
    assert steps == []


def test_within_the_bound_the_attempts_result_and_its_own_error_reach_the_caller() -> None:
    """A quick attempt's value comes back; its exception is raised as it is, not as the caller's hung error."""

    async def value() -> int:
        await asyncio.sleep(0.01)
        return 7

    async def failing() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("refused")

    async def scenario() -> int:
        abandonment = Abandonment()
        with pytest.raises(ValueError, match="refused"):
            await abandonment.within(failing(), 1.0, Hung)
        return await abandonment.within(value(), 1.0, Hung)

    assert asyncio.run(scenario()) == 7
