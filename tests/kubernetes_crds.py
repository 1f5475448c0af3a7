"""Trimmed schemas of the custom resources deploy/kubernetes uses (prometheus-operator v0.7x
monitoring.coreos.com/v1, KServe 0.11+ serving.kserve.io): required fields, types and enums as the CRDs
define them, for the fields used here, no unknown fields; embedded core types (a Container, a
LabelSelector) by reference to the core schema of the Kubernetes version checked against.
"""

from __future__ import annotations

from typing import Any

from deploy_support import core_schema

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
#: InferenceService predictor/model keys that are KServe's own; the rest are PodSpec / Container fields.
KSERVE_PREDICTOR_KEYS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "model"}
KSERVE_MODEL_KEYS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}


def record(required: list[str], strict: bool = True, **properties: Any) -> dict[str, Any]:
    """An object schema: these properties, these required, and (``strict``) no others."""
    closed = {"additionalProperties": False} if strict else {}
    return {"type": "object", **closed, "required": required, "properties": properties}


def array_of(items: Any, min_items: int = 1) -> dict[str, Any]:
    return {"type": "array", "minItems": min_items, "items": items}


def specs(version: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """kind -> (apiVersion, schema of its spec) for Kubernetes ``version``'s core types."""
    text, integer, boolean = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
    endpoint = record(
        ["port"], port=text, path={"type": "string", "pattern": "^/"}, interval=DURATION, scrapeTimeout=DURATION,
        scheme={"enum": ["http", "https"]},
    )
    rule = record(
        ["expr"], alert={"type": "string", "minLength": 1}, record=text, expr={"type": "string", "minLength": 1},
        labels=STRING_MAP, annotations=STRING_MAP, **{"for": DURATION},
    ) | {"oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
    group = record(["name", "rules"], name=text, interval=DURATION, rules=array_of(rule))
    model_format = record(["name"], name=text, version=text, autoSelect=boolean, priority=integer)
    # Pod-level fields and the model's container fields are checked against the core schema separately.
    model = record(
        ["modelFormat"], strict=False, modelFormat=record(["name"], name=text, version=text), runtime=text,
        protocolVersion={"enum": ["v1", "v2", "grpc-v2"]},
        storageUri={"type": "string", "pattern": "^(pvc|s3|gs|https?|hf|oci)://"},
    )
    predictor = record(
        ["model"], strict=False, minReplicas={"type": "integer", "minimum": 0},
        maxReplicas={"type": "integer", "minimum": 0}, scaleMetric={"enum": ["cpu", "memory", "concurrency", "rps"]},
        scaleTarget={"type": "integer", "minimum": 1}, model=model,
    )
    return {
        "ServiceMonitor": ("monitoring.coreos.com/v1", record(
            ["selector", "endpoints"], endpoints=array_of(endpoint),
            selector=core_schema("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", version),
        )),
        "PrometheusRule": ("monitoring.coreos.com/v1", record(["groups"], groups=array_of(group))),
        "ServingRuntime": ("serving.kserve.io/v1alpha1", record(
            ["containers", "supportedModelFormats"], annotations=STRING_MAP,
            supportedModelFormats=array_of(model_format),
            protocolVersions={"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
            multiModel=boolean, containers=array_of(core_schema("io.k8s.api.core.v1.Container", version)),
        )),
        "InferenceService": ("serving.kserve.io/v1beta1", record(["predictor"], predictor=predictor)),
    }


def crd_schema(kind: str, version: str) -> dict[str, Any]:
    """The whole object of a custom resource ``kind`` (KeyError for a kind not known here)."""
    api_version, spec = specs(version)[kind]
    return record(
        ["apiVersion", "kind", "metadata", "spec"], apiVersion={"const": api_version}, kind={"const": kind},
        metadata=core_schema("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", version), spec=spec,
    )
