"""deploy/kubernetes without a cluster: every kustomization renders, every object validates, and what the
manifests say about the service (ports, probe paths, settings, shutdown timing, metric names) agrees
with the service itself (service/settings.py, service/metrics.py, the app's routes) and the README.

Core objects are validated against the strict OpenAPI schema of each of :data:`KUBERNETES_VERSIONS`
(kubernetes-validate). The custom resources (ServiceMonitor, PrometheusRule, ServingRuntime,
InferenceService) are not in that schema: they are checked against trimmed schemas of their CRDs
written here (required fields, types, enums, no unknown fields), with every embedded core type (a
Container, a LabelSelector, pod-level fields) validated against the core schema itself.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import tomllib
from deploy_support import (
    KUBERNETES_DIR,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    by_kind,
    core_schema,
    iter_containers,
    kubectl_problem,
    one,
    render,
    schema_errors,
)
from server import REPO_ROOT

CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2")
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}
SERVICE_PREFIX = "RESNET_SERVE_"
#: The uid the images run as (docker/Dockerfile.*: USER 10001:10001).
IMAGE_UID = 10001


@pytest.fixture(scope="module", autouse=True)
def _kubectl() -> None:
    problem = kubectl_problem()
    if problem:
        pytest.skip(problem)


def rendered(name: str) -> tuple[dict[str, Any], ...]:
    return render(name)


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


# --- rendering and schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders(name: str) -> None:
    objects = rendered(name)
    kinds = {obj["kind"] for obj in objects}
    expected = (
        {"ServingRuntime", "InferenceService"}
        if name == "kserve"
        else {
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Job",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PrometheusRule",
        }
    )
    assert kinds == expected
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "resnet-serve", obj["metadata"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k != "kserve"])
def test_core_objects_validate_against_the_kubernetes_schema(name: str, version: str) -> None:
    import kubernetes_validate

    checked = []
    for obj in rendered(name):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        assert obj["apiVersion"] in CORE_GROUPS, (
            f"{obj['kind']} {obj['apiVersion']} is neither core nor a known CRD"
        )
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                f"{'/'.join(map(str, error.path))}: {error.message}"
            )
        checked.append(obj["kind"])
    assert len(checked) == 13, checked  # README: "13 per overlay"


# Trimmed schemas of the CRDs (prometheus-operator v0.7x monitoring.coreos.com/v1, KServe 0.11+
# serving.kserve.io): required fields, types and enums as the CRDs define them, for the fields used here.
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _metadata(version: str) -> dict[str, Any]:
    return core_schema("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", version)


def crd_schema(kind: str, version: str) -> dict[str, Any]:
    strict = {"additionalProperties": False}
    if kind == "ServiceMonitor":
        endpoint = {
            "type": "object",
            **strict,
            "required": ["port"],
            "properties": {
                "port": {"type": "string"},
                "path": {"type": "string", "pattern": "^/"},
                "interval": DURATION,
                "scrapeTimeout": DURATION,
                "scheme": {"enum": ["http", "https"]},
            },
        }
        spec = {
            "type": "object",
            **strict,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": core_schema("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", version),
                "endpoints": {"type": "array", "minItems": 1, "items": endpoint},
            },
        }
        api_version = "monitoring.coreos.com/v1"
    elif kind == "PrometheusRule":
        rule = {
            "type": "object",
            **strict,
            "required": ["expr"],
            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
            "properties": {
                "alert": {"type": "string", "minLength": 1},
                "record": {"type": "string"},
                "expr": {"type": "string", "minLength": 1},
                "for": DURATION,
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        }
        group = {
            "type": "object",
            **strict,
            "required": ["name", "rules"],
            "properties": {
                "name": {"type": "string"},
                "interval": DURATION,
                "rules": {"type": "array", "minItems": 1, "items": rule},
            },
        }
        spec = {
            "type": "object",
            **strict,
            "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": group}},
        }
        api_version = "monitoring.coreos.com/v1"
    elif kind == "ServingRuntime":
        model_format = {
            "type": "object",
            **strict,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "autoSelect": {"type": "boolean"},
                "priority": {"type": "integer"},
            },
        }
        spec = {
            "type": "object",
            **strict,
            "required": ["containers", "supportedModelFormats"],
            "properties": {
                "annotations": STRING_MAP,
                "supportedModelFormats": {"type": "array", "minItems": 1, "items": model_format},
                "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
                "multiModel": {"type": "boolean"},
                "containers": {
                    "type": "array",
                    "minItems": 1,
                    "items": core_schema("io.k8s.api.core.v1.Container", version),
                },
            },
        }
        api_version = "serving.kserve.io/v1alpha1"
    elif kind == "InferenceService":
        # Pod-level fields and the model's container fields are checked against the core schema
        # separately (test_custom_resources_validate_structurally).
        model = {
            "type": "object",
            "required": ["modelFormat"],
            "properties": {
                "modelFormat": {
                    "type": "object",
                    **strict,
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                },
                "runtime": {"type": "string"},
                "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                "storageUri": {"type": "string", "pattern": "^(pvc|s3|gs|https?|hf|oci)://"},
            },
        }
        predictor = {
            "type": "object",
            "required": ["model"],
            "properties": {
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                "scaleTarget": {"type": "integer", "minimum": 1},
                "model": model,
            },
        }
        spec = {"type": "object", **strict, "required": ["predictor"], "properties": {"predictor": predictor}}
        api_version = "serving.kserve.io/v1beta1"
    else:
        raise KeyError(kind)
    return {
        "type": "object",
        **strict,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _metadata(version),
            "spec": spec,
        },
    }


#: InferenceService predictor/model keys that are KServe's own; the rest are PodSpec / Container fields.
KSERVE_PREDICTOR_KEYS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "model"}
KSERVE_MODEL_KEYS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_custom_resources_validate_structurally(kind: str, version: str) -> None:
    objects = (
        rendered("kserve") if kind in ("ServingRuntime", "InferenceService") else rendered("overlays/cpu")
    )
    obj = one(objects, kind)
    errors = schema_errors(obj, crd_schema(kind, version), version)
    if kind == "InferenceService":
        predictor = obj["spec"]["predictor"]
        pod_fields = {key: value for key, value in predictor.items() if key not in KSERVE_PREDICTOR_KEYS}
        errors += schema_errors(
            {**pod_fields, "containers": []}, core_schema("io.k8s.api.core.v1.PodSpec", version), version
        )
        container = {key: value for key, value in predictor["model"].items() if key not in KSERVE_MODEL_KEYS}
        errors += schema_errors(
            {**container, "name": "kserve-container"},
            core_schema("io.k8s.api.core.v1.Container", version),
            version,
        )
    assert not errors, errors


def test_structural_schemas_catch_mistakes() -> None:
    """The schemas are not vacuous: a typo, a missing field and a wrong core type all fail."""
    import kubernetes_validate

    version = KUBERNETES_VERSIONS[0]
    deployment = copy.deepcopy(one(rendered("overlays/cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    monitor = one(rendered("overlays/cpu"), "ServiceMonitor")
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    del typo["spec"]["endpoints"]
    assert schema_errors(typo, crd_schema("ServiceMonitor", version), version)
    runtime = one(rendered("kserve"), "ServingRuntime")
    broken = {
        **runtime,
        "spec": {**runtime["spec"], "containers": [{"name": "x", "ports": [{"containerPort": "http"}]}]},
    }
    assert schema_errors(broken, crd_schema("ServingRuntime", version), version)
    rule = one(rendered("overlays/cpu"), "PrometheusRule")
    bad_for = {
        **rule,
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "ten minutes"}]}]},
    }
    assert schema_errors(bad_for, crd_schema("PrometheusRule", version), version)


# --- the service's contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_every_setting_is_a_real_field_with_a_valid_value(name: str) -> None:
    env = settings_env(rendered(name))
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
    objects = rendered(name)
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
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_dir=Path("/nonexistent")))
    return {route.path for route in app.routes if "GET" in getattr(route, "methods", set())}


def test_probe_and_scrape_paths_are_routes_of_the_service() -> None:
    routes = _app_get_routes()
    paths = []
    for name in KUSTOMIZATIONS:
        objects = rendered(name)
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
    container = server_container(rendered("overlays/cpu"))
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", (
        "liveness must not depend on readiness"
    )
    assert (
        container["readinessProbe"]["httpGet"]["path"]
        == container["startupProbe"]["httpGet"]["path"]
        == "/health/ready"
    )


def prestop_sleep_s(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_termination_grace_covers_prestop_and_the_service_drain(name: str) -> None:
    objects = rendered(name)
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
    runtime = one(rendered("kserve"), "ServingRuntime")["spec"]["containers"][0]
    runtime_env = {item["name"]: item["value"] for item in runtime["env"]}
    service = one(rendered("kserve"), "InferenceService")["spec"]["predictor"]
    assert service["terminationGracePeriodSeconds"] > float(runtime_env["RESNET_SERVE_SHUTDOWN_GRACE_S"])


def test_pods_are_hardened() -> None:
    templates = pod_templates(rendered("overlays/cpu")) + pod_templates(rendered("overlays/gpu"))
    runtime = one(rendered("kserve"), "ServingRuntime")
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
    namespace = one(rendered("overlays/cpu"), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_models_claim_is_written_by_the_job_and_read_only_for_serving() -> None:
    objects = rendered("overlays/cpu")
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
    isvc = one(rendered("kserve"), "InferenceService")["spec"]["predictor"]["model"]
    assert isvc["storageUri"] == "pvc://resnet-serve-models"


def test_kubernetes_model_list_exports_known_architectures() -> None:
    import models

    config = tomllib.loads((KUBERNETES_DIR / "base" / "models.toml").read_text())
    names = models.list_models()
    assert config["model"], "the export Job needs at least one model"
    for entry in config["model"]:
        assert entry["arch"] in names and entry["weights"], entry


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not() -> None:
    gpu = server_container(rendered("overlays/gpu"))
    cpu = server_container(rendered("overlays/cpu"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["image"].endswith(":gpu")
    assert "nvidia.com/gpu" not in str(cpu["resources"]) and cpu["image"].endswith(":cpu")
    tolerations = one(rendered("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


@pytest.mark.parametrize("name", ["overlays/cpu", "overlays/gpu"])
def test_selectors_find_the_serving_pods(name: str) -> None:
    objects = rendered(name)
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


# --- metric names ---------------------------------------------------------------------------------------

#: Labels Prometheus adds to every scraped series (target labels of the ServiceMonitor) and `le`.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint", "le"}


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exports (with _total/_bucket/... suffixes) -> its label names."""
    from service.metrics import Metrics

    series: dict[str, set[str]] = {}
    # prometheus_client lists label names only through these attributes: a labelled metric has no
    # samples (so collect() shows nothing) until the service has observed a value.
    for metric in Metrics().registry._names_to_collectors.values():
        labels = set(getattr(metric, "_labelnames", ()))
        kind = getattr(metric, "_type", "")
        name = metric._name
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
        }.get(kind, ("",))
        for suffix in suffixes:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def promql_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for the alerts, the dashboard panels and variables, the HPA and the adapter rule."""
    import json

    import yaml

    objects = rendered("overlays/cpu")
    found = [
        (f"alert {rule['alert']}", rule["expr"])
        for group in one(objects, "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    ]
    dashboard = json.loads(
        next(
            obj
            for obj in by_kind(objects, "ConfigMap")
            if obj["metadata"]["name"] == "resnet-serve-dashboard"
        )["data"]["resnet-serve.json"]
    )
    found += [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]
    found += [
        (f"variable {var['name']}", var["definition"])
        for var in dashboard["templating"]["list"]
        if "definition" in var
    ]
    adapter = yaml.safe_load((KUBERNETES_DIR / "prometheus-adapter" / "values.yaml").read_text())
    found += [("adapter rule", rule["seriesQuery"]) for rule in adapter["rules"]["custom"]]
    return found


def test_every_metric_in_alerts_dashboard_and_autoscaler_is_exported() -> None:
    series = exported_series()
    expressions = promql_expressions()
    assert len(expressions) >= 15
    used: set[str] = set()
    for where, expr in expressions:
        names = set(re.findall(r"\bresnet_serve_\w+", expr))
        assert names, f"{where} reads no resnet_serve metric: {expr}"
        assert names <= series.keys(), f"{where}: {names - series.keys()} not exported by service/metrics.py"
        used |= names
        allowed = set().union(*(series[name] for name in names)) | TARGET_LABELS
        grouped = {
            label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")
        }
        selected = set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|=)", expr))
        assert grouped | selected <= allowed, f"{where}: labels {(grouped | selected) - allowed} do not exist"
    hpa = one(rendered("overlays/cpu"), "HorizontalPodAutoscaler")
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["resnet_serve_queue_depth"] and custom[0] in series
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]), (
        "CPU fallback"
    )
    import yaml

    adapter = yaml.safe_load((KUBERNETES_DIR / "prometheus-adapter" / "values.yaml").read_text())
    assert [rule["name"]["as"] for rule in adapter["rules"]["custom"]] == custom
    # What the issue asks the dashboard and alerts to cover.
    for needed in (
        "images_total",
        "request_seconds_bucket",
        "queue_wait_seconds_bucket",
        "preprocess_seconds_bucket",
        "inference_seconds_bucket",
        "batch_size_bucket",
        "queue_depth",
        "rejections_total",
        "images_dropped_total",
        "provider_info",
        "ready",
    ):
        assert f"resnet_serve_{needed}" in used, needed


def test_alerts_cover_the_failure_modes() -> None:
    rules = {
        rule["alert"]: rule
        for group in one(rendered("overlays/cpu"), "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
    }
    assert set(rules) == {
        "ResnetServeNotReady",
        "ResnetServeGPUFallback",
        "ResnetServeHighRejectionRate",
        "ResnetServeHighDisconnectRate",
        "ResnetServeHighP99Latency",
    }
    startup = server_container(rendered("overlays/gpu"))["startupProbe"]
    budget_min = startup["periodSeconds"] * startup["failureThreshold"] / 60
    assert int(rules["ResnetServeNotReady"]["for"].rstrip("m")) >= budget_min, (
        "a pod still starting is no incident"
    )
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


# --- the README ----------------------------------------------------------------------------------------


def readme_kubernetes_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"^### Kubernetes\n(.*?)(?=^#{2,3} )", text, flags=re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '### Kubernetes' section"
    return match.group(1)


def test_readme_states_what_the_manifests_do() -> None:
    section = readme_kubernetes_section()
    objects = rendered("overlays/cpu")
    container = server_container(objects)
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    settings = parse_settings(settings_env(objects))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        row = re.search(
            rf"^\| `{probe}` \| `GET (\S+)` every (\d+) s, (\d+) failures", section, flags=re.MULTILINE
        )
        assert row, f"README Kubernetes table has no {probe} row"
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
        assert name[len(SERVICE_PREFIX) :].lower() in fields, f"README names {name}, not a setting"
    for path in set(re.findall(r"deploy/kubernetes/[\w./-]+", section)):
        assert (REPO_ROOT / path.rstrip(".")).exists(), f"README names {path}, which does not exist"
