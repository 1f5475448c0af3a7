"""What deploy/kubernetes says about the service agrees with the service itself and with docs/deployment.md: every
setting is a real field with a valid value, ports, probe and scrape paths are routes of the app, the
termination grace covers preStop and the drain, pods are hardened, the models claim is read-only for
serving, selectors find the serving pods.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import tomllib
from deploy_support import (
    KUBERNETES_DIR,
    KUSTOMIZATIONS,
    SERVICE_PREFIX,
    by_kind,
    iter_containers,
    kubectl_problem,
    one,
    parse_settings,
    pod_templates,
    prestop_sleep_s,
    render,
    server_container,
    settings_env,
    settings_fields,
    skip_without,
)
from server import REPO_ROOT

#: The uid the images run as (docker/Dockerfile.*: USER 10001:10001).
IMAGE_UID = 10001

kubectl_present = skip_without(kubectl_problem)


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_every_setting_is_a_real_field_with_a_valid_value(name: str) -> None:
    env = settings_env(render(name))
    fields = settings_fields()
    unknown = [
        key
        for key in env
        if not key.startswith(SERVICE_PREFIX) or key[len(SERVICE_PREFIX) :].lower() not in fields
    ]
    assert not unknown, f"not settings of service/settings.py: {unknown}"
    settings = parse_settings(env)  # raises when a value does not parse
    assert str(settings.host) == "0.0.0.0" and str(settings.model_dir) == "/models"
    assert settings.require_gpu is (name == "overlays/gpu")
    assert env["RESNET_SERVE_API_KEY"] == "<from secretKeyRef>", "the API key must come from a Secret"


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_ports_agree_with_settings_service_and_network_policy(name: str) -> None:
    objects = render(name)
    settings = parse_settings(settings_env(objects))
    container = server_container(objects)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    service = one(objects, "Service")
    assert {port["name"]: (port["port"], port["targetPort"]) for port in service["spec"]["ports"]} == {
        "http": (settings.port, "http"),
        "grpc": (settings.grpc_port, "grpc"),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports, probe
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed = [port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]]
    assert sorted(allowed) == sorted(ports), "the NetworkPolicy must expose exactly the API ports"
    monitor = one(objects, "ServiceMonitor")
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]


def _app_get_routes() -> set[str]:
    """The app's GET paths from its OpenAPI document (FastAPI 0.165 hides included routers from ``app.routes``)."""
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_dir=Path("/nonexistent")))
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


