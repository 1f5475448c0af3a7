"""The V2 gRPC messages: a ``ModelInferRequest`` in, a ``ModelConfig`` out, and decoding that answers 400.

Requests arrive as bytes and are parsed here rather than by grpc's deserializer, so a message protobuf
cannot decode is INVALID_ARGUMENT like any other bad input (grpc's own would answer UNKNOWN).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from service.doors.v2.proto import inference_pb2 as pb
from service.doors.v2.protocol import InferCall, InputCheck, RequestedOutput
from service.doors.v2.tensors import Tensor, from_contents, from_raw, parse_datatype, parse_shape
from service.errors import ServiceError

#: Budget charge per value of typed contents (the protobuf container's slot, then an int64/float64 copy).
TYPED_ELEMENT_BYTES = 12


def parse_infer_request(request: Any, check: InputCheck | None = None) -> InferCall:
    """A ``ModelInferRequest`` -> :class:`InferCall`: raw contents (in input order) or typed contents.

    ``check(index, name, datatype, shape)`` vets each input against the model before its data is converted.
    """
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ServiceError(
            400, "invalid_request", f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs"
        )
    inputs: list[Tensor] = []
    for index, item in enumerate(request.inputs):
        where = f"inputs[{index}]"
        datatype = parse_datatype(item.datatype, where=f"{where}.datatype")
        shape = parse_shape(list(item.shape), where=where)
        if check is not None:
            check(index, item.name, datatype, shape)
        if raw:
            inputs.append(from_raw(item.name, datatype, shape, raw[index], where=where))
        else:
            inputs.append(from_contents(item.name, datatype, shape, item.contents, where=where))
    outputs = None
    if len(request.outputs):
        outputs = []
        for index, item in enumerate(request.outputs):
            classification = 0
            if "classification" in item.parameters:
                parameter = item.parameters["classification"]
                choice = parameter.WhichOneof("parameter_choice")
                if choice not in ("int64_param", "uint64_param"):
                    raise ServiceError(400, "invalid_request", f"outputs[{index}].classification must be an integer")
                classification = int(getattr(parameter, choice))
                if classification < 0:
                    raise ServiceError(400, "invalid_request", f"outputs[{index}].classification must be positive")
            outputs.append(RequestedOutput(item.name, classification))
    return InferCall(inputs, outputs, request.id or None)


def typed_elements(request: Any) -> int:
    """Values in the request's typed ``contents`` fields (len() of repeated fields: nothing is copied)."""
    return sum(
        len(getattr(tensor.contents, field)) for tensor in request.inputs for field in _CONTENT_FIELDS
    )

_CONTENT_FIELDS = (
    "bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents", "fp32_contents",
    "fp64_contents", "bytes_contents",
)


def config_message(config: dict[str, Any]) -> Any:
    """The JSON model configuration as a ``ModelConfig`` message."""
    policy = config["version_policy"]
    if "all" in policy:
        version_policy = pb.ModelVersionPolicy(all=pb.ModelVersionPolicy.All())
    elif "specific" in policy:
        version_policy = pb.ModelVersionPolicy(
            specific=pb.ModelVersionPolicy.Specific(versions=policy["specific"]["versions"])
        )
    else:
        version_policy = pb.ModelVersionPolicy(
            latest=pb.ModelVersionPolicy.Latest(num_versions=policy["latest"]["num_versions"])
        )
    return pb.ModelConfig(
        name=config["name"],
        platform=config["platform"],
        backend=config["backend"],
        version_policy=version_policy,
        max_batch_size=config["max_batch_size"],
        input=[
            pb.ModelInput(name=i["name"], data_type=i["data_type"], format=i["format"], dims=i["dims"])
            for i in config["input"]
        ],
        output=[
            pb.ModelOutput(name=o["name"], data_type=o["data_type"], dims=o["dims"], label_filename=o["label_filename"])
            for o in config["output"]
        ],
        dynamic_batching=pb.ModelDynamicBatching(**config["dynamic_batching"]),
        instance_group=[pb.ModelInstanceGroup(**g) for g in config["instance_group"]],
    )


def parse_message(message: Any, raw: bytes) -> Any:
    """``message.FromString(raw)``; a message protobuf cannot decode is a 400 like any other bad input."""
    try:
        return message.FromString(raw)
    except DecodeError as exc:
        raise ServiceError(400, "invalid_request", f"the {message.__name__} message does not decode: {str(exc)[:200]}") from None
