"""The one rooted error hierarchy of interactionlog.

Two families matter to the worker: a `PermanentEntryError` means this stream entry can never be stored (it is
dead-lettered and acknowledged); a `TransientError` means Redis or PostgreSQL is away (retried with backoff and
never acknowledged). Publishers see `InvalidRecordError`, `RecordTooLargeError` and `PublishUnavailableError`.
"""

from __future__ import annotations


class InteractionlogError(Exception):
    """Base class of every error interactionlog raises on purpose."""


class ConfigurationError(InteractionlogError):
    """A setting is missing or wrong; raised at start-up, naming the setting."""


class PublishError(InteractionlogError):
    """A record could not be published."""


class InvalidRecordError(PublishError, ValueError):
    """A record fails validation; the message names every offending field."""


class RecordTooLargeError(PublishError, ValueError):
    """A record's encoded size exceeds the configured cap."""


class PublishUnavailableError(PublishError, ConnectionError):
    """Redis did not answer within the publisher's bounded wait; the record may not be in the stream."""


class PermanentEntryError(InteractionlogError):
    """A stream entry that can never be stored; it is dead-lettered with `reason` and acknowledged."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransientError(InteractionlogError):
    """Redis or PostgreSQL is unreachable or restarting; the work is retried and nothing is acknowledged."""

    component = "unknown"


class RedisUnavailableError(TransientError):
    """Redis refused, dropped or timed out a command."""

    component = "redis"


class DatabaseUnavailableError(TransientError):
    """PostgreSQL is unreachable, restarting, or cannot take the batch right now."""

    component = "postgres"


class AttemptAbandonedError(DatabaseUnavailableError):
    """A persist attempt outlived its allowance (a half-open connection) and was abandoned as hung."""


class PartitioningError(InteractionlogError):
    """interaction_logs cannot be partitioned, converted or maintained as asked; the message says what to do."""
