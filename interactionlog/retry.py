"""Retrying through outages: jittered backoff, logging an outage once rather than per retry, and the two loop
shapes every retry in the worker takes (`until_done` for one piece of work, `periodically` for a chore).

Considered and not taken: tenacity and stamina. Both retry a call well, but what the worker needs around the
call is its own: a wait that a stop event interrupts, one outage log shared by every consumer of a process, no
attempt limit (giving up would only mean re-reading the same batch), and a hung attempt retried at once. Each
library would take a wrapper as long as this module to say that.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from .errors import AttemptAbandonedError, InteractionlogError, TransientError
from .settings import with_database_url_hint

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class Abandonment:
    """Attempts awaited for at most a bound, then abandoned: no longer awaited, but kept referenced until they end.

    A half-open connection (a frozen server, a silent network partition) never fails, it just never answers, so
    its caller must give up on it itself; awaiting a cancelled psycopg operation would wait on the same dead
    server. So an attempt past its bound is cancelled (taking effect whenever the server answers again: the
    attempt then stops rather than finishing work nobody waits for) and left to end on its own, its connection
    with it; the caller retries on another. Its outcome, when it comes, is retrieved and logged at debug level: the
    caller was already told. Used by `worker.store.Store.persist_batch_within` and the `postgresql://` transport.
    """

    def __init__(self) -> None:
        self._held: set[asyncio.Future[Any]] = set()

    async def within(self, work: Awaitable[_T], timeout_s: float, hung: Callable[[], Exception]) -> _T:
        """The result of `work` (an awaitable, run as a task) if it ends within `timeout_s` seconds, its exception
        raised as it is; otherwise `hung()` is raised and the attempt abandoned."""
        attempt = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
        if attempt in done:
            return attempt.result()
        attempt.cancel()
        self._held.add(attempt)
        attempt.add_done_callback(self._forget)
        raise hung()

    def _forget(self, attempt: asyncio.Future[Any]) -> None:
        self._held.discard(attempt)
        if not attempt.cancelled() and attempt.exception() is not None:
            log.debug("abandoned_attempt_failed", error=str(attempt.exception()))


class StoppedError(InteractionlogError):
    """The stop event was set while waiting to retry; the work was not done."""


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
    _refusals: dict[str, str] = field(default_factory=dict)  # the refusal last said at error level, per component

    def failed(self, error: TransientError, **context: object) -> None:
        """Record a failure; logs `dependency_unavailable` only for the first failure of an outage, and
        `dependency_refusing` once for each distinct refusal (`error.refusal`: the dependency answered "no",
        and the message says what to do)."""
        component = error.component
        first = component not in self._since
        if first:
            self._since[component] = time.monotonic()
        if error.refusal and self._refusals.get(component) != str(error):
            self._refusals[component] = str(error)
            log.error("dependency_refusing", component=component, error=str(error), **context)
        elif first:
            log.error("dependency_unavailable", component=component, error=str(error), **context)
        else:
            log.debug("dependency_retry_failed", component=component, error=str(error), **context)

    def succeeded(self, component: str) -> None:
        """Record a success; logs `dependency_recovered` when it ends an outage."""
        self._refusals.pop(component, None)
        started = self._since.pop(component, None)
        if started is not None:
            log.warning("dependency_recovered", component=component, outage_s=round(time.monotonic() - started, 3))

    def is_down(self, component: str) -> bool:
        """Whether the last call to `component` failed."""
        return component in self._since


async def sleep_unless_stopped(delay_s: float, stopping: asyncio.Event | None) -> None:
    """Sleep `delay_s` seconds, waking early when `stopping` is set."""
    if stopping is None:
        await asyncio.sleep(delay_s)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=delay_s)


async def until_done(
    attempt: Callable[[], Awaitable[_T]],
    *,
    failed: Callable[[TransientError], None],
    max_backoff_s: float,
    stopping: asyncio.Event | None = None,
) -> _T:
    """Await `attempt()` until it succeeds, calling `failed` with each `TransientError` it raises.

    Waits with full-jitter backoff between attempts, except after an `AttemptAbandonedError` (the attempt
    already waited its full allowance). Other errors propagate. Raises `StoppedError` once `stopping` is set.
    """
    backoff = Backoff(max_s=max_backoff_s)
    while True:
        if stopping is not None and stopping.is_set():
            raise StoppedError("stopped before the work was done")
        try:
            return await attempt()
        except AttemptAbandonedError as error:
            failed(error)
        except TransientError as error:
            failed(error)
            await sleep_unless_stopped(backoff.next_delay(), stopping)


async def periodically(
    chore: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    name: str,
    stopping: asyncio.Event | None = None,
    expected: tuple[type[BaseException], ...] = (TransientError,),
) -> None:
    """Run `chore` every `interval_s` until `stopping` is set (or the task is cancelled).

    An `expected` failure (a dependency away) is logged once per episode at warning level as
    `<name>_failing`, with `<name>_recovered` when a round succeeds again; anything else is a bug, logged with
    its traceback as `<name>_crashed`. Either way the next round runs on time.
    """
    failing = False
    while stopping is None or not stopping.is_set():
        try:
            await chore()
        except expected as error:
            raise_if_cancelling(error)
            if not failing:
                log.warning(f"{name}_failing", error=with_database_url_hint(str(error) or type(error).__name__, error))
            failing = True
        except Exception as error:
            raise_if_cancelling(error)
            log.exception(f"{name}_crashed")
        else:
            if failing:
                log.info(f"{name}_recovered")
            failing = False
        raise_if_cancelling()
        await sleep_unless_stopped(interval_s, stopping)


def raise_if_cancelling(error: BaseException | None = None) -> None:
    """Raise CancelledError when this task is being cancelled, whatever became of the cancellation: redis-py,
    cancelled mid-command, can raise a connection error instead, and Python 3.11's `asyncio.wait_for` (inside
    redis-py) swallows a cancellation that races with its own completion (CPython gh-86296, fixed in 3.12).
    A loop that missed it would run on forever and hang the shutdown that cancelled it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error
