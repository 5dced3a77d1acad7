"""HTTP ingest against a real `interactionlog serve` on loopback: every response code of the table, the three body
forms, what reaches the stream, tokens, the OpenAPI document, metrics and health."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from interactionlog.gateway.http import ErrorReply, IngestReply
from interactionlog.shards import Layout
from tests.gateway import INGEST, GatewayProcess, migrated, new_token, post, revoke, running_gateway
from tests.pipeline import record, stream_entries, wait_until
from tests.servers import PostgresServer, RedisServer

MAX_BODY_BYTES = 65536
MAX_RECORD_BYTES = 4096


class Env:
    """A gateway shared by the module, with a token of `weather` and one of `news`."""

    def __init__(self, gateway: GatewayProcess, database_url: str, redis_url: str) -> None:
        self.gateway = gateway
        self.database_url = database_url
        self.redis_url = redis_url
        self.token = new_token(database_url, "weather", "test")
        self.other_token = new_token(database_url, "news")


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """One gateway for the module's tests (each test that reads the stream flushes Redis first via redis_url)."""
    database_url = migrated(postgres_server.create_database("gateway_http"))
    with running_gateway(
        redis_server.url,
        database_url,
        tmp_path_factory.mktemp("gateway"),
        max_body_bytes=str(MAX_BODY_BYTES),
        max_record_bytes=str(MAX_RECORD_BYTES),
        request_timeout_s="1",
    ) as gateway:
        yield Env(gateway, database_url, redis_server.url)
    postgres_server.drop_database("gateway_http")


def results(response: httpx.Response) -> list[dict[str, Any]]:
    """The per-record results, after checking the body against the documented model."""
    body = response.json()
    IngestReply.model_validate(body)
    items: list[dict[str, Any]] = body["results"]
    return items


def stream_data(redis_url: str) -> dict[str, bytes]:
    """entry id -> data field, of every entry in the stream."""
    return {entry_id: fields[b"data"] for entry_id, fields in stream_entries(redis.Redis.from_url(redis_url))}


def test_one_record_is_answered_202_once_its_xadd_is_confirmed(env: Env, redis_url: str) -> None:
    """A single-record body gets 202 with its interaction_id and the entry id, and that entry holds the JSON as
    sent, byte for byte, with only the missing timestamp written in front."""
    body = b'{"mcp_id": "weather", "interaction_id": "one", "request": {"n": 1.00000000000000001, "e": 1e2}}'
    response = post(env.gateway, body, token=env.token)
    assert response.status_code == 202, response.text
    [result] = results(response)
    assert (result["outcome"], result["interaction_id"]) == ("accepted", "one")
    data = stream_data(redis_url)[result["entry_id"]]
    assert data.startswith(b'{"timestamp":"')
    assert data.endswith(body[1:])


def test_an_array_ndjson_and_gzip_bodies_are_each_accepted(env: Env, redis_url: str) -> None:
    """A JSON array, NDJSON (blank lines skipped) and a gzip-compressed body each get 202, one result per record,
    in order."""
    array = json.dumps([record(1), record(2)])
    ndjson = "\n".join([json.dumps(record(3)), "", json.dumps(record(4)), ""])
    compressed = gzip.compress(json.dumps([record(5), record(6), record(7)]).encode())
    answers = [
        post(env.gateway, array, token=env.token),
        post(env.gateway, ndjson, token=env.token, content_type="application/x-ndjson"),
        post(env.gateway, compressed, token=env.token, headers={"Content-Encoding": "gzip"}),
    ]
    assert [response.status_code for response in answers] == [202, 202, 202]
    ids = [[item["interaction_id"] for item in results(response)] for response in answers]
    assert ids == [["rec-000001", "rec-000002"], ["rec-000003", "rec-000004"], [f"rec-{i:06d}" for i in (5, 6, 7)]]
    assert len(stream_data(redis_url)) == 7


