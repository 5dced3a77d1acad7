"""gRPC ingest: the design's `StreamInteractions` (one answer per record, in order, flow-controlled), the unary
`PublishBatch` for clients that cannot stream, `StreamInteractionBatches` (the stream with many records per
message, for throughput), and the standard `grpc.health.v1` service.

Flow control on a stream: a reader task reads messages ahead of their answers into a window of `grpc_window`
records (and at most `WINDOW_BYTES`); the writer takes what the window holds, XADDs it in one pipeline, and
writes one answer per message (per record on `StreamInteractions`). When Redis is slow, the window fills and the
reader stops reading, so HTTP/2 flow control stops the client; when the client stops reading its answers,
`write` waits, the window fills, and the same happens. Nothing grows without bound, whoever is slow.

Authentication: `authorization: Bearer <token>` metadata, checked once per call (UNAUTHENTICATED otherwise).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog

# grpcio-health-checking ships no type hints (types-grpcio covers grpc itself only).
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from ..client.transports.outcomes import UNAVAILABLE, Outcome
from ..proto import ingest_pb2, ingest_pb2_grpc
from ..record import IDENTITY_HEADER, says_exact_identity
from .health import GatewayHealth
from .ingest import Ingest, Submitted
from .metrics import GRPC
from .tokens import Principal, TokenCheckUnavailableError, TokenError, TokenVerifier

log = structlog.get_logger(__name__)

TRANSPORT = GRPC
SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["InteractionIngest"].full_name
WINDOW_BYTES = 4 * 1024 * 1024  # read-ahead of one stream, beyond its record count
HEALTH_INTERVAL_S = 2.0
_ENVELOPE = ("mcp_id", "interaction_id", "timestamp")
_Message = TypeVar("_Message", ingest_pb2.InteractionData, ingest_pb2.InteractionBatch)
_Reply = TypeVar("_Reply", ingest_pb2.InteractionResponse, ingest_pb2.InteractionBatchResponse)


def submitted(message: ingest_pb2.InteractionData) -> Submitted:
    """A received record: `data` as bytes, and the envelope fields that are set."""
    envelope = {name: value for name in _ENVELOPE if (value := getattr(message, name))}
    return Submitted(message.data.encode(), envelope or None)


def response(outcome: Outcome) -> ingest_pb2.InteractionResponse:
    """The wire answer for one record."""
    if outcome.accepted:
        return ingest_pb2.InteractionResponse(
            interaction_id=outcome.interaction_id, success=True, entry_id=outcome.entry_id or "", index=outcome.index
        )
    return ingest_pb2.InteractionResponse(
        interaction_id=outcome.interaction_id,
        success=False,
        message=outcome.message,
        error_type=outcome.error_type,
        index=outcome.index,
    )


class ReadAhead:
    """Messages read from a stream and not yet answered, holding at most `size` records (and about `max_bytes`).

    A message is the records of one `InteractionData` (one) or one `InteractionBatch` (any number). A message
    larger than the window is let in when the window is empty, so a batch over `size` records still flows; its
    bytes are bounded by the server's maximum message size. One reader puts, one writer takes; `end()` (safe in a
    `finally`) tells the writer nothing more will come.
    """

    def __init__(self, size: int, max_bytes: int = WINDOW_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._messages: deque[list[Submitted]] = deque()
        self._records = 0
        self._bytes = 0
        self._ready = asyncio.Event()  # messages to take, or the end
        self._space = asyncio.Event()
        self.ended = False

    async def put(self, records: list[Submitted]) -> None:
        """Add one message's records, waiting while the window has no room for them."""
        while self._messages and (self._records + len(records) > self.size or self._bytes >= self.max_bytes):
            self._space.clear()
            await self._space.wait()
        self._messages.append(records)
        self._records += len(records)
        self._bytes += sum(len(record.data) for record in records)
        self._ready.set()

    def end(self) -> None:
        """No more messages will be put."""
        self.ended = True
        self._ready.set()

    async def take(self, limit: int) -> list[list[Submitted]]:
        """Whole messages holding up to `limit` records (at least one message), waiting for the first; empty once
        ended and drained."""
        while not self._messages and not self.ended:
            self._ready.clear()
            await self._ready.wait()
        taken: list[list[Submitted]] = []
        count = 0
        while self._messages and (not taken or count + len(self._messages[0]) <= limit):
            taken.append(message := self._messages.popleft())
            count += len(message)
        self._records -= count
        self._bytes -= sum(len(record.data) for message in taken for record in message)
        self._space.set()
        return taken


