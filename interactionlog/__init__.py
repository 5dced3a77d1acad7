"""interactionlog: record every MCP server interaction through Redis Streams into PostgreSQL, exactly once.

Publishers need only `Publisher` (or `AsyncPublisher`) and, optionally, the `Interaction` model.
"""

from .errors import (
    InteractionlogError,
    InvalidRecordError,
    PublishError,
    PublishUnavailableError,
    RecordTooLargeError,
)
from .model import ClientInfo, Interaction
from .publish import AsyncPublisher, Publisher

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
