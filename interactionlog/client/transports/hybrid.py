"""The hybrid transport: an ordered list of transports, each batch going to the first one that is healthy.

Health comes from one `CircuitBreaker` per member, never from probing on every call: a member whose breaker is
open is skipped without touching the network until its cool-down ends, then one batch tries it again (half-open)
and its success brings traffic back. A batch that a member fails to confirm goes on to the next member at
once, so no record is refused while any member still works; when every member failed or is open, the batch
fails with `PublishUnavailableError`. A refusal (`PublishError`: an invalid record, a wrong token) is final:
the same records would be refused anywhere.

Counted: the records each member delivered (`counts()`). Logged once per episode: `transport_fallback` (warning)
when records start going to a member other than the first, `transport_recovered` when they go back to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import structlog

from ...errors import PublishError, PublishUnavailableError
from ...redact import redact_url
from ..breaker import CircuitBreaker
from . import AsyncTransport, Transport

log = structlog.get_logger(__name__)

DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_RESET_TIMEOUT_S = 5.0


class _Episodes:
    """The members' breakers and counts, and the once-per-episode fallback log, shared by both twins."""

    def __init__(self, names: Sequence[str], *, failure_threshold: int, reset_timeout_s: float) -> None:
        if not names:
            raise ValueError("a hybrid transport needs at least one member")
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

    def exhausted(self, tried: int, last: PublishUnavailableError | None) -> PublishUnavailableError:
        """The error for a batch no member confirmed."""
        if last is None:
            return PublishUnavailableError(
                f"every transport is cooling down after failures ({', '.join(self.names)}); records not sent, "
                "send them again shortly"
            )
        return PublishUnavailableError(f"no transport confirmed the records ({tried} tried); last: {last}")

    def counts(self) -> dict[str, int]:
        """Records delivered by each member (its URL, without secrets), since the start."""
        with self._lock:
            return dict(self._counts)


class HybridTransport(_Episodes):
    """The hybrid for the sync `Publisher`; members are transports (publishers included)."""

    def __init__(
        self,
        members: Sequence[Transport],
        names: Sequence[str],
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
    ) -> None:
        super().__init__(names, failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s)
        self.members = list(members)

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver through the first healthy member; see the module's docstring."""
        if not entries:
            return []
        last: PublishUnavailableError | None = None
        tried = 0
        for index in self.candidates():
            tried += 1
            try:
                ids = self.members[index].publish_encoded(entries)
            except PublishUnavailableError as error:
                self.failed(index, error)
                last = error
                continue
            except PublishError:
                self.refused(index)
                raise
            self.delivered(index, len(entries))
            return ids
        raise self.exhausted(tried, last)

    def close(self) -> None:
        """Close every member."""
        for member in self.members:
            member.close()


class AsyncHybridTransport(_Episodes):
    """The hybrid for `AsyncPublisher`."""

    def __init__(
        self,
        members: Sequence[AsyncTransport],
        names: Sequence[str],
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        reset_timeout_s: float = DEFAULT_RESET_TIMEOUT_S,
    ) -> None:
        super().__init__(names, failure_threshold=failure_threshold, reset_timeout_s=reset_timeout_s)
        self.members = list(members)

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """Deliver through the first healthy member; see the module's docstring."""
        if not entries:
            return []
        last: PublishUnavailableError | None = None
        tried = 0
        for index in self.candidates():
            tried += 1
            try:
                ids = await self.members[index].publish_encoded(entries)
            except PublishUnavailableError as error:
                self.failed(index, error)
                last = error
                continue
            except PublishError:
                self.refused(index)
                raise
            self.delivered(index, len(entries))
            return ids
        raise self.exhausted(tried, last)

    async def close(self) -> None:
        """Close every member."""
        for member in self.members:
            await member.close()
