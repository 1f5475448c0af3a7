"""OpenTelemetry tracing: the spans of a request and of the batch it rode in, as a collector receives them.

The span structure is checked on a real server (uvicorn and the gRPC door on 127.0.0.1, in this
process) whose tracer writes to the SDK's in-memory exporter: per door, the request span continues the
caller's W3C trace context, its stage spans are its children in order, and the batch span links to
every request it served (each request's queue-wait span links back). The wire is checked on the real
``python -m service`` configured only by ``OTEL_*`` variables: its OTLP/HTTP exporter posts to a local
endpoint here, which decodes the protobuf with ``opentelemetry-proto``.
"""

from __future__ import annotations

import asyncio
import http.server
import itertools
import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from conftest import shared_path
from server import free_port, link_repository, run_server, wait_until

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service import tracing
from service.tracing import ADMISSION, BATCH, BODY_READ, DECODE, QUEUE_WAIT, RESPONSE, Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
STAGES = [ADMISSION, BODY_READ, DECODE, QUEUE_WAIT, RESPONSE]


@dataclass
class TracedServer:
    base: str
    grpc_port: int
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def after_requests(self, name: str, count: int = 1) -> list[ReadableSpan]:
        """The finished spans once ``count`` request spans called ``name`` are among them: a request's span
        ends a moment after its answer is sent."""
        wait_until(lambda: len(requests_in(self.spans(), name)) >= count, 10, f"{count} {name} span(s)")
        return self.spans()


@pytest.fixture(scope="module")
def traced(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedServer]:
    """The app on uvicorn in a thread of this process, its tracer exporting to memory."""
    import uvicorn

    from service.__main__ import _http_protocol
    from service.app import create_app
    from service.settings import Settings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    repo = link_repository(model_repo, tmp_path_factory.mktemp("traced"), "resnet20")
    port, grpc_port = free_port(), free_port()
    # Batches wait for company long enough that requests sent together ride in one.
    settings = Settings(model_dir=repo, port=port, grpc_port=grpc_port, grpc_listeners=1, max_batch_delay_ms=200)
    app = create_app(settings, tracing=lambda: Tracing(provider))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=_http_protocol(settings), log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="traced-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the traced server did not get ready"
        time.sleep(0.05)
    try:
        yield TracedServer(base, grpc_port, exporter)
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def jpeg() -> bytes:
    return shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes()


# --- the three doors ----------------------------------------------------------------------------------


def send_predict(server: TracedServer, headers: Mapping[str, str]) -> None:
    response = httpx.post(f"{server.base}/predict?model=resnet20", content=jpeg(),
                          headers={"Content-Type": "image/jpeg", **headers}, timeout=30)
    assert response.status_code == 200, response.text


def send_v2_rest(server: TracedServer, headers: Mapping[str, str]) -> None:
    from tritonclient.http import InferenceServerClient, InferInput

    image = InferInput("image_bytes", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[jpeg()]], dtype=np.object_))
    client = InferenceServerClient(server.base.removeprefix("http://"))
    try:
        client.infer("resnet20-encoded", [image], headers=dict(headers))
    finally:
        client.close()


def send_v2_grpc(server: TracedServer, headers: Mapping[str, str]) -> None:
    from tritonclient.grpc import InferenceServerClient, InferInput

    image = InferInput("image_bytes", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[jpeg()]], dtype=np.object_))
    client = InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        client.infer("resnet20-encoded", [image], headers=dict(headers))  # sent as gRPC metadata
    finally:
        client.close()


#: (door, send one request with these headers, the request span's name, its protocol-specific attributes)
DOORS = [
    ("/predict", send_predict, "POST /predict", {"http.route": "/predict", "http.response.status_code": 200}),
    ("V2 REST", send_v2_rest, "POST /v2/models/{model_name}/infer",
     {"http.route": "/v2/models/{model_name}/infer", "http.response.status_code": 200}),
    ("V2 gRPC", send_v2_grpc, "inference.GRPCInferenceService/ModelInfer",
     {"rpc.system": "grpc", "rpc.method": "ModelInfer"}),
]


def requests_in(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name and span.kind == SpanKind.SERVER]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: (s.start_time or 0),
    )


def tree(spans: list[ReadableSpan], root: ReadableSpan) -> str:
    """The request's trace as text: span, parent, duration, links (for failure messages and the report)."""
    by_id = {span.context.span_id: span for span in spans}
    lines = []
    for span in [root, *children(spans, root)]:
        parent = by_id.get(span.parent.span_id).name if span.parent and span.parent.span_id in by_id else (
            f"caller {span.parent.span_id:016x}" if span.parent else "-")
        links = [by_id[link.context.span_id].name if link.context.span_id in by_id else f"{link.context.span_id:016x}"
                 for link in span.links]
        millis = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        lines.append(f"{span.name:<45} parent {parent:<45} {millis:8.3f} ms  links {links}")
    return "\n".join(lines)


