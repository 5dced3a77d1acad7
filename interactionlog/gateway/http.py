"""HTTP ingest: `POST /api/v2/interactions`, plus /livez, /readyz, /metrics and the OpenAPI document, on FastAPI.

| case | status |
| --- | --- |
| every record accepted (its XADD confirmed) | 202, each record's `interaction_id` and `entry_id` |
| some records refused | 207, each record's index, outcome, `error_type` and message |
| every record refused as another MCP's | 403 (the same body) |
| Redis did not confirm the XADD | 503 with Retry-After (the same body: admitted records say `unavailable`) |
| the body malformed as a whole (not JSON, bad gzip, no record) | 400 |
| no token, or a wrong or revoked one | 401 with WWW-Authenticate |
| the body slower than --request-timeout-s | 408 |
| the body over --max-body-bytes, compressed or not | 413 |
| a Content-Type or Content-Encoding not accepted | 415 |
| the backlog over --max-stream-length or --max-lag | 429 with Retry-After |
| a token that cannot be checked (PostgreSQL away) | 503 with Retry-After |
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from ..client.transports.outcomes import BACKLOG, FORBIDDEN, UNAVAILABLE, Outcome
from ..probes import LIVENESS_STALE_S
from ..record import IDENTITY_HEADER, Interaction, says_exact_identity
from .bodies import BodyError, decompress, read_capped, split_records
from .health import GatewayHealth
from .ingest import Ingest, Submitted
from .metrics import HTTP
from .tokens import TokenCheckUnavailableError, TokenError, TokenVerifier

log = structlog.get_logger(__name__)

INGEST_PATH = "/api/v2/interactions"
TRANSPORT = HTTP


class RecordResult(BaseModel):
    """One record's answer."""

    index: int
    outcome: Literal["accepted", "rejected"]
    interaction_id: str | None = None
    entry_id: str | None = None
    error_type: str | None = None
    message: str | None = None


class IngestReply(BaseModel):
    """The answer to an ingest request whose records were judged one by one (202, 207, 403, 503)."""

    accepted: int
    rejected: int
    results: list[RecordResult]


class ErrorReply(BaseModel):
    """The answer to a request refused as a whole."""

    error: str
    message: str


def _result(outcome: Outcome) -> dict[str, Any]:
    if outcome.accepted:
        return {
            "index": outcome.index,
            "outcome": "accepted",
            "interaction_id": outcome.interaction_id,
            "entry_id": outcome.entry_id,
        }
    result = {
        "index": outcome.index,
        "outcome": "rejected",
        "error_type": outcome.error_type,
        "message": outcome.message,
    }
    if outcome.interaction_id:
        result["interaction_id"] = outcome.interaction_id
    return result


def status_of(outcomes: Sequence[Outcome]) -> int:
    """The request's status from its records' outcomes (see the module's table)."""
    refused = {outcome.error_type for outcome in outcomes if not outcome.accepted}
    if not refused:
        return 202
    if UNAVAILABLE in refused:
        return 503
    if BACKLOG in refused:
        return 429
    if refused == {FORBIDDEN} and not any(outcome.accepted for outcome in outcomes):
        return 403
    return 207


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers)


_RECORD_SCHEMA = {"$ref": "#/components/schemas/Interaction"}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "One record, a JSON array of records, or NDJSON (one record per line); gzip accepted "
        "(Content-Encoding: gzip). A record without mcp_id takes the token's; without interaction_id or timestamp "
        "the gateway assigns them.",
        "content": {
            "application/json": {"schema": {"oneOf": [_RECORD_SCHEMA, {"type": "array", "items": _RECORD_SCHEMA}]}},
            "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON record per line"}},
        },
    }
}


def _responses() -> dict[int | str, dict[str, Any]]:
    judged = {"model": IngestReply}
    whole = {"model": ErrorReply}
    return {
        202: {**judged, "description": "Every record accepted: its XADD is confirmed, it is durable in Redis."},
        207: {**judged, "description": "Some records refused; each result says which and why."},
        400: {**whole, "description": "The body is malformed as a whole."},
        401: {**whole, "description": "No token, or a wrong or revoked one (see WWW-Authenticate)."},
        403: {**judged, "description": "Every record names another MCP than the token's."},
        408: {**whole, "description": "The body arrived too slowly."},
        413: {**whole, "description": "The body is over --max-body-bytes (compressed or inflated)."},
        415: {**whole, "description": "Content-Type or Content-Encoding not accepted."},
        429: {**whole, "description": "The backlog is over the gateway's threshold; see Retry-After."},
        503: {"description": "Redis did not confirm the records (results say `unavailable`), or the token cannot be "
              "checked now; see Retry-After."},
    }  # fmt: skip


