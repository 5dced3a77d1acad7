"""KEDA's scaler and the workers connect to Redis from one definition: rendered with `kubectl kustomize` and
resolved as Kubernetes and KEDA resolve them, the worker's URL and the scaler's parameters name the same server,
database, TLS and ACL user for each way an operator may set them, and against a real Redis with an ACL user and a
non-zero database both see the same group; the scaler pointed at a database without the group errors (so KEDA's
fallback keeps workers) instead of reading a lag of 0."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from redis.connection import SSLConnection, parse_url

from .test_deploy import DEPLOY, kustomize, load_yaml_documents

STREAM, GROUP = "interactions", "interactionlog"


class Connection(NamedTuple):
    """Where and as whom a Redis client connects."""

    host: str
    port: int
    db: int
    username: str
    password: str
    tls: bool


def render(tmp_path: Path, settings: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The kustomization rendered from a copy of deploy/ whose settings.env has `settings` changed: the
    resources by kind, and the settings ConfigMap as "settings"."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    env_file = copy / "kubernetes" / "settings.env"
    lines = env_file.read_text().splitlines()
    for name, value in settings.items():
        (index,) = (i for i, line in enumerate(lines) if line.startswith(f"{name}="))
        lines[index] = f"{name}={value}"
    env_file.write_text("\n".join(lines) + "\n")
    documents = kustomize(copy)
    rendered = {document["kind"]: document for document in documents}
    (rendered["settings"],) = (d for d in documents if d["metadata"]["name"].startswith("interactionlog-settings-"))
    return rendered


def container_env(container: dict[str, Any], config: dict[str, str], secret: dict[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet (and KEDA's resolver) builds it: envFrom the settings ConfigMap,
    then each env entry in order, secretKeyRefs read and $(VAR) references expanded."""
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"].startswith("interactionlog-settings")
    env = dict(config)
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda match: env.get(match[1], match[0]), item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def resolve(rendered: dict[str, dict[str, Any]], secret: dict[str, str]) -> tuple[Connection, list[Connection]]:
    """The worker's connection (its composed URL, parsed by redis-py as the worker does) and each KEDA trigger's
    (address from the environment, login and TLS through the TriggerAuthentication, databaseIndex literal)."""
    config = rendered["settings"]["data"]
    containers = {c["name"]: c for c in rendered["Deployment"]["spec"]["template"]["spec"]["containers"]}
    env = {name: container_env(container, config, secret) for name, container in containers.items()}
    url = parse_url(env["worker"]["INTERACTIONLOG_REDIS_URL"])  # type: ignore[no-untyped-call]
    worker = Connection(
        url["host"],
        url["port"],
        url["db"],
        url.get("username", ""),
        url.get("password", ""),
        url.get("connection_class") is SSLConnection,
    )
    authentication = rendered["TriggerAuthentication"]["spec"]
    auth = {ref["parameter"]: secret[ref["key"]] for ref in authentication["secretTargetRef"]}
    auth |= {ref["parameter"]: env[ref["containerName"]][ref["name"]] for ref in authentication["env"]}
    triggers = []
    for trigger in rendered["ScaledObject"]["spec"]["triggers"]:
        metadata = trigger["metadata"]
        # KEDA reads the environment of the scale target's first container unless envSourceContainerName says.
        source = rendered["ScaledObject"]["spec"]["scaleTargetRef"].get("envSourceContainerName", "worker")
        host, _, port = env[source][metadata["addressFromEnv"]].rpartition(":")
        tls = {"enable": True, "disable": False}[auth["tls"]]  # KEDA refuses any other value
        triggers.append(
            Connection(host, int(port), int(metadata["databaseIndex"]), auth["username"], auth["password"], tls)
        )
    return worker, triggers


def example_secret(**changes: str) -> dict[str, str]:
    (example,) = load_yaml_documents(DEPLOY / "kubernetes" / "secret.example.yaml")
    secret: dict[str, str] = example["stringData"]
    return secret | {key.replace("_", "-"): value for key, value in changes.items()}


CASES = {
    "as shipped": ({}, {}),
    "a non-zero database": ({"REDIS_DATABASE": "3"}, {}),
    "TLS": ({"REDIS_SCHEME": "rediss", "REDIS_TLS": "enable", "REDIS_ADDRESS": "redis.example:6380"}, {}),
    "an ACL user": ({}, {"redis_username": "logger", "redis_password": "Hex-0123456789abcdef_~."}),
    "the default user": ({}, {"redis_username": ""}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_scaler_and_the_worker_connect_alike(case: str, tmp_path: Path) -> None:
    """For each way the connection may be set (settings.env's REDIS_* and the Secret's login), every trigger of
    the ScaledObject connects to the server, database, TLS and user the worker's URL names."""
    settings, secret_changes = CASES[case]
    rendered = render(tmp_path, settings)
    worker, triggers = resolve(rendered, example_secret(**secret_changes))
    if settings.get("REDIS_DATABASE"):
        assert worker.db == int(settings["REDIS_DATABASE"])
    if settings.get("REDIS_TLS") == "enable":
        assert worker.tls
    assert len(triggers) == 2
    for trigger in triggers:
        assert trigger == worker


def test_tls_is_said_alike_to_both_readers_in_the_shipped_settings(tmp_path: Path) -> None:
    """settings.env's REDIS_SCHEME and REDIS_TLS agree (redis with disable, rediss with enable)."""
    config = render(tmp_path, {})["settings"]["data"]
    assert (config["REDIS_SCHEME"], config["REDIS_TLS"]) in {("redis", "disable"), ("rediss", "enable")}


@pytest.fixture
def acl_user(redis_url: str) -> Any:
    """An ACL user of the session Redis, for this test only: (name, password)."""
    client = redis.Redis.from_url(redis_url)
    name, password = f"logger-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    yield name, password
    client.acl_deluser(name)
    client.close()


def test_with_an_acl_user_and_database_3_the_scaler_sees_the_workers_backlog(
    redis_url: str, acl_user: tuple[str, str], tmp_path: Path
) -> None:
    """Against a real Redis: the group the worker's composed URL creates in database 3, logged in as an ACL user,
    shows the same lag and pending to a client connected with the scaler's parameters; the scaler's pending
    read on database 0 (the old, unconfigured default) fails with NOGROUP, an error KEDA's fallback answers with
    workers, never a quiet 0."""
    address = redis_url.removeprefix("redis://").split("/")[0]
    name, password = acl_user
    rendered = render(tmp_path, {"REDIS_ADDRESS": address, "REDIS_DATABASE": "3"})
    worker, triggers = resolve(rendered, example_secret(redis_username=name, redis_password=password))
    consumer = redis.Redis(**_client_options(worker))
    consumer.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for index in range(5):
        consumer.xadd(STREAM, {"v": "1", "data": f'{{"n": {index}}}'})
    consumer.xreadgroup(GROUP, "w1", {STREAM: ">"}, count=2)
    for trigger in triggers:
        scaler = redis.Redis(**_client_options(trigger))
        (group,) = scaler.xinfo_groups(STREAM)
        assert (group["lag"], group["pending"]) == (3, 2)
        assert scaler.xpending(STREAM, GROUP)["pending"] == 2
        scaler.close()
    unconfigured = redis.Redis(**_client_options(triggers[0]._replace(db=0)))
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        unconfigured.xpending(STREAM, GROUP)
    unconfigured.close()
    consumer.close()


def _client_options(connection: Connection) -> dict[str, Any]:
    assert not connection.tls
    return {
        "host": connection.host,
        "port": connection.port,
        "db": connection.db,
        "username": connection.username or None,
        "password": connection.password or None,
    }
