"""The standalone `fastmcp` package: a `Middleware` whose `on_call_tool`, `on_read_resource` and `on_get_prompt`
hooks (and `on_request`, for the other requests when asked) record each request.

fastmcp hands its hooks typed params (`context.message`) and its own result objects (`ToolResult`,
`ResourceResult`, `PromptResult`); a tool's exception passes through the hooks before fastmcp turns it into a
result with `isError: true`. Results are converted to their MCP wire form on the publisher's thread.
"""

from __future__ import annotations

import base64
from typing import Any

from .core import (
    RECORDED_METHODS,
    Recorder,
    RequestFacts,
    active_trace,
    client_of,
    header_session_id,
    observe,
    to_json,
)


def _wire_result(method: str, params: Any, result: Any) -> Any:
    """fastmcp's result object in its MCP wire form (falls back to the object itself, dumped as is)."""
    if method == "tools/call" and callable(getattr(result, "to_mcp_result", None)):
        converted = result.to_mcp_result()
        if isinstance(converted, tuple):  # fastmcp 2.x: (content blocks, structured content)
            return {"content": to_json(converted[0]), "structuredContent": to_json(converted[1])}
        return {"content": to_json(converted)} if isinstance(converted, list) else converted
    if method == "resources/read" and callable(getattr(result, "to_mcp_result", None)):
        return result.to_mcp_result(getattr(params, "uri", ""))
    if method == "resources/read" and isinstance(result, list):  # fastmcp 2.x: the SDK's ReadResourceContents
        return {"contents": [_resource_contents(str(getattr(params, "uri", "")), item) for item in result]}
    if method == "prompts/get" and callable(getattr(result, "to_mcp_prompt_result", None)):
        return result.to_mcp_prompt_result()
    return result


def _resource_contents(uri: str, item: Any) -> Any:
    content = getattr(item, "content", None)
    if content is None:
        return item
    contents: dict[str, Any] = {"uri": uri, "mimeType": getattr(item, "mime_type", None)}
    if isinstance(content, bytes):
        contents["blob"] = base64.b64encode(content).decode()
    else:
        contents["text"] = content
    return {key: value for key, value in contents.items() if value is not None}


def _load_middleware_base() -> type:
    from fastmcp.server.middleware import Middleware  # noqa: PLC0415 - fastmcp is an optional extra

    return Middleware


def middleware_for(recorder: Recorder) -> Any:
    """A fastmcp `Middleware` recording through `recorder` (its class derives from fastmcp's own base)."""
    base = _load_middleware_base()

    class InteractionlogMiddleware(base):  # type: ignore[misc,valid-type]
        """Records every tools/call, resources/read and prompts/get (and, if asked, the other requests)."""

        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            return await _observe(recorder, context, call_next)

        async def on_read_resource(self, context: Any, call_next: Any) -> Any:
            return await _observe(recorder, context, call_next)

        async def on_get_prompt(self, context: Any, call_next: Any) -> Any:
            return await _observe(recorder, context, call_next)

        async def on_request(self, context: Any, call_next: Any) -> Any:
            method = context.method or ""
            if method in RECORDED_METHODS or not recorder.wants(method):
                return await call_next(context)
            return await _observe(recorder, context, call_next)

    return InteractionlogMiddleware()


async def _observe(recorder: Recorder, context: Any, call_next: Any) -> Any:
    return await observe(recorder, context.method or "?", lambda: call_next(context),
                         lambda result, error: _facts(recorder, context, result, error))  # fmt: skip


def _facts(recorder: Recorder, context: Any, result: Any, error: BaseException | None) -> RequestFacts:
    method = context.method or "?"
    params = context.message
    request_context = getattr(context.fastmcp_context, "request_context", None)
    session = getattr(request_context, "session", None)
    http = getattr(request_context, "request", None)
    meta = getattr(request_context, "meta", None)
    trace_id, span_id = active_trace(meta)
    client_name, client_version = client_of(session)
    session_id = header_session_id(http)
    if session_id is None and http is None:
        session_id = recorder.stdio_session_id
    protocol_version = getattr(request_context, "protocol_version", None)
    if protocol_version is None:  # fastmcp on the 1.x SDK: the version the client asked for
        protocol_version = getattr(getattr(session, "client_params", None), "protocolVersion", None)
    return RequestFacts(
        method=method,
        params=params,
        result=(lambda: _wire_result(method, params, result)) if error is None else None,
        error=error,
        request_id=getattr(request_context, "request_id", None),
        session_id=session_id,
        client_name=client_name,
        client_version=client_version,
        protocol_version=protocol_version,
        transport="tcp" if http is not None else "pipe",
        trace_id=trace_id,
        span_id=span_id,
    )


def install(server: Any, recorder: Recorder) -> Any:
    """Add the middleware to a fastmcp `FastMCP` server."""
    middleware = middleware_for(recorder)
    server.add_middleware(middleware)
    return middleware


def uninstall(server: Any, middleware: Any) -> None:
    """Take the middleware out again."""
    if middleware in server.middleware:
        server.middleware.remove(middleware)