def create_app(
    ingest: Ingest,
    tokens: TokenVerifier | None,
    health: GatewayHealth,
    *,
    max_body_bytes: int,
    request_timeout_s: float,
) -> FastAPI:
    """The ASGI application; `tokens` None means unauthenticated ingest (`--no-auth`)."""
    app = FastAPI(
        title="interactionlog ingest",
        summary="Publish MCP interaction records over HTTP; they are added to the Redis stream the workers store.",
        version="2",
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = ingest.metrics
    retry_after = {"Retry-After": str(ingest.retry_after_s)}

    async def answer(request: Request) -> tuple[Response, int]:
        try:
            principal = await tokens.verify(request.headers.get("authorization")) if tokens else None
        except TokenError as error:
            log.info("token_refused", error_code=error.error, path=request.url.path)
            challenge = 'Bearer realm="interactionlog"' + (
                f', error="{error.error}"' if error.error == "invalid_token" else ""
            )
            return _error(401, error.error, str(error), {"WWW-Authenticate": challenge}), 0
        except TokenCheckUnavailableError as error:
            return _error(503, "token_check_unavailable", str(error), retry_after), 0
        if (reason := ingest.backlog()) is not None:
            return _error(429, BACKLOG, reason, retry_after), 0
        try:
            records = await _records(request, max_body_bytes, request_timeout_s)
        except BodyError as error:
            return _error(error.status, error.error, str(error)), 0
        exact = says_exact_identity(request.headers.get(IDENTITY_HEADER))
        outcomes = await ingest.submit(records, principal, TRANSPORT, exact_identity=exact)
        return _judged(outcomes, retry_after), len(records)

    @app.post(
        INGEST_PATH,
        status_code=202,
        openapi_extra=_OPENAPI_BODY,
        responses=_responses(),
        summary="Publish interaction records",
        response_model=None,
    )
    async def publish(request: Request) -> Response:
        started = time.perf_counter()
        response, _ = await answer(request)
        metrics.answered(TRANSPORT, str(response.status_code), time.perf_counter() - started)
        return response

    @app.get("/livez", include_in_schema=False)
    async def livez() -> Response:
        stalled_s = health.stalled_s()
        if stalled_s < LIVENESS_STALE_S:
            return Response("ok\n", media_type="text/plain")
        return Response(f"event loop stalled for {stalled_s:.0f}s\n", status_code=503, media_type="text/plain")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        checks = await health.readiness()
        ready = all(state == "ok" for state in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(metrics.registry), media_type=content_type)

    _add_record_schema(app)
    return app


async def _records(request: Request, max_body_bytes: int, request_timeout_s: float) -> list[Submitted]:
    try:
        async with asyncio.timeout(request_timeout_s):
            body = await read_capped(request.stream(), request.headers.get("content-length"), max_body_bytes)
    except TimeoutError:
        raise BodyError(408, "request_timeout", f"the body did not arrive within {request_timeout_s:g}s") from None
    body = decompress(body, request.headers.get("content-encoding"), max_body_bytes)
    return [Submitted(data) for data in split_records(body, request.headers.get("content-type"))]


def _judged(outcomes: Sequence[Outcome], retry_after: dict[str, str]) -> JSONResponse:
    status = status_of(outcomes)
    accepted = sum(outcome.accepted for outcome in outcomes)
    body = {"accepted": accepted, "rejected": len(outcomes) - accepted, "results": [_result(o) for o in outcomes]}
    return JSONResponse(body, status_code=status, headers=retry_after if status in {429, 503} else None)


def _add_record_schema(app: FastAPI) -> None:
    """Put the Interaction record's JSON schema into the OpenAPI document, where the request body points."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            record = Interaction.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(record.pop("$defs", {}))
            components["Interaction"] = record
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
