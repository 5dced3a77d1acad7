"""The settings of `interactionlog serve` beyond the shared ones (Redis, PostgreSQL, stream, logging).

Built like `settings.Settings`: each field is a flag and an `INTERACTIONLOG_*` variable with a working default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051


class GatewaySettings(BaseModel):
    """Ports, limits and thresholds of the HTTP and gRPC ingest servers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gateway_host: str = Field("0.0.0.0", description="Address the HTTP and gRPC servers bind.")  # noqa: S104
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=0, le=65535, description="HTTP ingest port; 0 disables it.")
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535, description="gRPC ingest port; 0 disables it.")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest HTTP request body, compressed or not (413 beyond)."
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="HTTP headers taking longer close the connection, a body taking longer gets 408 (slow clients).",
    )
    max_stream_length: int = Field(
        800_000,
        ge=0,
        description="Answer 429 while the stream holds more entries (keep it below --stream-maxlen); 0: no limit.",
    )
    max_lag: int = Field(0, ge=0, description="Answer 429 while the group's lag exceeds this; 0: no limit.")
    backlog_interval_s: float = Field(
        1.0, gt=0, le=60, description="How often the stream length and the group's lag are read."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 429 and 503, in seconds.")
    publish_timeout_s: float = Field(
        2.0, gt=0, description="How long one XADD round trip may wait for Redis before records get 503."
    )
    token_cache_s: float = Field(
        5.0, ge=0, description="How long a checked token is trusted before PostgreSQL is asked again."
    )
    grpc_window: int = Field(
        512, ge=1, le=100_000, description="Records one gRPC stream may have read and not yet answered."
    )
    tls_cert: str = Field("", description="PEM certificate file: serve HTTPS and gRPC over TLS (with --tls-key).")
    tls_key: str = Field("", description="PEM private key file of --tls-cert.")

    @model_validator(mode="after")
    def _check_together(self) -> GatewaySettings:
        if not self.http_port and not self.grpc_port:
            raise ValueError("--http-port and --grpc-port are both 0: enable at least one")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give --tls-cert and --tls-key together, or neither")
        return self
