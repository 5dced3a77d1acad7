"""The gateway's commands: `interactionlog serve` and `interactionlog tokens create|list|revoke`.

Registered on the `interactionlog` group by `cli.py`. The servers' dependencies (the `gateway` extra) are
imported only when `serve` runs, so every other command works without them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import click
import psycopg

from .errors import ConfigurationError, InteractionlogError
from .gateway.config import GatewaySettings
from .gateway.tokens import TokenInfo, create_token, list_tokens, revoke_tokens
from .logs import configure_logging
from .redact import redact_url
from .settings import Settings, settings_options, validate_settings, with_database_url_hint

_T = TypeVar("_T")

EXIT_FAILED = 1
EXIT_USAGE = 2

SERVE_OPTIONS = (
    "redis_url",
    "database_url",
    "stream",
    "shards",
    "wait_replicas",
    "wait_timeout_ms",
    "group",
    "stream_maxlen",
    "max_record_bytes",
    "redis_timeout_s",
    "shutdown_timeout_s",
    "metrics_port",
    "metrics_host",
    "log_format",
    "log_level",
)
TOKEN_OPTIONS = ("database_url", "log_format", "log_level")


def _split(values: dict[str, Any]) -> tuple[Settings, GatewaySettings]:
    """The shared settings and the gateway's, validated; a usage error names the flag and variable."""
    gateway_fields = GatewaySettings.model_fields
    try:
        settings = validate_settings(Settings, {k: v for k, v in values.items() if k not in gateway_fields})
        gateway = validate_settings(GatewaySettings, {k: v for k, v in values.items() if k in gateway_fields})
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings, gateway


def _database(awaitable: Awaitable[_T], database_url: str) -> _T:
    """Run a token command, turning a database failure into one line naming the database (without secrets)."""
    try:
        return asyncio.run(awaitable)  # type: ignore[arg-type]
    except psycopg.errors.UndefinedTable:
        click.echo(
            f"error: PostgreSQL at {redact_url(database_url)} has no token table: run `interactionlog migrate`",
            err=True,
        )
    except psycopg.Error as error:
        said = f"error: PostgreSQL at {redact_url(database_url)}: {str(error).strip()}"
        click.echo(with_database_url_hint(said, error), err=True)
    except (InteractionlogError, ValueError) as error:
        click.echo(f"error: {error}", err=True)
    raise SystemExit(EXIT_FAILED)


@click.command()
@settings_options(*SERVE_OPTIONS)
@settings_options(*GatewaySettings.model_fields, model=GatewaySettings)
@click.option(
    "--no-auth",
    is_flag=True,
    envvar="INTERACTIONLOG_NO_AUTH",
    show_envvar=True,
    help="Accept records without a token, as any MCP. Only behind an authenticating proxy; logged loudly.",
)
def serve(no_auth: bool, **values: Any) -> None:
    """Ingest records over HTTP (POST /api/v2/interactions) and gRPC, into the stream. Stops on SIGTERM.

    Each MCP authenticates with its own bearer token (`interactionlog tokens create`). --http-port 0 or
    --grpc-port 0 turns that server off. TLS: --tls-cert and --tls-key, or a proxy in front.
    """
    settings, gateway = _split(values)
    try:
        from .gateway.daemon import run_gateway  # noqa: PLC0415 - the `gateway` extra, needed by this command only
    except ImportError as error:
        click.echo(f"error: `serve` needs the gateway extra ({error}): pip install 'interactionlog[gateway]'", err=True)
        raise SystemExit(EXIT_USAGE) from None
    try:
        exit_code = asyncio.run(run_gateway(settings, gateway, authenticate=not no_auth))
    except OSError as error:  # a port taken, a certificate unreadable
        click.echo(f"error: cannot serve: {error}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    raise SystemExit(exit_code)


@click.group(name="tokens")
def tokens() -> None:
    """Create, list and revoke the bearer tokens MCPs use with `serve` (stored hashed in PostgreSQL)."""


@tokens.command(name="create")
@settings_options(*TOKEN_OPTIONS)
@click.option("--mcp-id", required=True, help="The MCP the token publishes as.")
@click.option("--name", default=None, help="What the token is for (a host, a deployment), shown by `tokens list`.")
def tokens_create(mcp_id: str, name: str | None, **values: Any) -> None:
    """Print a new token for MCP-ID alone on standard output. It is shown this once: store it now."""
    settings, _ = _split(values)
    info, token = _database(create_token(settings.database_url, mcp_id, name), settings.database_url)
    click.echo(token)
    click.echo(f"created token {info.token_id} for {info.mcp_id}; it is not shown again", err=True)


@tokens.command(name="list")
@settings_options(*TOKEN_OPTIONS)
@click.option("--mcp-id", default=None, help="Only this MCP's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines for machines.")
def tokens_list(mcp_id: str | None, as_json: bool, **values: Any) -> None:
    """List tokens (ids, never secrets), oldest first, revoked ones included."""
    settings, _ = _split(values)
    for info in _database(list_tokens(settings.database_url, mcp_id), settings.database_url):
        click.echo(json.dumps(_token_dict(info)) if as_json else _token_line(info))


@tokens.command(name="revoke")
@settings_options(*TOKEN_OPTIONS)
@click.argument("token_ids", nargs=-1, required=True)
def tokens_revoke(token_ids: tuple[str, ...], **values: Any) -> None:
    """Revoke tokens by id (or whole token). Gateways stop accepting them within --token-cache-s."""
    settings, _ = _split(values)
    revoked = _database(revoke_tokens(settings.database_url, token_ids), settings.database_url)
    for token_id in revoked:
        click.echo(f"revoked {token_id}")
    unknown = len(token_ids) - len(revoked)
    if unknown:
        click.echo(f"error: {unknown} of the tokens named do not exist", err=True)
        raise SystemExit(EXIT_FAILED)


def _token_dict(info: TokenInfo) -> dict[str, Any]:
    return {
        "token_id": info.token_id,
        "mcp_id": info.mcp_id,
        "name": info.name,
        "created_at": info.created_at.isoformat(),
        "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None,
    }


def _token_line(info: TokenInfo) -> str:
    state = f"revoked {info.revoked_at:%Y-%m-%d %H:%M:%S%z}" if info.revoked_at else "active"
    return f"{info.token_id}  {info.mcp_id}  {info.name or '-'}  created {info.created_at:%Y-%m-%d %H:%M:%S%z}  {state}"
