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


class WrongKeyTypeError(ConfigurationError):
    """A key the worker needs as a stream holds another type (a string, a hash); names the key."""

    def __init__(self, key: str, role: str) -> None:
        super().__init__(
            f"the {role} key {key!r} holds a value that is not a stream (Redis: WRONGTYPE); rename or delete that "
            f"key, or choose another with the flag for the {role}"
        )
        self.key = key
        self.role = role


class PublishError(InteractionlogError):
    """A record could not be published.

    When Redis was reached or tried, the error carries what was being sent: `interaction_ids` (one per record,
    in order; generated ones included) and `entries` (the stream entries' fields, exactly as sent). Publishing
    the same entries again (`publish_encoded(error.entries)`), or the same records with those ids, stores each
    record once whatever the first attempt did.
    """

    interaction_ids: tuple[str, ...] = ()
    entries: tuple[dict[bytes, bytes], ...] = ()

    @property
    def interaction_id(self) -> str | None:
        """The interaction id of the record, when the error is about exactly one."""
        return self.interaction_ids[0] if len(self.interaction_ids) == 1 else None


class InvalidRecordError(PublishError, ValueError):
    """A record fails validation; the message names every offending field (and, for many, each record's index).

    `problems` maps the index of every bad record (0 for a single one) to what is wrong with it; `fields` holds the
    paths of the fields an encoding refusal is about (`request.args.1`), which a log may show where the message,
    which may quote values, must not be.
    """

    def __init__(self, message: str, problems: dict[int, str] | None = None, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else {0: message}
        self.fields = fields


class RecordTooLargeError(PublishError, ValueError):
    """A record's encoded size exceeds the configured cap."""


class PublishUnavailableError(PublishError, ConnectionError):
    """Redis did not answer within the publisher's bounded wait; the record may not be in the stream."""


class PermanentEntryError(InteractionlogError):
    """A stream entry that can never be stored; it is dead-lettered with `reason` and acknowledged."""

    MAX_CHARS = 2000  # it goes into a log line and a dead letter's `error` field: never megabytes of input

    def __init__(self, reason: str, message: str) -> None:
        if len(message) > self.MAX_CHARS:
            message = f"{message[: self.MAX_CHARS - 40]}... ({len(message)} characters in all)"
        super().__init__(message)
        self.reason = reason


class TransientError(InteractionlogError):
    """Redis or PostgreSQL is unreachable or restarting; the work is retried and nothing is acknowledged."""

    component = "unknown"
    # True when the dependency answered and refused (a misconfiguration, an operator's action): retried all the
    # same, but each distinct refusal is said once at error level, since someone has to act.
    refusal = False


class RedisUnavailableError(TransientError):
    """Redis refused, dropped or timed out a command."""

    component = "redis"


class RedisRefusedError(RedisUnavailableError):
    """Redis answered with an error reply it may stop giving (OOM, READONLY, LOADING, BUSY, NOPERM, ...): the
    command was not applied; it is retried in place, without re-reading anything."""

    refusal = True


class DatabaseUnavailableError(TransientError):
    """PostgreSQL is unreachable, restarting, or cannot take the batch right now."""

    component = "postgres"


class DatabaseRefusedError(DatabaseUnavailableError):
    """PostgreSQL answers but refuses every row for a reason of its own (a missing table or column, a permission,
    a read-only database): never the rows' fault, so never dead-lettered; retried until someone fixes it."""

    refusal = True


class AttemptAbandonedError(DatabaseUnavailableError):
    """A persist attempt outlived its allowance (a half-open connection) and was abandoned as hung."""


class PartitioningError(InteractionlogError):
    """interaction_logs cannot be partitioned, converted or maintained as asked; the message says what to do."""
