"""OpenTelemetry traces of inference requests, off unless the standard ``OTEL_*`` variables ask for them.

Each inference request is one SERVER span (named for its door, parented on the caller's W3C
``traceparent``/``tracestate`` from HTTP headers or gRPC metadata) with a child span per stage:
admission, body read, decode, queue wait, response. Each inference batch is one span, linked to every
request it served and child of the first; each request's queue-wait span links back to the batch(es)
its images rode in. Batches serve many requests, so links, not parenthood, join the two.

Cost: with tracing off the pipeline tests one ``is None`` per request and the batcher one per image
(an empty list per batch). With it on, the hot path only records ``time_ns()`` at each stage boundary; the
child spans are created with explicit start and end times when the request ends, and exported by the
SDK's batch processor on its own thread. Figures: docs/observability.md.

The provider is this service's own, not the global one: FastAPI traces its other routes (probes,
/metrics) through the global provider when one is set, and those are not wanted here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from service import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext

log = logging.getLogger(__name__)

#: A request's stages, in order: each is a child span of the request's span.
ADMISSION = "admission"
BODY_READ = "body read"
DECODE = "decode"
QUEUE_WAIT = "queue wait"
RESPONSE = "response"
#: One inference batch.
BATCH = "inference batch"

#: The request span's name and attributes per protocol label (OpenTelemetry's HTTP and RPC conventions).
_GRPC_SERVICE = "inference.GRPCInferenceService"
REQUEST_SPANS: dict[str, tuple[str, dict[str, str]]] = {
    "predict": ("POST /predict", {"http.request.method": "POST", "http.route": "/predict"}),
    "v2-rest": (
        "POST /v2/models/{model_name}/infer",
        {"http.request.method": "POST", "http.route": "/v2/models/{model_name}/infer"},
    ),
    "v2-grpc": (
        f"{_GRPC_SERVICE}/ModelInfer",
        {"rpc.system": "grpc", "rpc.service": _GRPC_SERVICE, "rpc.method": "ModelInfer"},
    ),
}

#: The OTLP exporter's entry point per ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` (default: the spec's).
_OTLP_ENTRY_POINTS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_INSTALL_HINT = "pip install 'resnet-serve[tracing]' (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """A :class:`Tracing` as the ``OTEL_*`` variables configure it, or None when they do not ask for it.

    On when ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``, any installed one) or, unset,
    when an OTLP endpoint is given; ``none``, nothing, or ``OTEL_SDK_DISABLED=true`` leave it off. The
    SDK reads the rest itself: ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_EXPORTER_OTLP_*`` (endpoint,
    headers, timeout, compression), ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_PROPAGATORS``. Missing packages are logged, and the service runs without tracing.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = _exporter_names(environ)
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporters = [_exporter(name, environ)() for name in names]
    except ImportError as missing:
        log.warning(
            "tracing asked for (OTEL_TRACES_EXPORTER=%s) but %s is not installed: serving without tracing; %s",
            ",".join(names), missing.name or missing, _INSTALL_HINT,
        )
        return None
    except (LookupError, ValueError) as problem:
        log.warning("tracing asked for but not configured (%s): serving without tracing", problem)
        return None
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "resnet-serve"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: %s exporter(s), sampler %s", ",".join(names), provider.sampler.get_description())
    return Tracing(provider)


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    return [] if "none" in names else names


def _exporter(name: str, environ: Mapping[str, str]) -> Callable[[], SpanExporter]:
    """The exporter class registered under ``name`` (``otlp``: the one for the configured protocol)."""
    if name == "otlp":
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol not in _OTLP_ENTRY_POINTS:
            raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(_OTLP_ENTRY_POINTS)}")
        name = _OTLP_ENTRY_POINTS[protocol]
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ImportError(f"no installed package provides the {name!r} trace exporter", name=f"exporter {name!r}")
    exporter: Callable[[], SpanExporter] = next(iter(found)).load()
    return exporter


