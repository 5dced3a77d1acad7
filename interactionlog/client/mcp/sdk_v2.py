"""The official `mcp` SDK 2.x: a `ServerMiddleware` on `Server.middleware` (which `MCPServer.middleware` is too).

The middleware runs inside the SDK's own OpenTelemetry middleware, so the active span is the SDK's server span
for the request. It sees raw params (`ctx.params`) and the result already in its wire form (a dict), and a
failing request as the exception it raises (`MCPError`, a validation error, or a handler's own exception).
"""

from __future__ import annotations

from typing import Any

from .core import Recorder, RequestFacts, active_trace, client_of, header_session_id, observe


class InteractionlogMiddleware:
    """`(ctx, call_next) -> result` middleware that records each request the recorder wants."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        """Run the rest of the chain and record the outcome; the outcome itself is passed on as is."""
        if ctx.request_id is None or not self.recorder.wants(ctx.method):  # a notification, or not recorded
            return await call_next(ctx)
        return await observe(self.recorder, ctx.method, lambda: call_next(ctx),
                             lambda result, error: self._facts(ctx, result, error))  # fmt: skip

    def _facts(self, ctx: Any, result: Any, error: BaseException | None) -> RequestFacts:
        params = ctx.params
        meta = params.get("_meta") if isinstance(params, dict) else None
        trace_id, span_id = active_trace(meta)
        request = ctx.request  # the Starlette request on HTTP, None on stdio
        connection = getattr(ctx.session, "_connection", None)  # the SDK keeps the transport's id there
        session_id = header_session_id(request) or getattr(connection, "session_id", None)
        if session_id is None and request is None:
            session_id = self.recorder.stdio_session_id
        client_name, client_version = client_of(ctx.session)
        return RequestFacts(
            method=ctx.method,
            params=params,
            result=result,
            error=error,
            request_id=ctx.request_id,
            session_id=session_id,
            client_name=client_name,
            client_version=client_version,
            protocol_version=ctx.protocol_version,
            transport="tcp" if request is not None else "pipe",
            trace_id=trace_id,
            span_id=span_id,
        )


def install(server: Any, recorder: Recorder) -> InteractionlogMiddleware:
    """Append the middleware to `server.middleware` (a low-level `Server` or an `MCPServer`)."""
    middleware = InteractionlogMiddleware(recorder)
    server.middleware.append(middleware)
    return middleware


def uninstall(server: Any, middleware: InteractionlogMiddleware) -> None:
    """Take the middleware out of the chain again."""
    if middleware in server.middleware:
        server.middleware.remove(middleware)
