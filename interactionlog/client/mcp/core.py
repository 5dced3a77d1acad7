"""What every SDK flavour shares: the facts of one request, and the record built from them.

A flavour module (one per SDK) wraps the server's request path, captures `RequestFacts` in the request's own
task (timing, ids, the active trace), and hands them to `Recorder.record`, which costs an append to the
background publisher's queue. The record itself is built later, on the publisher's thread, by `build_record`:
converting results to JSON, scrubbing and encoding never run in the request path.

Record fields and their OpenTelemetry MCP semantic-convention names (the README has the table):
`method` = mcp.method.name, `tool` = gen_ai.tool.name / mcp.resource.uri / gen_ai.prompt.name, `session_id` =
mcp.session.id, `request_id` = jsonrpc.request.id; `metadata` carries mcp.protocol.version, network.transport,
error.type, and the server's name and version (mcp.server.name, mcp.server.version).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ...logs import library_logger
from ...record import format_timestamp

if TYPE_CHECKING:
    from ..background import BackgroundPublisher

log = library_logger(__name__)

# The three methods recorded by default; `record_all_requests=True` adds every other request (not
# notifications, and never `initialize` or `server/discover`, whose facts every record carries, nor `ping`).
RECORDED_METHODS = frozenset({"tools/call", "resources/read", "prompts/get"})
_NEVER = frozenset({"initialize", "ping", "server/discover"})  # the protocol's own handshake and keep-alive
_TARGET_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_MAX_TEXT = 200
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@dataclass
class RequestFacts:
    """What a flavour captured about one request, raw: params and result are SDK objects or plain JSON."""

    method: str
    params: Any
    result: Any = None
    error: BaseException | None = None
    request_id: str | int | None = None
    session_id: str | None = None
    client_name: str | None = None
    client_version: str | None = None
    protocol_version: str | None = None
    transport: str | None = None  # "pipe" (stdio) or "tcp" (HTTP), as network.transport spells them
    trace_id: str | None = None
    span_id: str | None = None
    duration_ms: float = 0.0
    started_at_ns: int = 0  # wall clock (time.time_ns) when the request reached the instrumentation


def to_json(value: Any) -> Any:
    """A JSON-able form of an SDK object: pydantic models by their wire aliases, containers walked.

    A plain dict is taken as it is: the 2.x SDK hands over params and results already in wire form, and the
    record's validation refuses anything in it that is not JSON.
    """
    if type(value) is dict:
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def describe_error(error: BaseException) -> dict[str, Any]:
    """An exception as the record's `error`: its type, message, and the JSON-RPC code and data if it has them."""
    described: dict[str, Any] = {"type": type(error).__qualname__, "message": str(error)}
    data = getattr(error, "error", None)  # the SDK's MCPError / McpError carry an ErrorData
    for name in ("code", "data"):
        if (value := getattr(data, name, None)) is not None:
            described[name] = to_json(value)
    return described


def active_trace(meta: Any) -> tuple[str | None, str | None]:
    """(trace_id, span_id) of the active OpenTelemetry span, else from `_meta.traceparent`; (None, None) if neither."""
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional: present with mcp 2.x, absent otherwise
    except ImportError:
        pass
    else:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}", f"{context.span_id:016x}"
    traceparent = meta.get("traceparent") if isinstance(meta, Mapping) else getattr(meta, "traceparent", None)
    if isinstance(traceparent, str) and (match := _TRACEPARENT.match(traceparent.strip().lower())):
        return match.group(1), match.group(2)
    return None, None


def client_of(session: Any) -> tuple[str | None, str | None]:
    """The client's name and version from the `initialize` params a session (v1 or v2 SDK) keeps."""
    params = getattr(session, "client_params", None)
    info = getattr(params, "client_info", None) or getattr(params, "clientInfo", None)
    return getattr(info, "name", None), getattr(info, "version", None)


def header_session_id(request: Any) -> str | None:
    """The `Mcp-Session-Id` header of an HTTP request (Starlette), if any."""
    headers = getattr(request, "headers", None)
    value = headers.get("mcp-session-id") if headers is not None else None
    return value if isinstance(value, str) else None


