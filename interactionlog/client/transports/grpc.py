"""The grpc:// and grpcs:// transports: the PublishBatch call of `interactionlog serve`, one answer per record.

`grpc://gateway:50051?token=...` (plain, for a mesh or loopback) or `grpcs://...` (TLS with the system's roots).
Each record travels as its JSON text in `InteractionData.data`, exactly as the publisher encoded it. A
streaming client (one response per record, flow-controlled) is in `interactionlog/proto/ingest.proto` for
those who want it; a publisher sends batches, for which the unary call is one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from ...errors import PublishError, PublishUnavailableError
from ...record import DATA_FIELD, EXACT_IDENTITY, IDENTITY_HEADER, all_exact
from .outcomes import Outcome, settle

try:
    import grpc
    import grpc.aio

    from ...proto import ingest_pb2, ingest_pb2_grpc
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the grpc:// transport needs grpcio and protobuf: pip install 'interactionlog[grpc]'") from error

# Redis unreachable behind the gateway, the gateway away, or overloaded: nothing was confirmed, send again.
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
     grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)  # fmt: skip


def target_and_token(url: str, token: str | None) -> tuple[str, bool, str | None]:
    """host:port, whether to use TLS, and the token (the keyword wins over `?token=`)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"no host in {parts.scheme}:// URL; write grpc://host:port")
    query = dict(parse_qsl(parts.query))
    secure = parts.scheme.lower() == "grpcs"
    port = parts.port or (443 if secure else 50051)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", secure, token or query.get("token")


def batch_of(entries: Sequence[dict[bytes, bytes]]) -> ingest_pb2.InteractionBatch:
    """The request carrying `entries`, each record's JSON text as `data`."""
    return ingest_pb2.InteractionBatch(
        records=[ingest_pb2.InteractionData(data=fields[DATA_FIELD].decode()) for fields in entries]
    )


class _GrpcCore:
    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        self.target, self.secure, token = target_and_token(url, token)
        self.where = f"the gateway at grpc{'s' if self.secure else ''}://{self.target}"
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.exact_metadata = (*self.metadata, (IDENTITY_HEADER.lower(), EXACT_IDENTITY.decode()))
        self.timeout_s = timeout_s

    def metadata_for(self, entries: Sequence[dict[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
        """The call's metadata: with `record.IDENTITY_HEADER` when every entry is marked `identity exact` (see
        `HttpTransport`'s `headers_for`)."""
        return self.exact_metadata if all_exact(entries) else self.metadata

    def _ids(self, reply: ingest_pb2.InteractionBatchResponse, sent: int) -> list[str]:
        outcomes = [
            Outcome(
                index=result.index,
                entry_id=result.entry_id if result.success else None,
                error_type=result.error_type,
                message=result.message,
                interaction_id=result.interaction_id,
            )
            for result in reply.results
        ]
        return settle(outcomes, sent, self.where)

    def _failed(self, error: grpc.RpcError) -> PublishError:
        code = error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else grpc.StatusCode.UNKNOWN
        details = error.details() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else str(error)
        if code in TRANSIENT_CODES:
            return PublishUnavailableError(
                f"{self.where} did not confirm the records ({code.name}: {details}); send them again with the "
                "same interaction_id, they are stored once either way"
            )
        if code == grpc.StatusCode.UNAUTHENTICATED:
            details = f"{details}; create a token with `interactionlog tokens create --mcp-id <id>`"
        return PublishError(f"{self.where} refused the records ({code.name}): {details}")


class GrpcTransport(_GrpcCore):
    """Sends batches with PublishBatch from synchronous code; thread-safe (one channel, multiplexed)."""

    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        super().__init__(url, timeout_s=timeout_s, token=token)
        self._channel = (
            grpc.secure_channel(self.target, grpc.ssl_channel_credentials())
            if self.secure
            else grpc.insecure_channel(self.target)
        )
        self._stub = ingest_pb2_grpc.InteractionIngestStub(self._channel)

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """One PublishBatch call; one entry id each."""
        if not entries:
            return []
        try:
            reply = self._stub.PublishBatch(
                batch_of(entries), timeout=self.timeout_s, metadata=self.metadata_for(entries)
            )
        except grpc.RpcError as error:
            raise self._failed(error) from error
        return self._ids(reply, len(entries))

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


class AsyncGrpcTransport(_GrpcCore):
    """The asyncio twin; its channel is opened on first use, inside the event loop that uses it."""

    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        super().__init__(url, timeout_s=timeout_s, token=token)
        self._channel: grpc.aio.Channel | None = None
        self._stub: ingest_pb2_grpc.InteractionIngestAsyncStub | None = None

    def _connected(self) -> ingest_pb2_grpc.InteractionIngestAsyncStub:
        if self._stub is None:
            self._channel = (
                grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials())
                if self.secure
                else grpc.aio.insecure_channel(self.target)
            )
            self._stub = ingest_pb2_grpc.InteractionIngestStub(self._channel)
        return self._stub

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """One PublishBatch call; one entry id each."""
        if not entries:
            return []
        try:
            reply = await self._connected().PublishBatch(
                batch_of(entries), timeout=self.timeout_s, metadata=self.metadata_for(entries)
            )
        except grpc.RpcError as error:
            raise self._failed(error) from error
        return self._ids(reply, len(entries))

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()