@pytest.mark.parametrize(("send", "name", "attributes"), [d[1:] for d in DOORS], ids=[d[0] for d in DOORS])
def test_a_request_is_one_span_under_the_callers_trace_with_its_stages_and_its_batch(
    traced: TracedServer, send: Any, name: str, attributes: dict[str, Any]
) -> None:
    traced.exporter.clear()
    send(traced, {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"})
    spans = traced.after_requests(name)
    (request,) = requests_in(spans, name)
    assert f"{request.context.trace_id:032x}" == TRACE_ID, "the caller's trace continues"
    assert request.parent is not None and f"{request.parent.span_id:016x}" == CALLER_SPAN and request.parent.is_remote
    assert request.context.trace_state.to_header() == "vendor=opaque"
    expected = {"resnet_serve.model": "resnet20", "resnet_serve.model_version": "1", "resnet_serve.images": 1,
                "resnet_serve.status": 200, **attributes}
    assert {key: request.attributes.get(key) for key in expected} == expected, tree(spans, request)
    assert request.status.status_code == StatusCode.UNSET

    stages = children(spans, request)
    assert [s.name for s in stages if s.name != BATCH] == STAGES, tree(spans, request)
    ordered = [s for s in stages if s.name != BATCH]
    for earlier, later in itertools.pairwise(ordered):
        assert earlier.end_time <= later.start_time, tree(spans, request)  # type: ignore[operator]
    assert request.start_time <= ordered[0].start_time and ordered[-1].end_time <= request.end_time  # type: ignore[operator]

    (queue,) = [s for s in stages if s.name == QUEUE_WAIT]
    (batch_link,) = queue.links
    (batch,) = [s for s in spans if s.context.span_id == batch_link.context.span_id]
    assert batch.name == BATCH and batch.context.trace_id == request.context.trace_id  # the lone rider is its parent
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    assert batch.attributes is not None and batch.attributes["resnet_serve.batch_size"] == 1
    assert queue.end_time <= batch.start_time + 1_000_000  # type: ignore[operator]  # the wait ends at dispatch (ns)


def test_one_batch_span_links_every_request_it_served(traced: TracedServer) -> None:
    traced.exporter.clear()

    async def together() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(
                client.post(f"{traced.base}/predict?model=resnet20", content=jpeg(), headers={"Content-Type": "image/jpeg"})
                for _ in range(4)
            ))

    asyncio.run(together())
    spans = traced.after_requests("POST /predict", 4)
    requests = requests_in(spans, "POST /predict")
    batches = [s for s in spans if s.name == BATCH]
    assert len(requests) == 4
    riders = {link.context.span_id for batch in batches for link in batch.links}
    assert riders == {r.context.span_id for r in requests}, "every request is linked from the batch it rode in"
    shared = max(batches, key=lambda b: len(b.links))
    assert len(shared.links) >= 2, "requests sent together share a batch"
    assert shared.attributes is not None and shared.attributes["resnet_serve.batch_size"] == len(shared.links)
    assert shared.parent is not None and shared.parent.span_id in riders  # child of one rider, linked from all
    queue_links = {
        link.context.span_id for s in spans if s.name == QUEUE_WAIT for link in s.links
    }
    assert queue_links == {b.context.span_id for b in batches}, "each request's queue wait links to its batch"


#: (case, request, status, error code, span status)
FAILURES = [
    ("unknown model", "/predict?model=nope", 404, "unknown_model", StatusCode.UNSET),
    ("deadline", "/predict?model=resnet20&timeout_ms=1", 504, "timeout", StatusCode.ERROR),
]


@pytest.mark.parametrize(("path", "status", "code", "span_status"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_a_failed_request_span_says_how_it_ended(
    traced: TracedServer, path: str, status: int, code: str, span_status: StatusCode
) -> None:
    traced.exporter.clear()
    response = httpx.post(f"{traced.base}{path}", content=jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == status
    (request,) = requests_in(traced.after_requests("POST /predict"), "POST /predict")
    assert request.attributes is not None
    assert request.attributes["resnet_serve.status"] == status and request.attributes["error.type"] == code
    assert request.status.status_code == span_status


def test_untraced_callers_start_their_own_trace(traced: TracedServer) -> None:
    traced.exporter.clear()
    send_predict(traced, {})
    (request,) = requests_in(traced.after_requests("POST /predict"), "POST /predict")
    assert request.parent is None and request.context.trace_id != int(TRACE_ID, 16)


# --- configuration from the environment ----------------------------------------------------------------

#: (case, environment, on, what the log says)
ENVIRONMENTS = [
    ("nothing set: off", {}, False, ""),
    ("an OTLP endpoint alone: on", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, True, "tracing on: otlp"),
    ("console exporter", {"OTEL_TRACES_EXPORTER": "console"}, True, "tracing on: console"),
    ("exporter none", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False, ""),
    ("SDK disabled", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False, ""),
    ("unknown protocol", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "pigeon"}, False,
     "not configured"),
    ("exporter not installed", {"OTEL_TRACES_EXPORTER": "zipkin_json"}, False, "pip install"),
    ("sampler from the environment", {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio",
                                      "OTEL_TRACES_SAMPLER_ARG": "0.25"}, True, "TraceIdRatioBased{0.25}"),
]


@pytest.mark.parametrize(("environ", "on", "logged"), [e[1:] for e in ENVIRONMENTS], ids=[e[0] for e in ENVIRONMENTS])
def test_tracing_is_configured_by_the_otel_variables_only(
    environ: dict[str, str], on: bool, logged: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        if key.startswith("OTEL_TRACES_SAMPLER"):
            monkeypatch.setenv(key, value)  # read by the SDK itself
    with caplog.at_level(logging.INFO, logger="service.tracing"):
        made = tracing.from_environment(environ)
    try:
        assert (made is not None) == on
        if logged:
            assert logged in caplog.text
        else:  # off without being asked for: nothing to say
            assert "tracing" not in caplog.text.lower(), caplog.text
    finally:
        if made is not None:
            made.shutdown()


def test_without_the_sdk_the_service_says_so_and_runs_untraced(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if opentelemetry-sdk were absent
    with caplog.at_level(logging.WARNING, logger="service.tracing"):
        assert tracing.from_environment({"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert "serving without tracing" in caplog.text and "resnet-serve[tracing]" in caplog.text


# --- the wire: OTLP/HTTP from the real service -----------------------------------------------------------


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            type(self).received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    """A local OTLP/HTTP endpoint keeping every ExportTraceServiceRequest body it receives."""
    handler = type("Collector", (_Collector,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    finally:
        server.shutdown()
        server.server_close()


def test_the_otlp_http_exporter_sends_the_spans_on_the_wire(
    model_repo: Path, tmp_path: Path, collector: tuple[str, list[bytes]]
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    endpoint, received = collector
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "serve-under-test"}
    repo = link_repository(model_repo, tmp_path, "resnet20")
    with run_server(repo, env=env) as server:
        response = httpx.post(server.url("/predict?model=resnet20"), content=jpeg(),
                              headers={"Content-Type": "image/jpeg", "traceparent": TRACEPARENT}, timeout=30)
        assert response.status_code == 200
        assert "tracing on: otlp" in server.log()
        deadline = time.monotonic() + 20
        spans: list[Any] = []
        while not any(s.name == "POST /predict" for s in spans):
            assert time.monotonic() < deadline, f"nothing exported: {server.log()[-2000:]}"
            time.sleep(0.05)
            spans = []
            for body in list(received):
                export = ExportTraceServiceRequest.FromString(body)
                for resource_spans in export.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    assert resource["service.name"] == "serve-under-test"
                    spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    (request,) = [s for s in spans if s.name == "POST /predict"]
    assert request.trace_id.hex() == TRACE_ID and request.parent_span_id.hex() == CALLER_SPAN
    assert request.kind == request.SPAN_KIND_SERVER
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["resnet_serve.model"].string_value == "resnet20"
    assert attributes["http.response.status_code"].int_value == 200
    stages = [s for s in spans if s.parent_span_id == request.span_id]
    assert {s.name for s in stages} == {*STAGES, BATCH}
    (batch,) = [s for s in stages if s.name == BATCH]
    assert [link.span_id for link in batch.links] == [request.span_id]
    assert all(request.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= request.end_time_unix_nano
               for s in stages if s.name != BATCH)


def test_grpc_metadata_carries_the_trace_context(traced: TracedServer) -> None:
    """The same through grpc's own stub (metadata keys are lower case on the wire)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    traced.exporter.clear()
    request = service_pb2.ModelInferRequest(model_name="resnet20")
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    request.raw_input_contents.append(bytes(32 * 32 * 3))
    with grpc.insecure_channel(f"127.0.0.1:{traced.grpc_port}") as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("traceparent", TRACEPARENT),), timeout=30)
    spans = traced.after_requests("inference.GRPCInferenceService/ModelInfer")
    (span,) = requests_in(spans, "inference.GRPCInferenceService/ModelInfer")
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert [s.name for s in children(spans, span) if s.name != BATCH] == [ADMISSION, BODY_READ, QUEUE_WAIT, RESPONSE]
