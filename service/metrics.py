"""Prometheus metrics, one registry per app so tests (and benchmarks) can build several apps.

With ``WORKERS`` > 1 every worker process writes its series to prometheus_client's multiprocess files
and a scrape of any worker reads them all (:mod:`service.workers.metrics`): counters and histograms are
summed over the workers (including those that died, so totals never go back), and each gauge says how
it combines: ``livesum`` (queued images, in-flight images and bytes: the pod's total), ``livemax`` (a
model or provider is listed when any live worker serves it; a version refused anywhere counts) or
``livemin`` (``ready``: 1 only when every live worker is).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
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
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        seconds = partial(Histogram, labelnames=["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        by_version = ["model", "version"]

        self.requests = counter(
            "resnet_serve_requests",
            "Prediction requests by model, HTTP status and protocol (predict, v2-rest, v2-grpc).",
            ["model", "status", "protocol"],
        )
        self.images = counter("resnet_serve_images", "Images classified, by model.", ["model"])
        self.rejections = counter(
            "resnet_serve_rejections", "Requests refused, by model and reason (error code).", ["model", "reason"]
        )
        self.images_dropped = counter(
            "resnet_serve_images_dropped",
            "Images never inferred because nobody waits for them any more, by model and reason: deadline (the "
            "request's deadline passed), disconnect (the client hung up or cancelled), shutdown (the drain's "
            "grace ran out), error (another image of the request failed first).",
            ["model", "reason"],
        )
        self.request_latency = seconds(
            "resnet_serve_request_seconds",
            "End-to-end latency of a prediction request (any protocol), body read to response.",
        )
        self.queue_wait = seconds("resnet_serve_queue_wait_seconds", "Time an image waited in the batch queue.")
        self.preprocess_latency = seconds(
            "resnet_serve_preprocess_seconds", "Decode + resize + crop time of one request's images."
        )
        self.inference_latency = seconds("resnet_serve_inference_seconds", "onnxruntime time per batch.")
        self.batch_size = Histogram(
            "resnet_serve_batch_size", "Images per inference batch.", ["model"], buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = gauge(
            "resnet_serve_queue_depth", "Images waiting for a batch (decoded, not yet running).", by_version,
            multiprocess_mode="livesum",
        )
        self.inflight_images = gauge(
            "resnet_serve_inflight_images",
            "Images admitted and not yet answered (decoding, queued or running): the per-pod autoscaling signal.",
            by_version, multiprocess_mode="livesum",
        )
        self.model_info = gauge(
            "resnet_serve_model_info", "Served models (value 1).", [*by_version, "architecture", "num_classes", "input_size"],
            multiprocess_mode="livemax",
        )
        self.provider_info = gauge(
            "resnet_serve_provider_info",
            "Execution providers per model (value 1); gpu_fallback=true when a GPU was asked for but is unused.",
            [*by_version, "requested", "active", "gpu_fallback"], multiprocess_mode="livemax",
        )
        self.version_loads = counter(
            "resnet_serve_version_loads", "Model versions loaded, warmed and switched in.", ["model"]
        )
        self.version_refusals = counter(
            "resnet_serve_version_refusals",
            "New or changed versions refused (cause=load: the file failed to load or warm; config: config.toml).",
            ["model", "cause"],
        )
        self.refused_versions = gauge(
            "resnet_serve_refused_versions", "Versions on disk currently refused (not served), per model.", ["model"],
            multiprocess_mode="livemax",
        )
        self.body_bytes = gauge(
            "resnet_serve_inflight_body_bytes", "Request-body bytes held across connections (MAX_INFLIGHT_BYTES).",
            multiprocess_mode="livesum",
        )
        self.ready = gauge(
            "resnet_serve_ready", "1 when every model is loaded, warmed and batching.", multiprocess_mode="livemin"
        )
        self.worker_restarts = counter(
            "resnet_serve_worker_restarts",
            "Worker processes started in place of one that died (WORKERS > 1), by how it ended (SIGKILL, exit 1).",
            ["cause"],
        )

    def render(self) -> bytes:
        if MULTIPROCESS:
            from service.workers.metrics import render_workers

            return render_workers()
        return generate_latest(self.registry)

    def forget(self, gauge: Gauge, labels: Sequence[str]) -> None:
        """Drop one labelled series (a retired version's). Multiprocess files cannot delete a value: it is
        set to 0 there, which the info series' scrape leaves out and every sum ignores."""
        if MULTIPROCESS:
            gauge.labels(*labels).set(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not implemented in multi-process mode"
            gauge.remove(*labels)


#: prometheus_client decided at import: values live in PROMETHEUS_MULTIPROC_DIR's files (worker processes).
MULTIPROCESS: bool = bool(getattr(values.ValueClass, "_multiprocess", False))
