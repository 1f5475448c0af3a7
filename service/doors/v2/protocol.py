"""The transport-free part of the V2 protocol: model names and their two forms, metadata, config,
repository index, and inference on the shared pipeline. REST and gRPC only translate wire formats.

Each served model ``m`` appears twice, because stock clients (Triton's image_client, perf_analyzer)
insist on exactly one input and one output per model:

* ``m``: input ``images`` UINT8 [-1, crop, crop, 3] (the client did the preprocessing, at the model's
  crop size), output ``probabilities`` FP32 [-1, classes];
* ``m-encoded`` (:data:`ENCODED_SUFFIX`): input ``image_bytes`` BYTES [-1, 1], each element an encoded
  JPEG/PNG/... file decoded and preprocessed server-side exactly as ``/predict`` does; same output.

A real model whose name ends in ``-encoded`` wins over a companion name. Both forms accept Triton's
classification extension on the output: ``classification: k`` returns BYTES [N, k] elements
``"<score>:<index>:<label>"``, highest first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.layout import is_model_name
from service import __version__
from service.doors.topk import top_k
from service.doors.v2.tensors import BYTES, Tensor
from service.engine.manager import ModelManager
from service.engine.served import ServedModel, ServedVersion
from service.errors import ServiceError
from service.parsing import json_int, parse_int, shown
from service.pipeline.call import EncodedImages, Inputs

if TYPE_CHECKING:
    from service.state import ServiceState

SERVER_NAME = "resnet-serve"
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "model_repository", "schedule_policy")
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
ENCODED_SUFFIX = "-encoded"
ENCODED_INPUT = "image_bytes"
#: Triton's schedule-policy request parameter: the request's timeout in microseconds (0: none).
TIMEOUT_PARAMETER = "timeout"


@dataclass(frozen=True)
class V2Model:
    """A V2 model name resolved to a served model and the input form it takes."""

    name: str
    base: str
    encoded: bool

    @property
    def input_name(self) -> str:
        return ENCODED_INPUT if self.encoded else INPUT_NAME


@dataclass
class RequestedOutput:
    """One entry of a request's ``outputs``: which tensor, top-k classification, binary or JSON (REST)."""

    name: str
    classification: int = 0
    binary: bool | None = None


