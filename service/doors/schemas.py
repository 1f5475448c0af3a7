"""Response shapes, for /docs. The hot path builds plain dicts of exactly these shapes (no validation)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from servable.preprocessing import Preprocessing


def _example(**answer: Any) -> ConfigDict:
    """The example /docs shows for an answer of version 1 of a model."""
    return ConfigDict(json_schema_extra={"examples": [{**answer, "version": 1}]})


class Prediction(BaseModel):
    label: str = Field(examples=["tabby"])
    index: int = Field(examples=[281], description="Class index in the model's output.")
    score: float = Field(examples=[0.87], description="Softmax probability.")


class PredictResponse(BaseModel):
    """One image sent as field `file` or as a raw image body."""

    model_config = _example(
        model="resnet50",
        predictions=[{"label": "tabby", "index": 281, "score": 0.61}, {"label": "tiger cat", "index": 282, "score": 0.27}],
    )

    model: str
    version: int
    predictions: list[Prediction] = Field(description="Top-k classes, highest score first.")


class FileResult(BaseModel):
    filename: str = Field(examples=["cat.jpg"])
    predictions: list[Prediction]


class BatchPredictResponse(BaseModel):
    """Several images sent as repeated field `files`; results in request order."""

    model_config = _example(
        model="resnet20",
        results=[
            {"filename": "a.jpg", "predictions": [{"label": "cat", "index": 3, "score": 0.9}]},
            {"filename": "b.jpg", "predictions": [{"label": "ship", "index": 8, "score": 0.8}]},
        ],
    )

    model: str
    version: int
    results: list[FileResult]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["queue_full"], description="Stable machine-readable reason.")
    message: str = Field(examples=["model 'resnet50' has 128 images queued (limit 128); retry later"])


class ErrorResponse(BaseModel):
    """Every non-2xx answer has this shape."""

    error: ErrorDetail


class Liveness(BaseModel):
    status: str = Field(examples=["alive"])


class Readiness(BaseModel):
    ready: bool
    reason: str | None = Field(default=None, examples=["loading models (2 of 5 ready)"])
    models: dict[str, str] = Field(default_factory=dict, description="Per model: ready, loading or the error.")


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int = Field(description="Images admitted (decoding or queued) before 503 queue_full.")
    max_queue_wait_s: float | None = Field(
        description="The wait budget the queue was sized from (before its floor and cap); null when "
        "MAX_QUEUE_SIZE set it or nothing was timed (warm-up off)."
    )
    measured_images_per_s: float | None = Field(
        description="One instance's warmed throughput at its largest batch (null without warm-up)."
    )
    batch_buckets: list[int]
    pad_to_buckets: bool
    instances: int = Field(description="Inference threads (sharing one session) this version runs batches on.")
    intra_op_threads: int = Field(description="onnxruntime threads per batch.")


class VersionSummary(BaseModel):
    version: int
    precision: str = Field(examples=["fp32"], description="fp32, fp16 or int8 (from the model card).")
    architecture: str
    loaded_at: float = Field(description="Unix time the version was switched in.")
    in_flight: int = Field(description="Images admitted and not yet handed to inference.")
    source_sha256: str | None


class Refusal(BaseModel):
    version: int
    reason: str = Field(examples=["model.onnx: onnxruntime cannot load it: ..."])
    at: float


class ModelInfo(BaseModel):
    name: str = Field(examples=["resnet50"])
    version: int = Field(examples=[1])
    architecture: str = Field(examples=["resnet50"])
    num_classes: int = Field(examples=[1000])
    input_size: list[int] = Field(examples=[[224, 224, 3]], description="Height, width, channels (uint8).")
    preprocessing: Preprocessing
    requested_providers: list[str] = Field(examples=[["CUDAExecutionProvider", "CPUExecutionProvider"]])
    active_providers: list[str] = Field(examples=[["CPUExecutionProvider"]])
    gpu_fallback: bool = Field(
        description="A GPU provider was asked for but runs no node (TensorRT asked for and only CUDA running counts)."
    )
    nodes_per_provider: dict[str, int] = Field(
        default_factory=dict, examples=[{"TensorrtExecutionProvider": 126}],
        description="Graph nodes per provider as onnxruntime assigned them (active_providers comes from this).",
    )
    provider_notes: list[str] = Field(
        default_factory=list,
        description="Why the providers differ from the setting: an INT8 file kept off TensorRT, a session that failed.",
    )
    batching: BatchingInfo
    source: dict[str, object] = Field(default_factory=dict, description="Weights provenance from the model card.")
    load_seconds: float = Field(examples=[0.4], description="Time to create the onnxruntime session.")
    warmup_seconds: float = Field(examples=[1.2], description="Time to run every batch bucket once before readiness.")
    precision: str = Field(examples=["int8"], description="Precision of the highest served version.")
    verification: dict[str, object] = Field(
        default_factory=dict, description="Recorded export verification: top-1 agreement, max |dprob|, images."
    )
    versions: list[VersionSummary] = Field(description="Every version served (unpinned requests get the highest).")
    versions_on_disk: list[int]
    refused: list[Refusal] = Field(description="New or changed versions that failed to load or warm.")
    settings: dict[str, object] = Field(description="Effective per-model settings (config.toml over the globals).")
    config_error: str | None = Field(default=None, description="Why the model's config.toml is not applied.")


class UnavailableModel(BaseModel):
    name: str
    status: str = Field(examples=["failed: v1: model.onnx: ..."])
    refused: list[Refusal]


class NotExported(BaseModel):
    name: str = Field(examples=["resnet50"])
    reason: str = Field(
        examples=["https://download.pytorch.org/models/resnet50-11ad3fa6.pth is not cached and downloads are off"],
        description="What the exporter said when it could not export the model, and what to do.",
    )


class ModelsResponse(BaseModel):
    server_version: str = Field(examples=["0.3.0"], description="The service's version (pyproject.toml's).")
    default_model: str | None
    models: list[ModelInfo]
    unavailable: list[UnavailableModel] = Field(default_factory=list)
    not_exported: list[NotExported] = Field(
        default_factory=list, description="Models of the export config that the exporter could not export."
    )
    runtime: dict[str, object] = Field(
        default_factory=dict,
        description="Usable CPUs (affinity, cgroup quota), decode threads, whether plain JPEGs take the libjpeg-turbo "
        "path (fast_jpeg: the setting, and the start-up probe against Pillow), model control, worker processes.",
    )
    workers: dict[str, object] | None = Field(
        default=None,
        description="With WORKERS > 1: which worker answered (this_worker), each worker's served versions and "
        "readiness, and whether they all serve the same (agree).",
    )


#: The error answers of the inference routes, for /docs.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "Missing or wrong API key (only when RESNET_SERVE_API_KEY is set).",
        404: "Unknown model or version.",
        408: "The upload stalled.",
        413: "Body, image pixels or number of files over the limit.",
        415: "Not a supported image or Content-Type.",
        422: "Empty, truncated or corrupt image, bad form or query.",
        503: "Queue full, body budget full, or not ready (Retry-After tells when to retry).",
        504: "Not answered within the request timeout.",
    }.items()
}
