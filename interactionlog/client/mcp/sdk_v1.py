"""The official `mcp` SDK 1.x: each handler in the low-level `Server.request_handlers` is wrapped.

1.x has no middleware. Its low-level `Server` keeps one handler per request type in `request_handlers`, and its
`FastMCP` registers its handlers there too (`FastMCP._mcp_server`). The dict is replaced by one that wraps
every handler stored in it, so handlers registered after `instrument()` (decorators run later) are wrapped as
well. Inside a handler, `request_ctx` (a context variable of the SDK) holds the request id, the session (with
the client's `initialize` params) and, on HTTP, the Starlette request. 1.x's `call_tool` decorator turns a
tool's exception into a result with `isError: true`; other handlers' exceptions reach the wrapper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .core import Recorder, RequestFacts, active_trace, client_of, header_session_id, observe

Handler = Callable[[Any], Awaitable[Any]]


def _request_context() -> Any:
    try:
        from mcp.server.lowlevel import server  # noqa: PLC0415 - the SDK is an optional extra
    except ImportError:
        return None
    request_ctx = getattr(server, "request_ctx", None)  # 1.x only: 2.x passes the context to handlers instead
    return request_ctx.get(None) if request_ctx is not None else None


class _Wrapped:
    """A request handler that records what it served, then answers exactly as the handler did."""

    def __init__(self, handler: Handler, recorder: Recorder) -> None:
        self.handler = handler
        self.recorder = recorder

    async def __call__(self, request: Any) -> Any:
        method = getattr(request, "method", "")
        if not self.recorder.wants(method):
            return await self.handler(request)
        return await observe(self.recorder, method, lambda: self.handler(request),
                             lambda result, error: self._facts(request, result, error))  # fmt: skip

    def _facts(self, request: Any, result: Any, error: BaseException | None) -> RequestFacts:
        context = _request_context()
        session = getattr(context, "session", None)
        http = getattr(context, "request", None)
        params = getattr(request, "params", None)
        meta = getattr(params, "meta", None)
        trace_id, span_id = active_trace(meta.model_extra if meta is not None and meta.model_extra else meta)
        client_name, client_version = client_of(session)
        client_params = getattr(session, "client_params", None)
        session_id = header_session_id(http) or (self.recorder.stdio_session_id if http is None else None)
        return RequestFacts(
            method=request.method,
            params=params,
            result=getattr(result, "root", result),  # ServerResult wraps the method's own result
            error=error,
            request_id=getattr(context, "request_id", None),
            session_id=session_id,
            client_name=client_name,
            client_version=client_version,
            protocol_version=getattr(client_params, "protocolVersion", None),
            transport="tcp" if http is not None else "pipe",
            trace_id=trace_id,
            span_id=span_id,
        )


class InstrumentedHandlers(dict[type, Handler]):
    """`Server.request_handlers` whose every stored handler is wrapped (once) to record what it serves."""

    def __init__(self, handlers: dict[type, Handler], recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        for request_type, handler in handlers.items():
            self[request_type] = handler

    def __setitem__(self, request_type: type, handler: Handler) -> None:
        if not isinstance(handler, _Wrapped):
            handler = _Wrapped(handler, self.recorder)
        super().__setitem__(request_type, handler)

    def originals(self) -> dict[type, Handler]:
        """The handlers as registered, unwrapped."""
        return {key: value.handler if isinstance(value, _Wrapped) else value for key, value in self.items()}


def install(server: Any, recorder: Recorder) -> InstrumentedHandlers:
    """Wrap the handlers of a 1.x low-level `Server` (for a 1.x `FastMCP`, pass its `_mcp_server`)."""
    handlers = InstrumentedHandlers(server.request_handlers, recorder)
    server.request_handlers = handlers
    return handlers


def uninstall(server: Any, handlers: InstrumentedHandlers) -> None:
    """Put the unwrapped handlers back."""
    if server.request_handlers is handlers:
        server.request_handlers = handlers.originals()
