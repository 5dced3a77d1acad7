"""The suite's own Redis and PostgreSQL servers behave as the other tests rely on."""

from __future__ import annotations

import os

import psycopg
import pytest
import redis

from tests.servers import PostgresServer, RedisServer

# Filled by the database test below, which runs twice, so the second run can see the first one's name.
_databases_seen: set[str] = set()


@pytest.mark.parametrize("run", [1, 2])
def test_redis_url_answers_ping_and_starts_empty(redis_url: str, run: int) -> None:
    """Every test sees an empty Redis, whatever the test before it wrote."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("written-by-run", run)
    finally:
        client.close()


@pytest.mark.parametrize("run", [1, 2])
def test_database_url_is_an_empty_database_of_its_own(database_url: str, run: int) -> None:
    """Every test gets a database no other test used, with no tables in it."""
    with psycopg.connect(database_url) as connection:
        name = connection.execute("SELECT current_database()").fetchone()
        tables = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        connection.execute("CREATE TABLE written_by_run (run int)")
    assert name is not None
    assert name[0] not in _databases_seen
    _databases_seen.add(name[0])
    assert tables == (0,)


def test_terminate_backends_disconnects_the_clients_of_a_database(
    postgres_server: PostgresServer, database_url: str
) -> None:
    """terminate_backends ends every connection to that database and counts them."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        dbname = connection.info.dbname
        assert postgres_server.terminate_backends(dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")


def test_own_postgres_keeps_committed_rows_across_kill(own_postgres: PostgresServer) -> None:
    """Rows committed before a SIGKILL of every PostgreSQL process are there after the next start."""
    with psycopg.connect(own_postgres.url()) as connection:
        connection.execute("CREATE TABLE survivors (id int)")
        connection.execute("INSERT INTO survivors SELECT generate_series(1, 100)")
    own_postgres.kill()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(own_postgres.url(), connect_timeout=1)

    own_postgres.start()
    with psycopg.connect(own_postgres.url()) as connection:
        assert connection.execute("SELECT count(*) FROM survivors").fetchone() == (100,)


@pytest.mark.parametrize(("own_redis", "kept"), [({"appendonly": True}, True), ({}, False)], indirect=["own_redis"])
def test_own_redis_keeps_data_across_kill_only_with_appendonly(own_redis: RedisServer, kept: bool) -> None:
    """After kill and restart, Redis still has its keys with the append-only file and none without."""
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.xadd("interactions", {"n": "1"})
        own_redis.kill()
        own_redis.restart()
        assert client.exists("interactions") == int(kept)
    finally:
        client.close()


def test_paused_redis_answers_only_after_resume(own_redis: RedisServer) -> None:
    """A paused Redis keeps its port open but answers nothing until resumed."""
    client = redis.Redis.from_url(own_redis.url, socket_timeout=0.2)
    try:
        own_redis.pause()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        own_redis.resume()
        assert client.ping()
    finally:
        client.close()


def test_server_context_manager_leaves_no_process_or_directory() -> None:
    """Leaving the with block kills the server and deletes its directory, even when it is paused."""
    with RedisServer() as server:
        pid = server.pid
        server.pause()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not server.dir.exists()
