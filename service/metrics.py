"""Prometheus metrics, one registry per app so tests (and benchmarks) can build several apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Latency buckets from 0.5 ms (CIFAR batch on a GPU) to 30 s (the default request timeout).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every series the service exports; label values are model names, statuses and reasons."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "resnet_serve_requests",
            "Prediction requests by model, HTTP status and protocol (predict, v2-rest, v2-grpc).",
            ["model", "status", "protocol"], registry=r,
        )
        self.images = Counter("resnet_serve_images", "Images classified, by model.", ["model"], registry=r)
        self.rejections = Counter(
            "resnet_serve_rejections", "Requests refused, by model and reason (error code).", ["model", "reason"],
            registry=r,
        )
        self.request_latency = Histogram(
            "resnet_serve_request_seconds", "End-to-end latency of a prediction request (any protocol), body read to response.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "resnet_serve_queue_wait_seconds", "Time an image waited in the batch queue.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.preprocess_latency = Histogram(
            "resnet_serve_preprocess_seconds", "Decode + resize + crop time of one request's images.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_latency = Histogram(
            "resnet_serve_inference_seconds", "onnxruntime time per batch.", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "resnet_serve_batch_size", "Images per inference batch.", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "resnet_serve_queue_depth", "Images waiting for a batch (decoded, not yet running).", ["model", "version"],
            registry=r,
        )
        self.inflight_images = Gauge(
            "resnet_serve_inflight_images",
            "Images admitted and not yet answered (decoding, queued or running): the per-pod autoscaling signal.",
            ["model", "version"], registry=r,
        )
        self.model_info = Gauge(
            "resnet_serve_model_info", "Served models (value 1).",
            ["model", "version", "architecture", "num_classes", "input_size"], registry=r,
        )
        self.provider_info = Gauge(
            "resnet_serve_provider_info",
            "Execution providers per model (value 1); gpu_fallback=true when a GPU was asked for but is unused.",
            ["model", "version", "requested", "active", "gpu_fallback"], registry=r,
        )
        self.version_loads = Counter(
            "resnet_serve_version_loads", "Model versions loaded, warmed and switched in.", ["model"], registry=r,
        )
        self.version_refusals = Counter(
            "resnet_serve_version_refusals",
            "New or changed versions refused (cause=load: the file failed to load or warm; config: config.toml).",
            ["model", "cause"], registry=r,
        )
        self.refused_versions = Gauge(
            "resnet_serve_refused_versions", "Versions on disk currently refused (not served), per model.",
            ["model"], registry=r,
        )
        self.body_bytes = Gauge(
            "resnet_serve_inflight_body_bytes", "Request-body bytes held across connections (MAX_INFLIGHT_BYTES).",
            registry=r,
        )
        self.ready = Gauge("resnet_serve_ready", "1 when every model is loaded, warmed and batching.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
