"""What a gateway answers for each record, and how a transport turns those answers into ids or one error.

The `error_type` words are shared with the gateway (which imports them from here): the worker's reasons for a
record that can never be stored, plus the gateway's own. Two of them are transient: the record was not
accepted *this time*, and sending it again later is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import PublishError, PublishUnavailableError

FORBIDDEN = "forbidden"  # the record's mcp_id is not the token's
UNAVAILABLE = "unavailable"  # Redis did not confirm the XADD: the record may or may not be in the stream
BACKLOG = "backlog"  # the stream's backlog is over the gateway's threshold: nothing was added
TRANSIENT_ERROR_TYPES = frozenset({UNAVAILABLE, BACKLOG})

_LISTED = 5  # refusals named in one error message; the rest are counted


@dataclass(frozen=True)
class Outcome:
    """One record's answer: accepted as `entry_id`, or refused with `error_type` and `message`."""

    index: int
    entry_id: str | None
    error_type: str = ""
    message: str = ""
    interaction_id: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the record's XADD was confirmed."""
        return self.entry_id is not None


def settle(outcomes: Sequence[Outcome], sent: int, where: str) -> list[str]:
    """The entry ids when every one of `sent` records was accepted; otherwise raise.

    `PublishUnavailableError` when any refusal is transient (sending the whole batch again is safe: accepted
    records are stored once), else `PublishError` naming the refused records and why.
    """
    if len(outcomes) != sent:
        raise PublishUnavailableError(f"{where} answered for {len(outcomes)} of {sent} records; send them again")
    refused = [outcome for outcome in outcomes if not outcome.accepted]
    if not refused:
        return [outcome.entry_id for outcome in outcomes if outcome.entry_id is not None]
    listed = "; ".join(
        f"record {outcome.index} [{outcome.error_type}]: {outcome.message}" for outcome in refused[:_LISTED]
    )
    more = f" (and {len(refused) - _LISTED} more)" if len(refused) > _LISTED else ""
    summary = f"{where} refused {len(refused)} of {sent} records: {listed}{more}"
    if any(outcome.error_type in TRANSIENT_ERROR_TYPES for outcome in refused):
        raise PublishUnavailableError(
            f"{summary}; the others may be stored: send them again with the same interaction_id, stored once"
        )
    raise PublishError(summary)
