"""deploy/kubernetes without a cluster: every kustomization renders and every object validates.

Core objects are validated against the strict OpenAPI schema of each of :data:`KUBERNETES_VERSIONS`
(kubernetes-validate). The custom resources (ServiceMonitor, PrometheusRule, ServingRuntime,
InferenceService) are not in that schema: they are checked against the trimmed schemas of their CRDs in
``kubernetes_crds.py``, with every embedded core type (a Container, a LabelSelector, pod-level fields)
validated against the core schema itself. What the manifests say about the service is checked in
test_kubernetes_contract.py, their metric names in test_kubernetes_metrics.py.
"""

from __future__ import annotations

import copy

import pytest
from deploy_support import (
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    core_schema,
    kubectl_problem,
    one,
    render,
    schema_errors,
    skip_without,
)
from kubernetes_crds import KSERVE_MODEL_KEYS, KSERVE_PREDICTOR_KEYS, crd_schema

CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2")
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}

kubectl_present = skip_without(kubectl_problem)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders(name: str) -> None:
    objects = render(name)
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
    for obj in render(name):
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
    # docs/deployment.md: "13 per overlay" (14 with the shared engine cache's claim)
    assert len(checked) == 13 + (name == "overlays/gpu-shared-cache"), checked


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_custom_resources_validate_structurally(kind: str, version: str) -> None:
    objects = render("kserve") if kind in ("ServingRuntime", "InferenceService") else render("overlays/cpu")
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
    deployment = copy.deepcopy(one(render("overlays/cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
    monitor = one(render("overlays/cpu"), "ServiceMonitor")
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    del typo["spec"]["endpoints"]
    assert schema_errors(typo, crd_schema("ServiceMonitor", version), version)
    runtime = one(render("kserve"), "ServingRuntime")
    broken = {
        **runtime,
        "spec": {**runtime["spec"], "containers": [{"name": "x", "ports": [{"containerPort": "http"}]}]},
    }
    assert schema_errors(broken, crd_schema("ServingRuntime", version), version)
    rule = one(render("overlays/cpu"), "PrometheusRule")
    bad_for = {
        **rule,
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "ten minutes"}]}]},
    }
    assert schema_errors(bad_for, crd_schema("PrometheusRule", version), version)