class Tracing:
    """The tracer every request and batch span comes from; ``pipeline.tracing`` is None when off."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import propagate, trace

        self.provider = provider
        self.tracer = provider.get_tracer("resnet-serve", __version__)
        self._extract = propagate.extract  # the OTEL_PROPAGATORS composite (W3C trace context + baggage)
        self._trace = trace

    def request(self, protocol: str, carrier: Mapping[str, str]) -> RequestTrace | None:
        """Start a request's span under the caller's trace context; None when the sampler drops it."""
        name, attributes = REQUEST_SPANS[protocol]
        started = time.time_ns()
        span = self.tracer.start_span(
            name, context=self._extract(carrier), kind=self._trace.SpanKind.SERVER,
            attributes={**attributes, "resnet_serve.protocol": protocol}, start_time=started,
        )
        if not span.is_recording():
            return None
        return RequestTrace(self, span, started, http="http.route" in attributes)

    def batch(
        self, traces: list[RequestTrace], *, model: str, version: str, size: int, started: int, failed: str | None
    ) -> None:
        """One inference batch of ``size`` images that ran from ``started`` (ns) to now, serving ``traces``."""
        trace = self._trace
        riders = list(dict.fromkeys(traces))  # a request with several images in the batch links once
        span = self.tracer.start_span(
            BATCH, context=trace.set_span_in_context(riders[0].span), kind=trace.SpanKind.INTERNAL,
            links=[trace.Link(rider.span.get_span_context()) for rider in riders], start_time=started,
            attributes={"resnet_serve.model": model, "resnet_serve.model_version": version,
                        "resnet_serve.batch_size": size, "resnet_serve.requests": len(riders)},
        )
        if failed is not None:
            span.set_status(trace.Status(trace.StatusCode.ERROR, failed))
        span.end()
        context = span.get_span_context()
        for rider in riders:
            rider.rode(context, started)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter threads (at the end of the lifespan)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's span and its stage boundaries; the stage spans are written when it ends."""

    __slots__ = ("attributes", "batches", "dispatched", "http", "span", "stage", "stage_started", "stages", "tracing")

    def __init__(self, tracing: Tracing, span: Span, started: int, *, http: bool) -> None:
        self.tracing = tracing
        self.span = span
        self.http = http
        self.stage = ADMISSION
        self.stage_started = started
        self.stages: list[tuple[str, int, int]] = []
        self.batches: list[SpanContext] = []
        self.dispatched = 0  # when the last of its images was handed to an inference thread (ns)
        self.attributes: dict[str, Any] = {}

    def enter(self, stage: str) -> None:
        """The current stage ends now (the queue wait: when its last image left the queue) and ``stage`` begins."""
        now = time.time_ns()
        ended = self.dispatched if self.stage == QUEUE_WAIT and self.dispatched else now
        self.stages.append((self.stage, self.stage_started, ended))
        self.stage, self.stage_started = stage, now

    def rode(self, batch: SpanContext, started: int) -> None:
        """Called by the batch span: one of this request's images ran in ``batch``, dispatched at ``started``."""
        self.batches.append(batch)
        self.dispatched = max(self.dispatched, started)

    def finish(self, model: str, status: int, code: str | None) -> None:
        """Write the stage spans (explicit times) and end the request's span with its outcome."""
        trace = self.tracing._trace
        tracer = self.tracing.tracer
        self.enter("")
        parent = trace.set_span_in_context(self.span)
        ended = self.stage_started
        for stage, started, stopped in self.stages:
            links = [trace.Link(batch) for batch in self.batches] if stage == QUEUE_WAIT else ()
            tracer.start_span(stage, context=parent, links=links, start_time=started).end(stopped)
        span = self.span
        span.set_attributes({**self.attributes, "resnet_serve.model": model, "resnet_serve.status": status})
        if self.http:
            span.set_attribute("http.response.status_code", status)
        if code is not None:
            span.set_attribute("error.type", code)
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.end(ended)
