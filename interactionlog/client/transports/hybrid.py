"""The hybrid transport: an ordered list of transports, each batch going to the first one that is healthy.

Health comes from one `CircuitBreaker` per member, never from probing on every call: a member whose breaker is
open is skipped without touching the network until its cool-down ends, then one batch tries it again (half-open)
and its success brings traffic back. A batch that a member fails to confirm goes on to the next member at
once, so no record is refused while any member still works; when every member failed or is open, the batch
fails with `PublishUnavailableError`. A refusal (`PublishError`: an invalid record, a wrong token) is final:
the same records would be refused anywhere.

Both twins take the same decisions (`_Route`); each only makes the call, awaited or not.

Counted: the records each member delivered (`counts()`). Logged once per episode: `transport_fallback` (warning)
when records start going to a member other than the first, `transport_recovered` when they go back to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

from ...errors import PublishError, PublishUnavailableError
from ...logs import library_logger
from ...redact import redact_url
from ..breaker import CircuitBreaker
from . import AsyncTransport, Transport

log = library_logger(__name__)  # inside an MCP process: never stdout, a stdio server's protocol channel

DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_RESET_TIMEOUT_S = 5.0
_Member = TypeVar("_Member", Transport, AsyncTransport)


class _Episodes(Generic[_Member]):
    """The members, their breakers and counts, and the once-per-episode fallback log, shared by both twins;
    `names` are the members' URLs."""

    def __init__(
        self,
        members: Sequence[_Member],
        names: Sequence[str],
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
    ) -> None:
        if not names or len(members) != len(names):
            raise ValueError("a hybrid transport needs at least one member, and one name per member")
        self.members: list[_Member] = list(members)
        self.names = [redact_url(name) for name in names]
        self.breakers = [
            CircuitBreaker(failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s) for _ in names
        ]
        self._counts = dict.fromkeys(self.names, 0)
        self._lock = threading.Lock()
        self._active = 0  # the member the last delivered batch went to
        self._since = time.monotonic()
        self._diverted = 0
        self._last_errors: dict[int, str] = {}

    def candidates(self) -> Iterator[int]:
        """The members to try now, in order, asking each breaker only when its turn comes (a half-open
        breaker's `allow` books its one trial call, so it must be asked only when that call is made)."""
        return (index for index, breaker in enumerate(self.breakers) if breaker.allow())

    def delivered(self, index: int, records: int) -> None:
        """Member `index` confirmed `records`: count them, and log a change of member once."""
        self.breakers[index].succeeded()
        with self._lock:
            self._counts[self.names[index]] += records
            previous, self._active = self._active, index
            if index:
                self._diverted += records
            if index == previous:
                return
            now = time.monotonic()
            if previous == 0:
                self._since = now  # a fallback episode starts
            episode_s, diverted = round(now - self._since, 3), self._diverted
            if index == 0:
                self._diverted = 0
        if index == 0:
            log.info("transport_recovered", transport=self.names[0], after_s=episode_s, records_diverted=diverted)
        else:
            log.warning(
                "transport_fallback",
                from_transport=self.names[previous],
                to_transport=self.names[index],
                reason=self._last_errors.get(previous, ""),
            )

    def failed(self, index: int, error: PublishUnavailableError) -> None:
        """Member `index` did not confirm: its breaker counts the failure."""
        self._last_errors[index] = str(error)
        if self.breakers[index].failed():
            log.debug("transport_breaker_opened", transport=self.names[index], error=str(error))

    def refused(self, index: int) -> None:
        """Member `index` answered, with a refusal: it is healthy."""
        self.breakers[index].succeeded()

    def counts(self) -> dict[str, int]:
        """Records delivered by each member (its URL, without secrets), since the start."""
        with self._lock:
            return dict(self._counts)


class _Route:
    """One batch's way through the members: the ones to try, in order, and what each answered.

    Use as `for index in route: with route.attempt(index): return <member index's call>`, then
    `raise route.exhausted()`: a member that did not confirm is passed over, a refusal is final.
    """

    def __init__(self, episodes: _Episodes[Transport] | _Episodes[AsyncTransport], records: int) -> None:
        self.episodes = episodes
        self.records = records
        self.tried = 0
        self.last: PublishUnavailableError | None = None

    def __iter__(self) -> Iterator[int]:
        for index in self.episodes.candidates():
            self.tried += 1
            yield index

    @contextmanager
    def attempt(self, index: int) -> Iterator[None]:
        """Around member `index`'s call: a success is counted, PublishUnavailableError is swallowed (the next
        member is tried), PublishError propagates (the same records would be refused anywhere)."""
        try:
            yield
        except PublishUnavailableError as error:
            self.episodes.failed(index, error)
            self.last = error
        except PublishError:
            self.episodes.refused(index)
            raise
        else:
            self.episodes.delivered(index, self.records)

    def exhausted(self) -> PublishUnavailableError:
        """The error for a batch no member confirmed."""
        if self.last is None:
            return PublishUnavailableError(
                f"every transport is cooling down after failures ({', '.join(self.episodes.names)}); records not "
                "sent, send them again shortly"
            )
        return PublishUnavailableError(f"no transport confirmed the records ({self.tried} tried); last: {self.last}")


class HybridTransport(_Episodes[Transport]):
    """The hybrid for the sync `Publisher`; members are transports (publishers included)."""

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver through the first healthy member; see the module's docstring."""
        if not entries:
            return []
        route = _Route(self, len(entries))
        for index in route:
            with route.attempt(index):
                return self.members[index].publish_encoded(entries)
        raise route.exhausted()

    def close(self) -> None:
        """Close every member."""
        for member in self.members:
            member.close()


class AsyncHybridTransport(_Episodes[AsyncTransport]):
    """The hybrid for `AsyncPublisher`."""

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver through the first healthy member; see the module's docstring."""
        if not entries:
            return []
        route = _Route(self, len(entries))
        for index in route:
            with route.attempt(index):
                return await self.members[index].publish_encoded(entries)
        raise route.exhausted()

    async def close(self) -> None:
        """Close every member."""
        for member in self.members:
            await member.close()
