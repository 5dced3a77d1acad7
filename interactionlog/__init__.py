"""interactionlog: record every MCP server interaction through Redis Streams into PostgreSQL, exactly once.

Publishers need only `Publisher` (or `AsyncPublisher`) and, optionally, the `Interaction` model.
"""

from .client.publisher import AsyncPublisher, Publisher
from .errors import (
    InteractionlogError,
    InvalidRecordError,
    PublishError,
    PublishUnavailableError,
    RecordTooLargeError,
)
from .record import ClientInfo, Interaction

__all__ = [
    "AsyncPublisher",
    "ClientInfo",
    "Interaction",
    "InteractionlogError",
    "InvalidRecordError",
    "PublishError",
    "PublishUnavailableError",
    "Publisher",
    "RecordTooLargeError",
]