def test_probe_and_scrape_paths_are_routes_of_the_service() -> None:
    routes = _app_get_routes()
    paths = []
    for name in KUSTOMIZATIONS:
        objects = render(name)
        containers = (
            [server_container(objects)]
            if name != "kserve"
            else one(objects, "ServingRuntime")["spec"]["containers"]
        )
        for container in containers:
            paths += [
                container[probe]["httpGet"]["path"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")
                if probe in container
            ]
        paths += [
            endpoint["path"]
            for monitor in by_kind(objects, "ServiceMonitor")
            for endpoint in monitor["spec"]["endpoints"]
        ]
    assert paths and set(paths) <= routes, f"not GET routes of the service: {set(paths) - routes}"
    container = server_container(render("overlays/cpu"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", (
        "liveness must not depend on readiness"
    )
    assert (
        container["readinessProbe"]["httpGet"]["path"]
        == container["startupProbe"]["httpGet"]["path"]
        == "/health/ready"
    )


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_termination_grace_covers_prestop_and_the_service_drain(name: str) -> None:
    objects = render(name)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    settings = parse_settings(settings_env(objects))
    sleep_s = prestop_sleep_s(server_container(objects))
    # Kubernetes counts the grace period from the start of preStop; SIGTERM comes after the sleep.
    assert spec["terminationGracePeriodSeconds"] >= sleep_s + settings.shutdown_grace_s + 5, (
        spec["terminationGracePeriodSeconds"],
        sleep_s,
        settings.shutdown_grace_s,
    )
    # The in-process delay is the non-Kubernetes stand-in for preStop; both would only add up.
    assert settings.shutdown_delay_s == 0
    assert sleep_s >= 5, "endpoint removal takes seconds to reach kube-proxy and ingress controllers"
    runtime = one(render("kserve"), "ServingRuntime")["spec"]["containers"][0]
    runtime_env = {item["name"]: item["value"] for item in runtime["env"]}
    service = one(render("kserve"), "InferenceService")["spec"]["predictor"]
    assert service["terminationGracePeriodSeconds"] > float(runtime_env["RESNET_SERVE_SHUTDOWN_GRACE_S"])


def test_pods_are_hardened() -> None:
    templates = pod_templates(render("overlays/cpu")) + pod_templates(render("overlays/gpu"))
    runtime = one(render("kserve"), "ServingRuntime")
    dockerfiles = [
        (REPO_ROOT / "docker" / name).read_text() for name in ("Dockerfile.serve", "Dockerfile.export")
    ]
    assert all(f"\nUSER {IMAGE_UID}:{IMAGE_UID}\n" in text for text in dockerfiles)
    for where, spec in templates:
        pod = spec["securityContext"]
        assert (
            pod["runAsNonRoot"] is True and pod["runAsUser"] == IMAGE_UID and pod["runAsGroup"] == IMAGE_UID
        ), where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False, where
        for container in iter_containers(spec):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, (where, container["name"])
            assert "memory" in container["resources"]["limits"], (where, container["name"])
    for container in runtime["spec"]["containers"]:
        context = container["securityContext"]
        assert (
            context["runAsNonRoot"]
            and context["runAsUser"] == IMAGE_UID
            and not context["allowPrivilegeEscalation"]
        )
        assert context["readOnlyRootFilesystem"] and context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    namespace = one(render("overlays/cpu"), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_models_claim_is_written_by_the_job_and_read_only_for_serving() -> None:
    objects = render("overlays/cpu")
    claims = {obj["metadata"]["name"] for obj in by_kind(objects, "PersistentVolumeClaim")}

    def mounts(spec: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        volumes = {v["name"]: v for v in spec["volumes"]}
        found = {}
        for container in iter_containers(spec):
            for mount in container.get("volumeMounts", []):
                claim = volumes[mount["name"]].get("persistentVolumeClaim")
                if claim:
                    assert claim["claimName"] in claims
                    found[f"{container['name']}:{claim['claimName']}"] = (
                        mount["mountPath"],
                        mount.get("readOnly", False),
                    )
        return found

    job = one(objects, "Job")["spec"]["template"]["spec"]
    deployment = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert mounts(job)["export:resnet-serve-models"] == ("/models", False)
    serving = mounts(deployment)
    assert serving["server:resnet-serve-models"] == ("/models", True)
    assert serving["wait-for-models:resnet-serve-models"] == ("/models", True)
    assert one(objects, "Job")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--config",
        "/config/models.toml",
        "--model-dir",
        "/models",
    ]
    # The same paths the service is told to use and the image declares.
    assert parse_settings(settings_env(objects)).model_control in ("poll", "explicit"), (
        "new versions without restarts"
    )
    isvc = one(render("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    assert isvc["storageUri"] == "pvc://resnet-serve-models"


def test_kubernetes_model_list_exports_known_architectures() -> None:
    import models

    config = tomllib.loads((KUBERNETES_DIR / "base" / "models.toml").read_text())
    names = models.list_models()
    assert config["model"], "the export Job needs at least one model"
    for entry in config["model"]:
        assert entry["arch"] in names and entry["weights"], entry


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not() -> None:
    gpu = server_container(render("overlays/gpu"))
    cpu = server_container(render("overlays/cpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["image"].endswith(":gpu")
    assert "nvidia.com/gpu" not in str(cpu["resources"]) and cpu["image"].endswith(":cpu")
    tolerations = one(render("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


@pytest.mark.parametrize(
    ("name", "shared"), [("overlays/gpu", False), ("overlays/gpu-shared-cache", True)]
)
def test_engine_cache_is_per_pod_or_one_shared_volume(name: str, shared: bool) -> None:
    """The GPU overlay keeps an emptyDir per pod; gpu-shared-cache mounts one ReadWriteMany claim instead."""
    objects = render(name)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "trt-cache"]
    assert {"/trt-cache"} == {m["mountPath"] for m in server_container(objects)["volumeMounts"] if m["name"] == "trt-cache"}
    claims = {c["metadata"]["name"]: c for c in by_kind(objects, "PersistentVolumeClaim")}
    if shared:
        assert set(volume) == {"name", "persistentVolumeClaim"}
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert "emptyDir" in volume and "resnet-serve-trt-cache" not in claims



@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_selectors_find_the_serving_pods(name: str) -> None:
    objects = render(name)
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    for kind, selector in [
        ("Service", one(objects, "Service")["spec"]["selector"]),
        ("PodDisruptionBudget", one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]),
    ]:
        assert selector.items() <= labels.items(), kind
    service_labels = one(objects, "Service")["metadata"]["labels"]
    assert one(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    spec = deployment["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"] and {
        c["topologyKey"] for c in spec["topologySpreadConstraints"]
    } == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot roll without a gap in capacity"


def readme_kubernetes_section() -> str:
    text = (REPO_ROOT / "docs" / "deployment.md").read_text()
    match = re.search(r"^## Kubernetes\n(.*?)(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE)
    assert match, "docs/deployment.md has no '## Kubernetes' section"
    return match.group(1)


def test_readme_states_what_the_manifests_do() -> None:
    section = readme_kubernetes_section()
    objects = render("overlays/cpu")
    container = server_container(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    settings = parse_settings(settings_env(objects))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        row = re.search(
            rf"^\| `{probe}` \| `GET (\S+)` every (\d+) s, (\d+) failures", section, flags=re.MULTILINE
        )
        assert row, f"docs/deployment.md's Kubernetes table has no {probe} row"
        path, period, failures = row.group(1), int(row.group(2)), int(row.group(3))
        assert (path, period, failures) == (
            container[probe]["httpGet"]["path"],
            container[probe]["periodSeconds"],
            container[probe]["failureThreshold"],
        ), probe
    grace = re.search(r"^\| `terminationGracePeriodSeconds` \| (\d+) s \|", section, flags=re.MULTILINE)
    assert grace and int(grace.group(1)) == spec["terminationGracePeriodSeconds"]
    prestop = re.search(r"^\| `preStop` \| `sleep (\d+)` \|", section, flags=re.MULTILINE)
    assert prestop and float(prestop.group(1)) == prestop_sleep_s(container)
    drain = re.search(r"^\| `RESNET_SERVE_SHUTDOWN_GRACE_S` \| (\d+) s \|", section, flags=re.MULTILINE)
    assert drain and float(drain.group(1)) == settings.shutdown_grace_s
    ports = re.search(r"^\| ports \| (\d+) \(http\), (\d+) \(grpc\) \|", section, flags=re.MULTILINE)
    assert ports and (int(ports.group(1)), int(ports.group(2))) == (settings.port, settings.grpc_port)
    fields = settings_fields()
    for name in set(re.findall(r"RESNET_SERVE_[A-Z0-9_]+", section)):
        assert name[len(SERVICE_PREFIX) :].lower() in fields, f"docs/deployment.md names {name}, not a setting"
    for path in set(re.findall(r"deploy/kubernetes/[\w./-]+", section)):
        assert (REPO_ROOT / path.rstrip(".")).exists(), f"docs/deployment.md names {path}, which does not exist"