def _short(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


class Recorder:
    """Turns `RequestFacts` into records on a background publisher; never raises into the request path."""

    def __init__(
        self,
        publisher: BackgroundPublisher,
        *,
        mcp_id: str,
        server_name: str | None,
        server_version: str | None,
        record_all_requests: bool = False,
    ) -> None:
        self.publisher = publisher
        self.mcp_id = mcp_id
        self.server_name = server_name
        self.server_version = server_version
        self.record_all_requests = record_all_requests
        # stdio serves exactly one connection per process: this id is that connection's.
        self.stdio_session_id = f"stdio-{uuid.uuid4()}"
        self._failing = False

    def wants(self, method: str) -> bool:
        """Whether a request of `method` is recorded."""
        return method in RECORDED_METHODS or (self.record_all_requests and method not in _NEVER)

    def record(self, facts: RequestFacts) -> None:
        """Queue the record of `facts`; a failure here is logged once per episode and swallowed."""
        try:
            self.publisher.publish_deferred(lambda: self.build_record(facts))
        except Exception:  # the tool's result must never depend on the instrumentation
            if not self._failing:
                self._failing = True
                log.exception("instrumentation_record_failed", mcp_id=self.mcp_id, method=facts.method)
        else:
            self._failing = False

    def build_record(self, facts: RequestFacts) -> dict[str, Any]:
        """The wire record of `facts` (runs on the publisher's thread)."""
        params = to_json(facts.params) if facts.params is not None else None
        target = None
        if isinstance(params, dict):
            params = {key: value for key, value in params.items() if key != "_meta"}
            target = params.get(_TARGET_PARAM.get(facts.method, ""))
        result = facts.result() if callable(facts.result) else facts.result  # a flavour may defer its conversion
        response = to_json(result) if facts.error is None else None
        is_error = facts.error is not None or (isinstance(response, dict) and response.get("isError") is True)
        metadata: dict[str, Any] = {"mcp.server.name": self.server_name, "mcp.server.version": self.server_version,
                                    "mcp.protocol.version": facts.protocol_version,
                                    "network.transport": facts.transport}  # fmt: skip
        if facts.error is not None:
            metadata["error.type"] = type(facts.error).__qualname__
        elif is_error:
            metadata["error.type"] = "tool_error"
        client = {"name": _short(facts.client_name), "version": _short(facts.client_version)}
        record: dict[str, Any] = {
            "mcp_id": self.mcp_id,
            # The request's own time, written here, makes the record's identity exact (record.IDENTITY_FIELD):
            # the worker stores it without the dedupe window's probe.
            "timestamp": format_timestamp(datetime.fromtimestamp(facts.started_at_ns / 1e9, UTC))
            if facts.started_at_ns
            else None,
            "method": _short(facts.method),
            "tool": _short(target),
            "session_id": _short(facts.session_id),
            "request_id": facts.request_id if isinstance(facts.request_id, int) else _short(facts.request_id),
            "request": params,
            "response": response,
            "error": describe_error(facts.error) if facts.error is not None else None,
            "is_error": is_error,
            "duration_ms": facts.duration_ms,
            "trace_id": facts.trace_id,
            "span_id": facts.span_id,
            "client": {k: v for k, v in client.items() if v} or None,
            "metadata": {k: v for k, v in metadata.items() if v is not None},
        }
        return {key: value for key, value in record.items() if value is not None}


FactsOf = Callable[[Any, BaseException | None], RequestFacts]
_T = TypeVar("_T")


async def observe(recorder: Recorder, method: str, call: Callable[[], Awaitable[_T]], facts_of: FactsOf) -> _T:
    """Await `call` (the rest of the request path), then record its outcome; the outcome is passed on unchanged.

    `facts_of(result, error)` gathers the request's facts in the request's own task (context variables, the
    active span); if it fails, a record with the method and outcome alone is made instead.
    """
    started = time.perf_counter_ns()
    started_at_ns = time.time_ns()
    try:
        result = await call()
    except Exception as error:
        failure = error
        _record_outcome(recorder, method, (started, started_at_ns), lambda: facts_of(None, failure), failure)
        raise
    _record_outcome(recorder, method, (started, started_at_ns), lambda: facts_of(result, None), None)
    return result


def _record_outcome(
    recorder: Recorder,
    method: str,
    started: tuple[int, int],
    facts: Callable[[], RequestFacts],
    error: BaseException | None,
) -> None:
    """`started`: (time.perf_counter_ns, time.time_ns) when the request arrived."""
    duration_ms = (time.perf_counter_ns() - started[0]) / 1e6
    try:
        gathered = facts()
    except Exception:  # never let the instrumentation change the request's outcome
        gathered = RequestFacts(method=method, params=None, error=error)
    gathered.duration_ms = duration_ms
    gathered.started_at_ns = started[1]
    recorder.record(gathered)
