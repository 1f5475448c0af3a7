"""Our gRPC messages are wire-compatible with Triton's: every field has Triton's number, type and label.

service/v2/proto/inference.proto restates the subset of Triton's grpc_service.proto and
model_config.proto that the service implements, in a package of its own (so both can be imported in
one process). These tests compare it, field by field, with the descriptors tritonclient ships.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2

from service.doors.v2.grpc import SERVICE, GrpcDoor
from service.doors.v2.proto import inference_pb2 as ours

TRITON_FILES = (service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)


def triton_message(name: str) -> Descriptor:
    for file in TRITON_FILES:
        if name in file.message_types_by_name:
            return file.message_types_by_name[name]
    raise AssertionError(f"Triton defines no message {name}")


def triton_enum(name: str) -> EnumDescriptor:
    for file in TRITON_FILES:
        if name in file.enum_types_by_name:
            return file.enum_types_by_name[name]
    raise AssertionError(f"Triton defines no enum {name}")


def all_messages(descriptor: Descriptor) -> list[Descriptor]:
    out = [descriptor]
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            out.extend(all_messages(nested))
    return out


OUR_MESSAGES = [m for top in ours.DESCRIPTOR.message_types_by_name.values() for m in all_messages(top)]


def triton_counterpart(message: Descriptor) -> Descriptor:
    path = message.full_name.removeprefix("resnet_serve.v2.").split(".")
    found = triton_message(path[0])
    for part in path[1:]:
        found = found.nested_types_by_name[part]
    return found


@pytest.mark.parametrize("message", OUR_MESSAGES, ids=lambda m: m.full_name.removeprefix("resnet_serve.v2."))
def test_every_field_has_tritons_number_type_and_label(message: Descriptor) -> None:
    theirs = triton_counterpart(message)
    for field in message.fields:
        assert field.name in theirs.fields_by_name, f"{message.full_name}.{field.name} is not in Triton's message"
        other = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated) == (other.number, other.type, other.is_repeated), field.name
        if field.message_type is not None:
            assert field.message_type.name == other.message_type.name, field.name
        if field.enum_type is not None:
            assert field.enum_type.name == other.enum_type.name, field.name
        assert (field.containing_oneof is None) == (other.containing_oneof is None), field.name


@pytest.mark.parametrize(
    "enum",
    [*ours.DESCRIPTOR.enum_types_by_name.values(),
     *(e for m in OUR_MESSAGES for e in m.enum_types)],
    ids=lambda e: e.full_name.removeprefix("resnet_serve.v2."),
)
def test_every_enum_value_matches(enum: EnumDescriptor) -> None:
    path = enum.full_name.removeprefix("resnet_serve.v2.").split(".")
    theirs = triton_enum(path[0]) if len(path) == 1 else triton_message(path[0]).enum_types_by_name[path[-1]]
    assert {v.name: v.number for v in enum.values}.items() <= {v.name: v.number for v in theirs.values}.items()


def test_every_registered_rpc_is_tritons_with_the_same_messages() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    door = GrpcDoor.__new__(GrpcDoor)  # only the handler table is read: no server, no pipeline
    for name in GrpcDoor._handlers(door):  # type: ignore[arg-type]
        method = service.methods_by_name[name]
        assert ours.DESCRIPTOR.message_types_by_name[method.input_type.name]
        assert ours.DESCRIPTOR.message_types_by_name[method.output_type.name]
