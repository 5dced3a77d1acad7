"""uvicorn's HTTP protocol with a deadline for the request line and headers: a slow-loris guard.

uvicorn times out idle keep-alive connections but not a request whose headers trickle in, or a connection that
never sends any, so a few thousand such clients would hold every connection slot. This protocol closes a
connection whose request line and headers are not complete within `request_timeout_s` of the connection (or of
the request's first byte). A body that trickles in is the application's to time out (408, `http.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol`, closing connections whose headers do not arrive within `timeout_s`."""

    timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, timeout_s: float) -> type[HeaderDeadlineProtocol]:
        """The protocol class to give uvicorn (it instantiates the class itself, one per connection)."""
        return type(cls.__name__, (cls,), {"timeout_s": timeout_s})

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """Start the clock for this request's headers (a keep-alive connection's next request)."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        """The headers arrived in time."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing left to time out."""
        self._disarm()
        super().connection_lost(exc)
