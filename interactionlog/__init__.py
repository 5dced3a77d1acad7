"""interactionlog: record every MCP server interaction through Redis Streams into PostgreSQL, exactly once.

Publishers need only `Publisher` (or `AsyncPublisher`, or `BackgroundPublisher`, which never waits on the network)
and, optionally, the `Interaction` model (or `encode_fields`, which validates a record and returns its stream entry
without Redis); MCP servers need only `interactionlog.mcp.instrument`.
"""

from .client.background import BackgroundPublisher
from .client.publisher import AsyncPublisher, Publisher, encode_fields
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
    "BackgroundPublisher",
    "ClientInfo",
    "Interaction",
    "InteractionlogError",
    "InvalidRecordError",
    "PublishError",
    "PublishUnavailableError",
    "Publisher",
    "RecordTooLargeError",
    "encode_fields",
]