def test_refused_records_get_207_with_each_ones_index_reason_and_message(env: Env, redis_url: str) -> None:
    """In a mixed batch, each refused record carries the worker's error_type and a message naming the field; the
    others are accepted and only they reach the stream."""
    batch = [
        record(1),
        {**record(2), "duration_ms": "slow"},
        [1, 2],
        {**record(3), "request": "x" * MAX_RECORD_BYTES},
        {**record(4), "mcp_id": "news"},
        {**record(5), "tool": "a\u0000b"},
        record(6),
    ]
    response = post(env.gateway, json.dumps(batch), token=env.token)
    assert response.status_code == 207, response.text
    items = results(response)
    assert [item["index"] for item in items] == list(range(7))
    assert [item.get("error_type") for item in items] == [
        None, "invalid_record", "not_json_object", "too_large", "forbidden", "unstorable_value", None,
    ]  # fmt: skip
    assert "field 'duration_ms'" in items[1]["message"]
    assert response.json()["accepted"] == 2
    stored = [json.loads(data)["interaction_id"] for data in stream_data(redis_url).values()]
    assert stored == ["rec-000001", "rec-000006"]


def test_a_body_malformed_as_a_whole_gets_400(env: Env) -> None:
    """Not JSON, a truncated array, trailing garbage, an empty body, a JSON scalar and a broken gzip are each 400
    with an error code and a message."""
    cases = [
        (b"not json", {}),
        (b'[{"mcp_id": "weather"}', {}),
        (b'{"mcp_id": "weather"} {"mcp_id": "weather"}', {}),
        (b"", {}),
        (b"[]", {}),
        (b"42", {}),
        (b"\x1f\x8b\x08\x00broken", {"Content-Encoding": "gzip"}),
    ]
    for body, headers in cases:
        response = post(env.gateway, body, token=env.token, headers=headers)
        assert response.status_code == 400, (body, response.text)
        ErrorReply.model_validate(response.json())


def test_a_missing_malformed_wrong_or_revoked_token_gets_401(env: Env) -> None:
    """401 with a Bearer challenge for no token, another scheme, a malformed token, a wrong secret and a revoked
    token; nothing reaches the stream."""
    revoked = new_token(env.database_url, "weather")
    revoke(env.database_url, revoked)
    wrong_secret = env.token[:-4] + ("AAAA" if not env.token.endswith("AAAA") else "BBBB")
    body = json.dumps(record(1))
    for token, headers in [
        (None, {}),
        (None, {"Authorization": f"Basic {env.token}"}),
        ("il_nope", {}),
        (wrong_secret, {}),
        (revoked, {}),
    ]:
        response = post(env.gateway, body, token=token, headers=headers)
        assert response.status_code == 401, (token, response.text)
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="interactionlog"')


def test_records_of_another_mcp_get_403(env: Env) -> None:
    """Every record naming another MCP than the token's: 403, each record refused as forbidden."""
    response = post(env.gateway, json.dumps([record(1, mcp_id="news"), record(2, mcp_id="news")]), token=env.token)
    assert response.status_code == 403
    assert {item["error_type"] for item in results(response)} == {"forbidden"}
    assert post(env.gateway, json.dumps(record(3, mcp_id="news")), token=env.other_token).status_code == 202


