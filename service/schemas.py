"""Response shapes, for /docs. The hot path builds plain dicts of exactly these shapes (no validation)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.model_card import Preprocessing


class Prediction(BaseModel):
    label: str = Field(examples=["tabby"])
    index: int = Field(examples=[281], description="Class index in the model's output.")
    score: float = Field(examples=[0.87], description="Softmax probability.")


class PredictResponse(BaseModel):
    """One image sent as field `file` or as a raw image body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "resnet50",
                    "version": 1,
                    "predictions": [
                        {"label": "tabby", "index": 281, "score": 0.61},
                        {"label": "tiger cat", "index": 282, "score": 0.27},
                    ],
                }
            ]
        }
    )

    model: str
    version: int
    predictions: list[Prediction] = Field(description="Top-k classes, highest score first.")


class FileResult(BaseModel):
    filename: str = Field(examples=["cat.jpg"])
    predictions: list[Prediction]


class BatchPredictResponse(BaseModel):
    """Several images sent as repeated field `files`; results in request order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "resnet20",
                    "version": 1,
                    "results": [
                        {"filename": "a.jpg", "predictions": [{"label": "cat", "index": 3, "score": 0.9}]},
                        {"filename": "b.jpg", "predictions": [{"label": "ship", "index": 8, "score": 0.8}]},
                    ],
                }
            ]
        }
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
    max_queue_size: int
    batch_buckets: list[int]
    pad_to_buckets: bool


class ModelInfo(BaseModel):
    name: str = Field(examples=["resnet50"])
    version: int = Field(examples=[1])
    architecture: str = Field(examples=["resnet50"])
    num_classes: int = Field(examples=[1000])
    input_size: list[int] = Field(examples=[[224, 224, 3]], description="Height, width, channels (uint8).")
    preprocessing: Preprocessing
    requested_providers: list[str] = Field(examples=[["CUDAExecutionProvider", "CPUExecutionProvider"]])
    active_providers: list[str] = Field(examples=[["CPUExecutionProvider"]])
    gpu_fallback: bool = Field(description="A GPU provider was asked for but onnxruntime is not using it.")
    batching: BatchingInfo
    source: dict[str, object] = Field(default_factory=dict, description="Weights provenance from the model card.")
    load_seconds: float = Field(examples=[0.4], description="Time to create the onnxruntime session.")
    warmup_seconds: float = Field(examples=[1.2], description="Time to run every batch bucket once before readiness.")


class ModelsResponse(BaseModel):
    default_model: str | None
    models: list[ModelInfo]
