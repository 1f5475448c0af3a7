"""The FastAPI application: ``create_app(settings)`` wires state, doors, errors and metrics.

Per-request logic lives in :mod:`service.pipeline`, the routes in :mod:`service.doors`; this module
only connects them and runs the lifespan (model loading, the repository watcher, the gRPC door,
draining on shutdown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from service import __version__
from service.doors import admin, playground
from service.doors import predict as predict_door
from service.doors.asgi import ServiceApp
from service.doors.schemas import ERRORS, BatchPredictResponse, PredictResponse
from service.doors.v2 import rest as v2_rest
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings
from service.state import ServiceState
from service.tracing import Tracing, from_environment


def create_app(
    settings: Settings | None = None, *, tracing: Callable[[], Tracing | None] = from_environment
) -> FastAPI:
    """A service app with its own state and metrics registry (several may coexist in tests).

    ``tracing`` makes the lifespan's tracer (default: as the ``OTEL_*`` variables say); it runs when the
    lifespan starts, in the process that serves (its exporter thread must not cross a fork).
    """
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings, metrics)
    pipeline = Pipeline(state)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pipeline.tracing = tracer = tracing()
        state.start()  # models load in the background: /health/live answers meanwhile
        if state.workers is not None:
            await state.workers.start()  # a worker replacing a dead one joins the ports once loaded
        grpc_door = None
        if settings.grpc_port:
            from service.doors.v2.grpc import GrpcDoor  # grpcio is imported only when the door is on

            grpc_door = GrpcDoor(pipeline)
            await grpc_door.start()
            state.on_drain.append(grpc_door.stop)
        try:
            yield
        finally:
            await state.stop()
            if grpc_door is not None:
                await grpc_door.stop()
            if state.workers is not None:
                await state.workers.stop()
            if tracer is not None:
                pipeline.tracing = None
                tracer.shutdown()  # the last spans are exported before the process exits

    app = ServiceApp(
        title="resnet-serve",
        version=__version__,
        summary="Image classification with the ResNet family: dynamic batching on onnxruntime, "
        "/predict and the KServe V2 (Open Inference) protocol.",
        lifespan=lifespan,
        # Starlette's slash redirect builds an absolute Location from the client's Host header (an open
        # redirect through any cache or proxy that forwards Host); a path with a stray slash is a 404.
        redirect_slashes=False,
    )
    app.state.service = state
    app.state.pipeline = pipeline
    install_error_handlers(app)

    @app.post(
        "/predict",
        summary="Classify one image (field `file` or a raw image/* body) or several (repeated `files`).",
        response_model=PredictResponse | BatchPredictResponse,
        responses=ERRORS,
        openapi_extra=predict_door.OPENAPI,
    )
    async def predict(request: Request) -> Response:
        return await predict_door.predict(pipeline, request)

    app.include_router(admin.router(pipeline))
    app.include_router(v2_rest.router(pipeline))
    if settings.playground:
        app.include_router(playground.router())
    app.pipeline = pipeline  # from now on /predict and V2 infer skip FastAPI's per-request work
    return app
