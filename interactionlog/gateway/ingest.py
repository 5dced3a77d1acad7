"""The core both gateways share: admit each record, XADD the admitted ones through the publisher, answer each.

A record is accepted only once Redis confirmed its XADD: the answer is built from the publisher's entry ids, so
a 202 (or a gRPC `success`) means the record is durable in Redis. When Redis does not confirm, every admitted
record of the call is answered `unavailable` (it may or may not be in the stream; the same interaction_id sent
again is stored once). Logged per call: counts and reasons only, never a record's values (they may hold
secrets, and error messages quote them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from ..client.publisher import AsyncPublisher
from ..client.transports.outcomes import BACKLOG, UNAVAILABLE, Outcome
from ..errors import PublishError, PublishUnavailableError
from .admission import Admitted, admit
from .backlog import BacklogGuard
from .metrics import GatewayMetrics
from .tokens import Principal

log = structlog.get_logger(__name__)

PIPELINE_RECORDS = 1000  # XADDs per round trip: bounds one pipeline's memory for a large body


@dataclass(frozen=True)
class Submitted:
    """One record as a gateway received it: its JSON text and, from gRPC, the fields beside it."""

    data: bytes
    envelope: Mapping[str, str] | None = None


class Ingest:
    """Admission, publishing and answering, for any number of records per call."""

    def __init__(
        self,
        publisher: AsyncPublisher,
        guard: BacklogGuard,
        metrics: GatewayMetrics,
        *,
        max_record_bytes: int,
        retry_after_s: int,
    ) -> None:
        self.publisher = publisher
        self.guard = guard
        self.metrics = metrics
        self.max_record_bytes = max_record_bytes
        self.retry_after_s = retry_after_s

    def backlog(self) -> str | None:
        """Why records must wait (429), or None."""
        return self.guard.over()

    async def submit(
        self,
        records: Sequence[Submitted],
        principal: Principal | None,
        transport: str,
        *,
        first_index: int = 0,
        exact_identity: bool = False,
    ) -> list[Outcome]:
        """One answer per record, in order, indexed from `first_index`; `exact_identity` as `admission.admit`."""
        started = time.perf_counter()
        mcp_id = principal.mcp_id if principal else None
        outcomes: list[Outcome | None] = [None] * len(records)
        admitted: list[tuple[int, Admitted]] = []
        for position, record in enumerate(records):
            verdict = admit(
                record.data,
                max_record_bytes=self.max_record_bytes,
                mcp_id=mcp_id,
                envelope=record.envelope,
                exact_identity=exact_identity,
            )
            if isinstance(verdict, Admitted):
                admitted.append((position, verdict))
            else:
                outcomes[position] = Outcome(
                    first_index + position, None, verdict.error_type, verdict.message, verdict.interaction_id
                )
        backlog = self.backlog() if admitted else None
        for start in range(0, len(admitted), PIPELINE_RECORDS):
            chunk = admitted[start : start + PIPELINE_RECORDS]
            failure = backlog or await self._publish(chunk, outcomes, first_index)
            if failure is not None:
                error_type, message = (BACKLOG, failure) if backlog else (UNAVAILABLE, failure)
                for position, verdict in admitted[start:]:
                    outcomes[position] = Outcome(
                        first_index + position, None, error_type, message, verdict.interaction_id
                    )
                break
        answered = [outcome for outcome in outcomes if outcome is not None]
        self._count(answered, principal, transport, time.perf_counter() - started)
        return answered

    async def _publish(
        self, chunk: Sequence[tuple[int, Admitted]], outcomes: list[Outcome | None], first_index: int
    ) -> str | None:
        """XADD one chunk; fills its outcomes, or returns why Redis did not confirm it."""
        try:
            entry_ids = await self.publisher.publish_encoded([verdict.fields for _, verdict in chunk])
        except PublishUnavailableError as error:
            return f"Redis did not confirm the XADD ({error}); send the record again, it is stored once"
        except PublishError as error:  # an error reply (OOM, READONLY during a failover): nothing was added
            return f"Redis refused the XADD ({error}); send the record again later"
        for (position, verdict), entry_id in zip(chunk, entry_ids, strict=True):
            outcomes[position] = Outcome(first_index + position, entry_id, interaction_id=verdict.interaction_id)
        return None

    def _count(self, outcomes: Sequence[Outcome], principal: Principal | None, transport: str, seconds: float) -> None:
        accepted = sum(outcome.accepted for outcome in outcomes)
        reasons = [outcome.error_type for outcome in outcomes if not outcome.accepted]
        self.metrics.counted(transport, accepted, reasons)
        if reasons:
            log.info(
                "records_refused",
                transport=transport,
                token_id=principal.token_id if principal else None,
                accepted=accepted,
                refused=len(reasons),
                reasons=sorted(set(reasons)),
            )
        else:
            log.debug("records_accepted", transport=transport, accepted=accepted, ms=round(seconds * 1000, 2))