def test_a_record_without_mcp_id_takes_the_tokens_and_gets_an_id_and_a_time(env: Env, redis_url: str) -> None:
    """mcp_id comes from the token, interaction_id is a new UUID returned in the answer, timestamp is now."""
    response = post(env.gateway, '{"tool": "t"}', token=env.other_token)
    assert response.status_code == 202, response.text
    [result] = results(response)
    data = json.loads(stream_data(redis_url)[result["entry_id"]])
    assert data["mcp_id"] == "news"
    assert data["interaction_id"] == result["interaction_id"]
    assert len(result["interaction_id"]) == 36
    assert abs(time.time() - time.mktime(time.strptime(data["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))) < 24 * 3600


def test_a_body_over_the_cap_gets_413_announced_streamed_or_inflated(env: Env) -> None:
    """413 when Content-Length says too much, when a chunked body grows too big, and when gzip inflates past the
    cap (a compression bomb is stopped at the cap, not inflated whole)."""
    big = json.dumps([record(i) for i in range(400)]).encode()
    assert len(big) > MAX_BODY_BYTES
    assert post(env.gateway, big, token=env.token).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    streamed = httpx.post(
        f"{env.gateway.http_url}/api/v2/interactions",
        content=chunks(),
        headers={"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413
    bomb = gzip.compress(b"[" + b" " * (50 * 1024 * 1024) + b"]")
    assert len(bomb) < MAX_BODY_BYTES
    response = post(env.gateway, bomb, token=env.token, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "inflates" in response.json()["message"]


def test_an_unaccepted_content_type_or_encoding_gets_415(env: Env) -> None:
    """Form data (curl's default) and brotli are refused with 415 naming what to send instead."""
    form = post(env.gateway, "a=b", token=env.token, content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415
    assert "application/x-ndjson" in form.json()["message"]
    assert post(env.gateway, "{}", token=env.token, headers={"Content-Encoding": "br"}).status_code == 415


def test_a_slow_body_gets_408_while_other_clients_are_served(env: Env) -> None:
    """A client trickling its body is cut off after --request-timeout-s with 408, and meanwhile others get 202."""
    with socket.create_connection(("127.0.0.1", env.gateway.http_port), timeout=10) as slow:
        slow.sendall(
            f"POST /api/v2/interactions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {env.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        assert post(env.gateway, json.dumps(record(1)), token=env.token).status_code == 202
        started = time.monotonic()
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 5


def test_a_client_trickling_its_headers_or_sending_nothing_is_disconnected(env: Env) -> None:
    """Connections whose request line and headers are not complete within --request-timeout-s are closed (a
    slow-loris guard), whether they send part of the headers or nothing at all."""
    with (
        socket.create_connection(("127.0.0.1", env.gateway.http_port), timeout=10) as partial,
        socket.create_connection(("127.0.0.1", env.gateway.http_port), timeout=10) as silent,
    ):
        partial.sendall(b"POST /api/v2/interactions HTTP/1.1\r\nHost")
        started = time.monotonic()
        assert partial.recv(100) == b""
        assert silent.recv(100) == b""
        assert time.monotonic() - started < 5


def test_the_openapi_document_describes_the_ingest_endpoint(env: Env) -> None:
    """/openapi.json documents POST /api/v2/interactions: both media types, the record schema, the status codes."""
    document = httpx.get(f"{env.gateway.http_url}/openapi.json", timeout=10).json()
    operation = document["paths"]["/api/v2/interactions"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"202", "207", "400", "401", "403", "408", "413", "415", "429", "503"} <= set(operation["responses"])
    assert "mcp_id" in document["components"]["schemas"]["Interaction"]["properties"]


def test_health_and_metrics_are_served_on_the_same_port(env: Env) -> None:
    """/livez and /readyz answer 200 with Redis up, and /metrics counts requests, records and refusals by reason."""
    assert httpx.get(f"{env.gateway.http_url}/livez", timeout=10).status_code == 200
    ready = httpx.get(f"{env.gateway.http_url}/readyz", timeout=10)
    assert (ready.status_code, ready.json()["checks"]) == (200, {"redis": "ok"})
    post(env.gateway, json.dumps([record(1), {"mcp_id": "weather", "tool": 5}]), token=env.token)
    text = httpx.get(f"{env.gateway.http_url}/metrics", timeout=10).text
    assert 'interactionlog_gateway_requests_total{status="207",stream="interactions",transport="http"}' in text
    assert 'interactionlog_gateway_records_rejected_total{reason="invalid_record"' in text
    assert "interactionlog_gateway_records_accepted_total" in text
    assert "interactionlog_gateway_request_duration_seconds_bucket" in text


def test_tokens_never_appear_in_the_gateway_log(env: Env) -> None:
    """After accepted, refused and unauthenticated requests, neither a token nor its secret is in the log."""
    post(env.gateway, json.dumps(record(1)), token=env.token)
    post(env.gateway, json.dumps(record(2, mcp_id="news")), token=env.token)
    post(env.gateway, json.dumps(record(3)), token=env.token[:-1] + "x")
    log = env.gateway.log_text()
    assert "token_refused" in log
    assert env.token not in log
    assert env.token[16:] not in log
    assert env.token[:-1] not in log


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where the gateways of one test write their logs."""
    return tmp_path


def _backlogged(redis_url: str, stream: str, entries: int) -> redis.Redis:
    """A client of `redis_url` after adding `entries` records to `stream`, as a backlog no worker has read."""
    client = redis.Redis.from_url(redis_url)
    for index in range(entries):
        client.xadd(stream, {"v": "1", "data": json.dumps(record(index))})
    return client


def _first_429(gateway: GatewayProcess, token: str) -> httpx.Response:
    """The first 429 the gateway answers a one-record POST with, once its backlog guard has read the backlog."""

    def refused() -> httpx.Response | None:
        answer = post(gateway, json.dumps(record(99)), token=token)
        return answer if answer.status_code == 429 else None

    response = wait_until(refused, what="a 429")
    assert response is not None
    return response


def test_a_backlog_over_the_threshold_gets_429_with_retry_after(
    redis_url: str, database_url: str, log_dir: Path
) -> None:
    """With the stream longer than --max-stream-length, requests get 429 and Retry-After, and add nothing."""
    client = _backlogged(redis_url, "interactions", 20)
    migrated(database_url)
    token = new_token(database_url)
    with running_gateway(redis_url, database_url, log_dir, max_stream_length="10", retry_after_s="7") as gateway:
        response = _first_429(gateway, token)
        assert response.headers["Retry-After"] == "7"
        assert "--max-stream-length" in response.json()["message"]
        assert client.xlen("interactions") == 20


def test_a_sharded_gateway_refuses_when_any_shard_is_over_the_backlog_threshold(
    redis_url: str, database_url: str, log_dir: Path
) -> None:
    """With --shards 3, a backlog on one shard's stream (not the base stream's name, which holds nothing) is
    enough for a 429 that names that shard's stream; nothing is added to any shard."""
    shard = Layout("interactions", 3).shard(1)
    client = _backlogged(redis_url, shard.stream, 20)
    migrated(database_url)
    token = new_token(database_url)
    with running_gateway(redis_url, database_url, log_dir, shards="3", max_stream_length="10") as gateway:
        response = _first_429(gateway, token)
        assert repr(shard.stream) in response.json()["message"]
    assert [client.xlen(each.stream) for each in Layout("interactions", 3).all()] == [0, 20, 0]


def test_redis_unreachable_gets_503_with_retry_after(own_redis: RedisServer, database_url: str, log_dir: Path) -> None:
    """With Redis down, records are answered 503 with Retry-After and each says `unavailable`; /readyz is 503."""
    migrated(database_url)
    token = new_token(database_url)
    with running_gateway(own_redis.url, database_url, log_dir) as gateway:
        own_redis.kill()
        response = post(gateway, json.dumps([record(1), record(2)]), token=token)
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "2"
        assert {item["error_type"] for item in results(response)} == {"unavailable"}
        assert httpx.get(f"{gateway.http_url}/readyz", timeout=10).status_code == 503


def test_no_auth_accepts_records_without_a_token_and_says_so_loudly(
    redis_url: str, database_url: str, log_dir: Path
) -> None:
    """--no-auth accepts a record without any token (its own mcp_id kept) and logs a warning at start."""
    with running_gateway(redis_url, database_url, log_dir, no_auth=True) as gateway:
        response = post(gateway, json.dumps(record(1, mcp_id="anyone")), token=None)
        assert response.status_code == 202, response.text
        lines = gateway.log_text().splitlines()
        warning = next(json.loads(line) for line in lines if "authentication_disabled" in line)
        assert warning["level"] == "warning"
        assert "UNAUTHENTICATED" in warning["warning"]


def test_sigterm_answers_requests_in_flight_and_exits_0(redis_url: str, database_url: str, log_dir: Path) -> None:
    """On SIGTERM the gateway stops, exiting 0, and /readyz no longer answers."""
    migrated(database_url)
    token = new_token(database_url)
    gateway = GatewayProcess(redis_url, database_url, log_dir)
    try:
        assert post(gateway, json.dumps(record(1)), token=token).status_code == 202
        assert gateway.stop() == 0
        assert "gateway_stopped" in gateway.log_text()
    finally:
        gateway.kill()


def test_tls_cert_and_key_serve_https(redis_url: str, database_url: str, log_dir: Path) -> None:
    """With --tls-cert and --tls-key the HTTP server speaks TLS: a client trusting the certificate gets 202, and
    plain HTTP is no longer answered."""
    cert, key = log_dir / "cert.pem", log_dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    migrated(database_url)
    token = new_token(database_url)
    with running_gateway(
        redis_url, database_url, log_dir, grpc_port="0", tls_cert=str(cert), tls_key=str(key), tls=True
    ) as gateway:
        response = httpx.post(
            f"https://127.0.0.1:{gateway.http_port}{INGEST}",
            content=json.dumps(record(1)),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=30,
        )
        assert response.status_code == 202, response.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{gateway.http_port}/livez", timeout=5)
