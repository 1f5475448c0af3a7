"""The contract between export/ and service/: what an exported ONNX file says about itself.

export/ writes a :class:`ModelCard` into the ONNX file's ``metadata_props``; the service reads it
back from ``InferenceSession.get_modelmeta().custom_metadata_map``. The file alone is enough to serve
it: labels, preprocessing and provenance travel inside. Each top-level field is its own metadata key
(JSON-encoded where it is not a plain string) so tools like Netron show them readably.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servable.preprocessing import Preprocessing

#: Bumped when the layout of the card changes incompatibly.
CARD_FORMAT = "resnet-serve/1"

#: Tensor names every exported graph uses.
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"

class WeightsSource(BaseModel):
    """Where the weights came from, so a served answer can be traced to a checkpoint file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: str = Field(description="What was passed to the checkpoint loader (path, URL, named checkpoint).")
    sha256: str | None = Field(default=None, description="SHA-256 of the checkpoint file; None for random init.")


class Quantization(BaseModel):
    """How an ``int8`` file was quantized and what its accuracy gate measured (``export.quantization``).

    ``top1_agreement`` and ``max_abs_diff`` compare the INT8 file with the fp32 reference on
    ``holdout_images`` images that were not among the calibration images; the export refuses to
    write a file whose agreement is below ``min_agreement``.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    tool: str = Field(description="Quantizer and version, e.g. 'onnxruntime 1.31.1 quantize_static'.")
    format: str = Field(default="QDQ", description="ONNX representation: QDQ or QOperator.")
    activations: str = Field(default="uint8", description="Activation type.")
    weights: str = Field(default="int8", description="Weight type.")
    weight_bits: int = Field(
        default=8, ge=2, le=8,
        description="Range the int8 weights use: 7 ([-64, 64]) computes exactly on every x86 CPU; 8 (files "
        "from before the field existed) saturates in onnxruntime's kernels on CPUs without VNNI.",
    )
    per_channel: bool = True
    calibration_method: str = Field(default="MinMax", description="MinMax, Entropy or Percentile.")
    calibration_moving_average: bool = Field(
        default=False, description="MinMax ranges averaged over the calibration batches instead of their extremes."
    )
    bias_correction: bool = Field(
        default=False,
        description="Each convolution's mean output shift from rounding its weights, measured on the "
        "calibration images, taken out of its bias.",
    )
    calibration_images: int = Field(ge=1, description="Images the activation ranges were calibrated on.")
    calibration_source: str = Field(description="Where the calibration images came from.")
    calibration_sha256: str = Field(description="SHA-256 over the calibration files' bytes, in order.")
    float_nodes: tuple[str, ...] = Field(default=(), description="Nodes deliberately left in float.")
    reference: str = Field(description="What the gate compared with (the fp32 model).")
    holdout_images: int = Field(ge=0, description="Held-out images the gate measured on.")
    holdout_source: str = ""
    top1_agreement: float = Field(ge=0.0, le=1.0, description="Share of held-out images with the same top-1.")
    max_abs_diff: float = Field(ge=0.0, description="Largest |probability difference|, held-out images.")
    min_agreement: float = Field(ge=0.0, le=1.0, description="The gate's threshold at export time.")


class ExportInfo(BaseModel):
    """Versions and settings of the export, for reproducing it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    torch_version: str | None = Field(default=None, description="None for an imported ONNX file (no torch).")
    onnx_version: str
    opset: int
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    exported_at: str = Field(description="UTC timestamp, ISO 8601.")
    quantization: Quantization | None = Field(default=None, description="Set exactly when precision is int8.")

    @model_validator(mode="after")
    def _quantization_iff_int8(self) -> ExportInfo:
        if (self.precision == "int8") != (self.quantization is not None):
            raise ValueError("an int8 export carries its quantization record, and only an int8 export does")
        return self


class ModelCard(BaseModel):
    """Everything the service needs to know about an exported model, stored inside the ONNX file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = CARD_FORMAT
    architecture: str
    num_classes: int = Field(gt=0)
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    source: WeightsSource
    export: ExportInfo
    verification: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _labels_match_classes(self) -> ModelCard:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        return self

    def to_metadata(self) -> dict[str, str]:
        """One string per top-level field, as ONNX ``metadata_props`` want them."""
        props: dict[str, str] = {}
        for key, value in self.model_dump(mode="json").items():
            props[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return props

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> ModelCard:
        """Parse what :meth:`to_metadata` wrote; raises :class:`InvalidModelCard` on anything else."""
        if props.get("format") != CARD_FORMAT:
            raise InvalidModelCard(
                f"metadata format is {props.get('format')!r}, expected {CARD_FORMAT!r}"
                " (was this file written by `python -m export`?)"
            )
        fields: dict[str, Any] = {}
        for key in cls.model_fields:
            if key not in props:
                continue
            raw = props[key]
            if key in ("format", "architecture"):
                fields[key] = raw
                continue
            try:
                fields[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidModelCard(f"metadata field {key!r} is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidModelCard(f"metadata does not describe a model: {exc}") from None


class InvalidModelCard(ValueError):
    """The ONNX file lacks a usable model card."""