@dataclass
class InferCall:
    """A decoded infer request, whatever transport it came by."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


# --- names, versions, models ---------------------------------------------------------------------


def lookup(manager: ModelManager, name: str) -> V2Model:
    """``name`` as a served model, or as the encoded-image companion of one; 404 otherwise."""
    if name in manager.models:
        return V2Model(name, name, encoded=False)
    if name.endswith(ENCODED_SUFFIX) and name[: -len(ENCODED_SUFFIX)] in manager.models:
        return V2Model(name, name[: -len(ENCODED_SUFFIX)], encoded=True)
    raise ServiceError(404, "unknown_model", f"no model named {shown(name)}; POST /v2/repository/index lists them")


def parse_version(raw: str | None) -> int | None:
    """A version from a URL or a request field: empty means "the highest loaded"."""
    if raw is None or raw == "":
        return None
    try:
        return parse_int(raw, field="model version", minimum=1, code="invalid_version")
    except ServiceError as error:
        raise ServiceError(400, error.code, error.message) from None


def check_name(name: str) -> str:
    """Repository names are folder names the exporter writes; anything else never reaches the loader."""
    if not is_model_name(name):
        raise ServiceError(400, "invalid_model_name", f"{shown(name)} is not a model name in the repository")
    return name


async def repository_control(state: ServiceState, action: str, name: str) -> None:
    """Explicit model control (Triton's model repository extension): load or unload one model by name,
    in every worker process (answered once all have)."""
    mode = state.settings.model_control
    if mode != "explicit":
        raise ServiceError(
            400, "model_control",
            f"model load/unload needs RESNET_SERVE_MODEL_CONTROL=explicit (this server runs {mode!r})",
        )
    name = check_name(name)
    if action == "load":
        await state.manager.load(name)
    else:
        await state.manager.unload(name)
    if state.workers is not None:
        await state.workers.relay(action, name)


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def _inputs(target: V2Model, served: ServedVersion, batch: int = -1) -> list[dict[str, Any]]:
    if target.encoded:
        return [{"name": ENCODED_INPUT, "datatype": BYTES, "shape": [batch, 1]}]
    side = served.model.card.preprocessing.crop_size
    return [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [batch, side, side, 3]}]


def _outputs(served: ServedVersion, batch: int = -1) -> list[dict[str, Any]]:
    return [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [batch, served.model.card.num_classes]}]


def model_metadata(manager: ModelManager, target: V2Model, version: int | None) -> dict[str, Any]:
    served = manager.resolve(target.base, version)
    model = manager.models[target.base]
    return {
        "name": target.name,
        "versions": [str(v) for v in sorted(model.versions)],
        "platform": PLATFORM,
        "inputs": _inputs(target, served),
        "outputs": _outputs(served),
    }


def model_config(manager: ModelManager, target: V2Model, version: int | None) -> dict[str, Any]:
    """Triton's model configuration (JSON form of model_config.proto), batch dimension implicit."""
    served = manager.resolve(target.base, version)
    model = manager.models[target.base]
    s = served.settings
    card = served.model.card
    side = card.preprocessing.crop_size
    if target.encoded:
        model_input = {"name": ENCODED_INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
    else:
        model_input = {"name": INPUT_NAME, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [side, side, 3]}
    return {
        "name": target.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": model.settings.version_policy.describe(),
        "max_batch_size": s.max_batch_size,
        "input": [model_input],
        "output": [
            {"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [card.num_classes], "label_filename": ""}
        ],
        "dynamic_batching": {
            "preferred_batch_size": list(s.buckets),
            "max_queue_delay_microseconds": round(s.max_batch_delay_ms * 1000),
        },
        "instance_group": [
            {"name": target.name, "kind": "KIND_GPU" if served.model.on_gpu else "KIND_CPU", "count": s.instances}
        ],
    }


def service_index(state: ServiceState, ready_only: bool) -> list[dict[str, str]]:
    """The repository index a client sees: this process's, or every worker's merged (:mod:`service.workers`)."""
    if state.workers is not None:
        return state.workers.repository_index(ready_only)
    return repository_index(state.manager, ready_only)


def repository_index(manager: ModelManager, ready_only: bool = False) -> list[dict[str, str]]:
    """Every model (and its encoded companion), per served version, plus those that are not served."""
    rows: list[dict[str, str]] = []
    for name, model in sorted(manager.models.items()):
        for companion in (name, name + ENCODED_SUFFIX):
            if companion != name and companion in manager.models:
                continue
            rows.extend(_index_rows(companion, model, ready_only))
    return rows


def _index_rows(name: str, model: ServedModel, ready_only: bool) -> list[dict[str, str]]:
    rows = [{"name": name, "version": str(v), "state": "READY", "reason": ""} for v in sorted(model.versions)]
    if ready_only:
        return rows
    if model.loading:
        rows.append({"name": name, "version": "", "state": "LOADING", "reason": ""})
    for version, refusal in sorted(model.refused.items()):
        rows.append({"name": name, "version": str(version), "state": "UNAVAILABLE", "reason": refusal.reason})
    if not rows:
        rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": model.status()})
    return rows


def model_ready(manager: ModelManager, target: V2Model, version: int | None) -> bool:
    try:
        manager.resolve(target.base, version)
    except ServiceError as error:
        if error.status == 503 or error.code == "unknown_version":
            return False
        raise
    return True


# --- inference ------------------------------------------------------------------------------------


def timeout_s(value: object) -> float | None:
    """The ``timeout`` request parameter (an integer of microseconds, 0 or absent: none) in seconds; 400
    for anything else. Above the server's REQUEST_TIMEOUT_S it changes nothing: that stays the ceiling."""
    if value is None:
        return None
    micros = json_int(value, field=f"parameters.{TIMEOUT_PARAMETER} (microseconds)")
    return micros / 1e6 if micros else None


def model_inputs(target: V2Model, served: ServedVersion, call: InferCall, max_files: int) -> Inputs:
    """The request's one input as the pipeline takes it (encoded files or pixels), every output it asks
    for checked first: nothing is decoded for a request whose answer cannot be written."""
    tensor = _the_input(target, served, call.inputs)
    classes = served.model.card.num_classes
    for output in call.outputs or ():
        if output.name != OUTPUT_NAME:
            raise ServiceError(
                400, "invalid_request", f"unknown output {shown(output.name, 60)} (model {target.name!r} has {OUTPUT_NAME!r})"
            )
        if not 0 <= output.classification <= classes:
            raise ServiceError(
                400, "invalid_request", f"classification must be between 1 and {classes}, got {output.classification}"
            )
    input_check(target, served, max_files)(0, tensor.name, tensor.datatype, tensor.shape)
    if target.encoded:
        assert tensor.elements is not None
        images = EncodedImages([f"{ENCODED_INPUT}[{i}]" for i in range(len(tensor.elements))], list(tensor.elements))
        tensor.elements = None  # the pipeline drops the encoded bytes once decoded: hold no other reference
        return images
    assert tensor.array is not None
    return tensor.array


def model_outputs(
    target: V2Model, served: ServedVersion, call: InferCall, rows: list[np.ndarray]
) -> list[tuple[Tensor, RequestedOutput]]:
    """The outputs in request order: probabilities, or Triton's classification strings."""
    probabilities = np.stack(rows)
    labels = served.model.labels
    results = []
    for output in call.outputs or [RequestedOutput(OUTPUT_NAME)]:
        if output.classification:
            k = output.classification
            elements = [
                f"{float(row[i])!r}:{i}:{labels[i]}".encode() for row in probabilities for i in top_k(row, k)
            ]
            results.append((Tensor(OUTPUT_NAME, BYTES, (len(rows), k), elements=list(elements)), output))
        else:
            results.append((Tensor(OUTPUT_NAME, "FP32", probabilities.shape, array=probabilities), output))
    return results


InputCheck = Callable[[int, str, str, tuple[int, ...]], None]


def input_check(target: V2Model, served: ServedVersion, max_files: int) -> InputCheck:
    """What a door calls with each input's declared name, datatype and shape, before decoding its data.

    A tensor the model cannot take is refused from its header: a million empty BYTES elements or a
    huge pixel shape never get split or converted (that would cost many times their bytes).
    """
    expected = _inputs(target, served)[0]
    max_images = max_files if target.encoded else served.batcher.max_queue_size

    def check(index: int, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        if index > 0:
            raise ServiceError(
                400, "invalid_request", f"model {target.name!r} takes exactly one input {target.input_name!r}"
            )
        if name != target.input_name:
            hint = f"; send encoded images to {target.base + ENCODED_SUFFIX!r}" if datatype == BYTES and not target.encoded else ""
            raise ServiceError(
                400, "invalid_request",
                f"unknown input {shown(name, 60)}: model {target.name!r} takes {target.input_name!r}{hint}",
            )
        if datatype != expected["datatype"]:
            hint = f"; send encoded images to {target.base + ENCODED_SUFFIX!r}" if datatype == BYTES else ""
            raise ServiceError(
                400, "invalid_request",
                f"input {name!r} has datatype {datatype}, model {target.name!r} expects {expected['datatype']}{hint}",
            )
        dims = list(shape)
        if target.encoded:
            fits = len(dims) in (1, 2) and dims[0] >= 1 and (len(dims) == 1 or dims[1] == 1)
        else:
            fits = len(dims) == 4 and dims[0] >= 1 and dims[1:] == expected["shape"][1:]
        if not fits:
            want = "[N] or [N, 1]" if target.encoded else str(["N", *expected["shape"][1:]]).replace("'", "")
            raise ServiceError(400, "invalid_request", f"input {name!r} has shape {dims}, expected {want}")
        if dims[0] > max_images:
            if target.encoded:
                raise ServiceError(413, "too_many_files", f"more than {max_files} images in one request")
            raise ServiceError(
                413, "too_many_images", f"{dims[0]} images in one request exceed the queue size {max_images}"
            )

    return check


def _the_input(target: V2Model, served: ServedVersion, inputs: list[Tensor]) -> Tensor:
    """Exactly the one input this model form declares (its datatype and shape were checked from the header)."""
    if len(inputs) != 1:
        names = ", ".join(shown(t.name, 40) for t in inputs) or "none"
        raise ServiceError(
            400, "invalid_request", f"model {target.name!r} takes exactly one input {target.input_name!r}; got {names}"
        )
    return inputs[0]
