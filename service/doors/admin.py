"""The operator's door: liveness and readiness probes, ``/models`` (what is served, how, and what was
refused) and ``/metrics``. None of it takes the inference path."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from servable.card import ModelCard
from service import __version__
from service.doors.schemas import ERRORS, ErrorResponse, Liveness, ModelsResponse, Readiness
from service.engine.served import ServedModel, ServedVersion
from service.metrics import CONTENT_TYPE
from service.pipeline import Pipeline
from service.state import ServiceState


def router(pipeline: Pipeline) -> APIRouter:
    """Probes, /models and /metrics, bound to one app's pipeline."""
    state = pipeline.state
    metrics = state.metrics
    app = APIRouter()

    @app.get("/health/live", response_model=Liveness, summary="200 while the process runs (also while loading).")
    async def live() -> Response:
        return JSONResponse({"status": "alive"})

    @app.get(
        "/health/ready",
        response_model=Readiness,
        responses={503: {"model": ErrorResponse, "description": "Not ready; the message says why."}},
        summary="200 when every model is loaded, warmed and batching; 503 with the reason otherwise.",
    )
    async def ready() -> Response:
        is_ready, reason = state.readiness()
        if is_ready:
            return JSONResponse({"ready": True, "reason": None, "models": state.model_status})
        return JSONResponse(
            {
                "error": {"code": "not_ready", "message": reason},
                "ready": False,
                "reason": reason,
                "models": state.model_status,
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get(
        "/models",
        response_model=ModelsResponse,
        responses={401: ERRORS[401]},
        summary="Served models: versions, input, preprocessing, precision, providers, effective settings.",
    )
    async def models(request: Request) -> Response:
        pipeline.authorize(request.headers.getlist("authorization"))
        return JSONResponse(models_body(state))

    @app.get("/metrics", summary="Prometheus text exposition.", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def models_body(state: ServiceState) -> dict[str, Any]:
    """What /models shows: every served model with its versions, the refused and unavailable ones."""
    manager = state.manager
    settings = state.settings
    served = [model for model in manager.models.values() if model.versions]
    default = settings.default_model or (next(iter(manager.models)) if len(manager.models) == 1 else None)
    body = {
        "server_version": __version__,
        "default_model": default,
        "models": [_model_info(model) for model in served],
        "unavailable": [
            {"name": model.name, "status": model.status(), "refused": _refused(model)}
            for model in manager.models.values() if not model.versions
        ],
        "not_exported": [{"name": name, "reason": why} for name, why in sorted(manager.not_exported.items())],
        "runtime": {
            "cpus": settings.cpus.as_dict(),
            "decode_threads": settings.decode_threads,
            "fast_jpeg": state.fast_jpeg,
            "model_control": settings.model_control,
            "repository_poll_s": settings.repository_poll_s if settings.model_control == "poll" else 0,
            "max_inflight_bytes": settings.max_inflight_bytes,
            "workers": settings.worker_count,
        },
    }
    if state.workers is not None:  # the answer is one worker's; this says what each of them serves
        body["workers"] = state.workers.describe()
    return body


def _model_info(served: ServedModel) -> dict[str, Any]:
    latest = served.latest()
    assert latest is not None
    info = _version_info(latest)
    info.update(
        {
            "name": served.name,
            "versions": [_version_summary(v) for _, v in sorted(served.versions.items())],
            "versions_on_disk": list(served.on_disk),
            "refused": _refused(served),
            "settings": served.settings.as_dict(),
            "config_error": served.config_error,
        }
    )
    return info


def _version_info(version: ServedVersion) -> dict[str, Any]:
    model = version.model
    card = model.card
    side = card.preprocessing.crop_size
    s = version.settings
    return {
        "version": version.version,
        "architecture": card.architecture,
        "num_classes": card.num_classes,
        "input_size": [side, side, 3],
        "preprocessing": card.preprocessing.model_dump(mode="json"),
        "precision": card.export.precision,
        "verification": _verification_summary(card, model.int8_exact),
        "requested_providers": model.requested_providers,
        "active_providers": model.active_providers,
        "gpu_fallback": model.gpu_fallback,
        "nodes_per_provider": model.nodes_per_provider,
        "provider_notes": list(model.provider_notes),
        "batching": {
            "max_batch_size": s.max_batch_size,
            "max_batch_delay_ms": s.max_batch_delay_ms,
            "max_queue_size": version.batcher.max_queue_size,
            "max_queue_wait_s": s.queue_wait_s(model.images_per_s),
            "measured_images_per_s": None if model.images_per_s is None else round(model.images_per_s, 1),
            "batch_buckets": list(model.buckets),
            "pad_to_buckets": model.pad_to_buckets,
            "instances": s.instances,
            "intra_op_threads": s.intra_op_threads,
        },
        "source": card.source.model_dump(mode="json"),
        "load_seconds": round(model.load_seconds, 3),
        "warmup_seconds": round(model.warmup_seconds, 3),
    }


def _version_summary(version: ServedVersion) -> dict[str, Any]:
    card = version.model.card
    return {
        "version": version.version,
        "precision": card.export.precision,
        "architecture": card.architecture,
        "loaded_at": version.loaded_at,
        "in_flight": version.batcher.load,
        "source_sha256": card.source.sha256,
    }


def _refused(served: ServedModel) -> list[dict[str, Any]]:
    return [{"version": v, "reason": r.reason, "at": r.at} for v, r in sorted(served.refused.items())]


#: Verification figures worth showing an operator (the full record stays in the model card).
_SHOWN_FIGURES = ("top1_agreement", "max_abs_diff", "images", "passed", "skipped", "reference")


def _verification_summary(card: ModelCard, int8_exact: bool | None) -> dict[str, Any]:
    """What export measured: for INT8, the accuracy gate on held-out images against the fp32 reference,
    and whether this CPU computes the file as the gate did (``exact_on_this_cpu``, see ``LoadedModel``)."""
    summary = {key: card.verification[key] for key in _SHOWN_FIGURES if key in card.verification}
    quantization = card.export.quantization
    if quantization is not None:
        summary.update(
            {
                "top1_agreement": quantization.top1_agreement,
                "max_abs_diff": quantization.max_abs_diff,
                "min_agreement": quantization.min_agreement,
                "holdout_images": quantization.holdout_images,
                "calibration_images": quantization.calibration_images,
                "reference": quantization.reference,
                "weight_bits": quantization.weight_bits,
                "exact_on_this_cpu": int8_exact,
            }
        )
    return summary



