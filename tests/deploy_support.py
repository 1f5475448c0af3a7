"""Helpers for the deployment tests: rendering the kustomize tree and reading what it says, Kubernetes
schemas, promtool, HAProxy.

Each external tool is optional: ``*_problem()`` says why a test cannot run here (the test then skips with
that reason, :func:`skip_without`) and is None when the tool is present. ``.ci/run`` installs them on
Debian when it can.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from server import REPO_ROOT

KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
#: Every kustomization a user applies (overlays/*, kserve) by its path under deploy/kubernetes.
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "overlays/gpu-shared-cache", "kserve")
#: Kubernetes releases the rendered core objects must validate against: the newest schema
#: kubernetes-validate ships (pinned) and the oldest release the manifests claim to support.
KUBERNETES_VERSIONS = ("1.37", "1.30")
#: kubectl's kustomize must know `labels` and Components (kustomize >= 4.1, kubectl >= 1.21).
MIN_KUBECTL = (1, 21)


def kubectl_problem() -> str | None:
    """Why `kubectl kustomize` cannot run here, or None."""
    if shutil.which("kubectl") is None:
        return "kubectl is not installed (Debian: apt-get install kubectl): cannot render deploy/kubernetes"
    probe = subprocess.run(
        ["kubectl", "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        info = json.loads(probe.stdout)["clientVersion"]
        version = (int(info["major"]), int(re.match(r"\d+", info["minor"]).group()))  # type: ignore[union-attr]
    except (ValueError, KeyError, AttributeError, TypeError):
        return f"cannot read kubectl's version: {probe.stdout[:200]} {probe.stderr[:200]}"
    if version < MIN_KUBECTL:
        oldest = ".".join(map(str, MIN_KUBECTL))
        return (
            f"kubectl {version[0]}.{version[1]} is older than {oldest}: its kustomize lacks labels/components"
        )
    return None


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/kubernetes/<kustomization>`` as parsed objects (cached per session)."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES_DIR / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# --- schemas ------------------------------------------------------------------------------------------


def _schema_dir(version: str) -> Path:
    root = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    return Path(str(root.joinpath(f"v{version}.0-local-strict")))


@cache
def core_definitions(version: str) -> dict[str, Any]:
    """The strict OpenAPI definitions of Kubernetes ``version`` (as kubernetes-validate ships them)."""
    return json.loads((_schema_dir(version) / "_definitions.json").read_text())


def core_schema(definition: str, version: str) -> dict[str, Any]:
    """A JSON schema for one core definition, e.g. ``io.k8s.api.core.v1.Container``, with its references."""
    definitions = core_definitions(version)
    return {"$ref": f"{definitions['$id']}#/$defs/{definition}"}


def validator(schema: Mapping[str, Any], version: str) -> Any:
    """A Draft 2020-12 validator for ``schema`` that can reference the core definitions of ``version``."""
    import jsonschema
    from referencing import Registry, Resource

    registry = Resource.from_contents(core_definitions(version)) @ Registry()
    return jsonschema.Draft202012Validator(dict(schema), registry=registry)


def schema_errors(instance: Any, schema: Mapping[str, Any], version: str) -> list[str]:
    """Every violation as 'path: message' (empty when valid)."""
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in validator(schema, version).iter_errors(instance)
    ]


# --- promtool -----------------------------------------------------------------------------------------


def promtool_problem() -> str | None:
    if shutil.which("promtool") is None:
        return "promtool is not installed (Debian: apt-get install prometheus): PromQL is not checked"
    return None


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --- HAProxy ------------------------------------------------------------------------------------------


def haproxy_problem() -> str | None:
    if shutil.which("haproxy") is None:
        return (
            "HAProxy is not installed (Debian: apt-get install haproxy; .ci/run installs it as root): "
            "the rolling-update test behind a real load balancer cannot run"
        )
    return None


@dataclass
class HAProxy:
    """A running ``haproxy -db`` and its admin socket (the runtime API)."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    port: int
    log_path: Path

    def command(self, line: str) -> str:
        """One runtime API command; the answer (the socket closes after it)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` for the servers of ``backend``: {server name: {column: value}}."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = (dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line)
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_haproxy(config: str, workdir: Path, socket_path: Path, port: int) -> HAProxy:
    """Check ``config`` with ``haproxy -c``, start it in the foreground and wait for its socket and port."""
    config_path = workdir / "haproxy.cfg"
    config_path.write_text(config)
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(config_path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, f"haproxy -c refused the config:\n{check.stdout}\n{check.stderr}\n{config}"
    log_path = workdir / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    proxy = HAProxy(process, socket_path, port, log_path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            proxy.command("show info")
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proxy
        except OSError:
            time.sleep(0.05)
    proxy.stop()
    raise TimeoutError(f"haproxy did not come up:\n{log_path.read_text()}")


def skip_without(*problems: Callable[[], str | None]) -> Any:
    """An autouse module fixture that skips the module, with the reason, when a tool is missing."""

    @pytest.fixture(scope="module", autouse=True)
    def tools_present() -> None:
        for problem in problems:
            reason = problem()
            if reason:
                pytest.skip(reason)

    return tools_present


# --- what the manifests say -----------------------------------------------------------------------------

SERVICE_PREFIX = "RESNET_SERVE_"


def iter_containers(pod_spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def pod_templates(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) for every Deployment and Job."""
    return [
        (f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
        for obj in objects
        if obj["kind"] in ("Deployment", "Job")
    ]


def server_container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(container for container in spec["containers"] if container["name"] == "server")


def prestop_sleep_s(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def settings_env(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The RESNET_SERVE_* environment the server container gets (ConfigMap, then explicit values)."""
    container = server_container(objects)
    maps = {obj["metadata"]["name"]: obj.get("data", {}) for obj in by_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", f"<from {next(iter(item.get('valueFrom', {'': 0})))}>")
    return env


def settings_fields() -> dict[str, Any]:
    from service.settings import Settings

    return dict(Settings.model_fields)


def parse_settings(env: dict[str, str]) -> Any:
    """Settings built from ``env`` exactly as the service reads its environment (ValidationError if not)."""
    from service.settings import Settings

    values = {
        key[len(SERVICE_PREFIX) :].lower(): value
        for key, value in env.items()
        if not value.startswith("<from")
    }
    return Settings(**values)


def rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's groups (overlays/cpu)."""
    return list(one(render("overlays/cpu"), "PrometheusRule")["spec"]["groups"])


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard the monitoring ConfigMap carries (overlays/cpu)."""
    config = next(
        obj
        for obj in by_kind(render("overlays/cpu"), "ConfigMap")
        if obj["metadata"]["name"] == "resnet-serve-dashboard"
    )
    return dict(json.loads(config["data"]["resnet-serve.json"]))


def adapter_rules() -> list[dict[str, Any]]:
    """prometheus-adapter's custom metric rules (deploy/kubernetes/prometheus-adapter/values.yaml)."""
    values = yaml.safe_load((KUBERNETES_DIR / "prometheus-adapter" / "values.yaml").read_text())
    return list(values["rules"]["custom"])