def _one(message: ingest_pb2.InteractionData) -> list[Submitted]:
    return [submitted(message)]


def _exact_identity(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the call's metadata says its records carry the timestamps their authors wrote (`record.IDENTITY_HEADER`,
    lowercase as gRPC metadata keys are)."""
    key = IDENTITY_HEADER.lower()
    return any(name == key and says_exact_identity(value) for name, value in context.invocation_metadata() or ())


def _many(message: ingest_pb2.InteractionBatch) -> list[Submitted]:
    return [submitted(record) for record in message.records]


def _single_answer(outcomes: list[Outcome]) -> ingest_pb2.InteractionResponse:
    (outcome,) = outcomes
    return response(outcome)


def _batch_answer(outcomes: list[Outcome]) -> ingest_pb2.InteractionBatchResponse:
    return ingest_pb2.InteractionBatchResponse(results=[response(outcome) for outcome in outcomes])


class IngestServicer(ingest_pb2_grpc.InteractionIngestServicer):
    """The InteractionIngest service over the shared `Ingest` core."""

    def __init__(self, ingest: Ingest, tokens: TokenVerifier | None, *, window: int) -> None:
        self.ingest = ingest
        self.tokens = tokens
        self.window = window

    async def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        if self.tokens is None:
            return None
        authorization = next(
            (str(value) for key, value in context.invocation_metadata() or () if key == "authorization"), None
        )
        try:
            return await self.tokens.verify(authorization)
        except TokenError as error:
            log.info("token_refused", error_code=error.error, transport=TRANSPORT)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
        except TokenCheckUnavailableError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))

    async def StreamInteractions(
        self,
        request_iterator: AsyncIterator[ingest_pb2.InteractionData],
        context: grpc.aio.ServicerContext[ingest_pb2.InteractionData, ingest_pb2.InteractionResponse],
    ) -> AsyncIterator[ingest_pb2.InteractionResponse]:
        """One answer per record, in order, after its XADD is confirmed (or with why it was not)."""
        async with aclosing(self._answered(request_iterator, context, _one, _single_answer)) as answers:
            async for answer in answers:
                yield answer  # waits while the client does not read: HTTP/2 flow control

    async def StreamInteractionBatches(
        self,
        request_iterator: AsyncIterator[ingest_pb2.InteractionBatch],
        context: grpc.aio.ServicerContext[ingest_pb2.InteractionBatch, ingest_pb2.InteractionBatchResponse],
    ) -> AsyncIterator[ingest_pb2.InteractionBatchResponse]:
        """One answer per batch, in order, holding one answer per record once each XADD is confirmed (or refused)."""
        async with aclosing(self._answered(request_iterator, context, _many, _batch_answer)) as answers:
            async for answer in answers:
                yield answer

    async def _answered(
        self,
        messages: AsyncIterator[_Message],
        context: grpc.aio.ServicerContext[Any, Any],
        unpack: Callable[[_Message], list[Submitted]],
        answer: Callable[[list[Outcome]], _Reply],
    ) -> AsyncGenerator[_Reply, None]:
        """The answer to each message of a stream (`answer` of its records' outcomes), a read-ahead window at a time:
        every record the window holds is XADDed in one pipeline, so round trips to Redis do not grow with records."""
        principal = await self._principal(context)
        exact = _exact_identity(context)
        ahead = ReadAhead(self.window)
        reader = asyncio.create_task(_read(messages, unpack, ahead))
        index = 0
        finished = False
        try:
            while taken := await ahead.take(self.window):
                records = [record for message in taken for record in message]
                started = time.perf_counter()
                outcomes = await self.ingest.submit(
                    records, principal, TRANSPORT, first_index=index, exact_identity=exact
                )
                index += len(records)
                self.ingest.metrics.duration.labels(self.ingest.metrics.stream, TRANSPORT).observe(
                    time.perf_counter() - started
                )
                start = 0
                for message in taken:
                    yield answer(outcomes[start : start + len(message)])
                    start += len(message)
            finished = True
        finally:
            reader.cancel()
            status = "OK" if finished else "CANCELLED"
            self.ingest.metrics.requests.labels(self.ingest.metrics.stream, TRANSPORT, status).inc()

    async def PublishBatch(
        self,
        request: ingest_pb2.InteractionBatch,
        context: grpc.aio.ServicerContext[ingest_pb2.InteractionBatch, ingest_pb2.InteractionBatchResponse],
    ) -> ingest_pb2.InteractionBatchResponse:
        """Every record of the batch answered; RESOURCE_EXHAUSTED over the backlog threshold, UNAVAILABLE when
        Redis did not confirm the XADD."""
        started = time.perf_counter()
        status = "OK"
        try:
            principal = await self._principal(context)
            if (reason := self.ingest.backlog()) is not None:
                status = "RESOURCE_EXHAUSTED"
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
            outcomes = await self.ingest.submit(
                _many(request), principal, TRANSPORT, exact_identity=_exact_identity(context)
            )
            unavailable = next((o for o in outcomes if o.error_type == UNAVAILABLE), None)
            if unavailable is not None:
                status = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, unavailable.message)
            return _batch_answer(outcomes)
        finally:
            code = context.code()
            name = code.name if isinstance(code, grpc.StatusCode) else status
            self.ingest.metrics.answered(TRANSPORT, name, time.perf_counter() - started)


async def _read(
    messages: AsyncIterator[_Message], unpack: Callable[[_Message], list[Submitted]], ahead: ReadAhead
) -> None:
    try:
        async for message in messages:
            await ahead.put(unpack(message))
    finally:
        ahead.end()


class GrpcServer:
    """The grpc.aio server with the ingest and health services, and the task keeping health up to date."""

    def __init__(
        self,
        ingest: Ingest,
        tokens: TokenVerifier | None,
        gateway_health: GatewayHealth,
        *,
        window: int,
        max_message_bytes: int,
    ) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_concurrent_streams", 100),
            ],
            maximum_concurrent_rpcs=2000,
        )
        ingest_pb2_grpc.add_InteractionIngestServicer_to_server(
            IngestServicer(ingest, tokens, window=window), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.gateway_health = gateway_health
        self._watch: asyncio.Task[None] | None = None

    def listen(self, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
        """Bind `host:port` (TLS with `credentials`); returns the bound port (useful for port 0)."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = (
            self.server.add_secure_port(address, credentials)
            if credentials is not None
            else self.server.add_insecure_port(address)
        )
        if bound == 0:
            raise OSError(f"cannot serve gRPC on {address}")
        return bound

    async def start(self) -> None:
        """Start serving, and keep the health status in step with readiness."""
        await self.server.start()
        self._watch = asyncio.create_task(self._keep_health())

    async def _keep_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        while True:
            checks = await self.gateway_health.readiness()
            status = serving if all(state == "ok" for state in checks.values()) else not_serving
            for service in ("", SERVICE_NAME):
                await self.health.set(service, status)
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def stop(self, grace_s: float) -> None:
        """Say NOT_SERVING, refuse new calls, and give calls in flight `grace_s` to finish."""
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    """TLS credentials from PEM files."""
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])
