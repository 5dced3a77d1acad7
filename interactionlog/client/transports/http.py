"""The http:// and https:// transports: POST the entries to `interactionlog serve` as NDJSON.

`http://gateway:8080` (or a base path in front of it, `https://example.com/interactionlog`) with the MCP's token
as `token=` (the keyword, or `?token=` in the URL, which is handy in an environment variable). The body is the
records' JSON as encoded by the publisher, one per line, so what the gateway stores is exactly what was sent.
A batch over the gateway's body cap (413) is split in halves and sent again, down to single records.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import PublishError, PublishUnavailableError, RecordTooLargeError
from ...record import DATA_FIELD, EXACT_IDENTITY, IDENTITY_HEADER, all_exact
from ...redact import redact_url
from .outcomes import Outcome, settle

try:
    import httpx
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the http:// transport needs httpx: pip install 'interactionlog[http]'") from error

INGEST_PATH = "/api/v2/interactions"
NDJSON = "application/x-ndjson"
# httpx writes a request's headers and body separately: with Nagle's algorithm on, the body waits for the ACK
# of the headers, which the server delays (about 40 ms on Linux). TCP_NODELAY sends it at once.
SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def endpoint_and_token(url: str, token: str | None) -> tuple[str, str | None]:
    """The ingest endpoint under `url`'s base path, and the token (the keyword wins over `?token=`)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = next((value for key, value in query if key == "token"), None)
    rest = urlencode([(key, value) for key, value in query if key != "token"])
    endpoint = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + INGEST_PATH, rest, ""))
    return endpoint, token or from_url


def _body(entries: Sequence[dict[bytes, bytes]]) -> bytes:
    return b"\n".join(fields[DATA_FIELD] for fields in entries)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _outcomes(results: list[dict[str, Any]]) -> list[Outcome]:
    return [
        Outcome(
            index=item["index"],
            entry_id=item.get("entry_id") if item.get("outcome") == "accepted" else None,
            error_type=item.get("error_type", ""),
            message=item.get("message", ""),
            interaction_id=item.get("interaction_id", ""),
        )
        for item in results
    ]


def _message(response: httpx.Response) -> str:
    body = _json(response)
    return str(body.get("message", body)) if isinstance(body, dict) else response.text[:200]


class _HttpCore:
    """Everything the twins share: the endpoint, the headers, and reading the answer."""

    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        self.endpoint, token = endpoint_and_token(url, token)
        self.where = f"the gateway at {redact_url(self.endpoint)}"
        self.headers = {"Content-Type": NDJSON, "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.exact_headers = {**self.headers, IDENTITY_HEADER: EXACT_IDENTITY.decode()}
        self.timeout = httpx.Timeout(timeout_s)

    def headers_for(self, entries: Sequence[dict[bytes, bytes]]) -> dict[str, str]:
        """The request's headers: with `record.IDENTITY_HEADER` when every entry is marked `identity exact`, so the
        gateway marks them too (a batch mixing both goes unmarked: then the worker probes, safe)."""
        return self.exact_headers if all_exact(entries) else self.headers

    def _unreachable(self, error: httpx.HTTPError) -> PublishUnavailableError:
        return PublishUnavailableError(
            f"{self.where} is unreachable, records not confirmed (send them again with the same interaction_id; "
            f"they are stored once either way): {type(error).__name__}: {error}"
        )

    def _settle(self, response: httpx.Response, sent: int) -> list[str] | None:
        """The ids, or None when the batch must be split (413); raises for every other refusal."""
        status = response.status_code
        body = _json(response)
        if isinstance(body, dict) and isinstance(body.get("results"), list):  # an answer per record
            return settle(_outcomes(body["results"]), sent, self.where)
        if status == 413:
            if sent > 1:
                return None
            raise RecordTooLargeError(f"{self.where} refused the record as too large: {_message(response)}")
        if status in {429, 503} or status >= 500:
            retry_after = response.headers.get("Retry-After")
            hint = f", retry after {retry_after} s" if retry_after else ""
            raise PublishUnavailableError(
                f"{self.where} did not accept the records ({status}{hint}): {_message(response)}"
            )
        if status == 401:
            raise PublishError(
                f"{self.where} refused the token ({status}): {_message(response)}; "
                "create one with `interactionlog tokens create --mcp-id <id>`"
            )
        raise PublishError(f"{self.where} refused the request ({status}): {_message(response)}")


class HttpTransport(_HttpCore):
    """POSTs entries to the gateway from synchronous code; thread-safe (httpx pools its connections)."""

    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        super().__init__(url, timeout_s=timeout_s, token=token)
        # One retry on a connection error: a pooled keep-alive connection the gateway closed is the usual cause.
        transport = httpx.HTTPTransport(retries=1, socket_options=SOCKET_OPTIONS)
        self._client = httpx.Client(timeout=self.timeout, transport=transport)

    def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """POST the entries as one NDJSON body; one entry id each."""
        if not entries:
            return []
        try:
            response = self._client.post(self.endpoint, content=_body(entries), headers=self.headers_for(entries))
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        ids = self._settle(response, len(entries))
        if ids is None:
            half = len(entries) // 2
            return self.publish_encoded(entries[:half]) + self.publish_encoded(entries[half:])
        return ids

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class AsyncHttpTransport(_HttpCore):
    """The asyncio twin of `HttpTransport`."""

    def __init__(self, url: str, *, timeout_s: float, token: str | None) -> None:
        super().__init__(url, timeout_s=timeout_s, token=token)
        transport = httpx.AsyncHTTPTransport(retries=1, socket_options=SOCKET_OPTIONS)
        self._client = httpx.AsyncClient(timeout=self.timeout, transport=transport)

    async def publish_encoded(self, entries: Sequence[dict[bytes, bytes]]) -> list[str]:
        """POST the entries as one NDJSON body; one entry id each."""
        if not entries:
            return []
        try:
            response = await self._client.post(self.endpoint, content=_body(entries), headers=self.headers_for(entries))
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        ids = self._settle(response, len(entries))
        if ids is None:
            half = len(entries) // 2
            return await self.publish_encoded(entries[:half]) + await self.publish_encoded(entries[half:])
        return ids

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
