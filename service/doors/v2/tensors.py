"""V2 tensors on the wire: datatypes, shapes, JSON ``data``, raw bytes, and BYTES length-prefix framing.

Every parser here is total: whatever a client sends becomes a :class:`Tensor` or a 400
:class:`~service.errors.ServiceError` that says which field is wrong, before any large allocation
(a shape claiming 10^9 elements is refused from the shape, a BYTES element claiming more bytes
than remain is refused from its prefix). Datatype names are the protocol's (``BYTES``, not
``STRING``); numbers are little-endian, as the binary tensor data extension specifies.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import ServiceError
from service.parsing import json_int, shown

#: Numeric datatypes and their little-endian dtypes; BYTES is framed separately.
NUMERIC: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
#: Names the protocol defines; BF16 has no NumPy dtype here, so it is known but refused.
DATATYPES = frozenset({*NUMERIC, BYTES, "BF16"})
MAX_DIMS = 8
MAX_DIM = 2**31 - 1
_PREFIX = struct.Struct("<I")


@dataclass
class Tensor:
    """One input or output: numeric ``array`` (shaped) or BYTES ``elements`` (flat, row-major)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    elements: list[bytes | memoryview] | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def parse_datatype(raw: object, *, where: str) -> str:
    if not isinstance(raw, str) or raw not in DATATYPES:
        raise ServiceError(400, "invalid_request", f"{where}: unknown datatype {shown(raw, 40)}")
    return raw


def parse_shape(raw: object, *, where: str) -> tuple[int, ...]:
    """Non-negative dimensions, at most :data:`MAX_DIMS` of them (a JSON list or a proto repeated int64)."""
    if not isinstance(raw, (list, tuple)) and not _is_repeated(raw):
        raise ServiceError(400, "invalid_request", f"{where}: shape must be a list of integers")
    dims = list(raw)  # type: ignore[call-overload]
    if len(dims) > MAX_DIMS:
        raise ServiceError(400, "invalid_request", f"{where}: shape has {len(dims)} dimensions (at most {MAX_DIMS})")
    return tuple(json_int(d, field=f"{where}.shape", minimum=0, maximum=MAX_DIM) for d in dims)


def _is_repeated(raw: object) -> bool:
    return hasattr(raw, "__len__") and hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes, dict))


def check_count(shape: tuple[int, ...], limit: int, *, where: str) -> int:
    """The element count of ``shape``; 400 when it exceeds ``limit`` (what the body could possibly hold)."""
    count = math.prod(shape)
    if count > limit:
        raise ServiceError(
            400, "invalid_request", f"{where}: shape {list(shape)} has {count} elements, more than the request can carry"
        )
    return count


def split_bytes_elements(raw: bytes | memoryview, count: int, *, where: str) -> list[memoryview]:
    """BYTES framing: each element is a 4-byte little-endian length, then that many bytes."""
    view = memoryview(raw).cast("B")
    total = len(view)
    elements: list[memoryview] = []
    position = 0
    while position < total:
        if len(elements) == count:
            raise ServiceError(400, "invalid_request", f"{where}: {total - position} bytes after the last of {count} elements")
        if position + _PREFIX.size > total:
            raise ServiceError(400, "invalid_request", f"{where}: a length prefix is cut off at byte {position}")
        (length,) = _PREFIX.unpack_from(view, position)
        position += _PREFIX.size
        if length > total - position:
            raise ServiceError(
                400, "invalid_request",
                f"{where}: element {len(elements)} claims {length} bytes but only {total - position} remain",
            )
        elements.append(view[position : position + length])
        position += length
    if len(elements) != count:
        raise ServiceError(400, "invalid_request", f"{where}: {len(elements)} BYTES elements for a shape of {count}")
    return elements


def join_bytes_elements(elements: Sequence[bytes]) -> bytes:
    return b"".join(_PREFIX.pack(len(element)) + element for element in elements)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview, *, where: str) -> Tensor:
    """A tensor from its raw bytes (binary extension, or gRPC ``raw_input_contents``)."""
    count = math.prod(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, elements=list(split_bytes_elements(raw, count, where=where)))
    dtype = _numeric(datatype, where)
    if len(raw) != count * dtype.itemsize:
        raise ServiceError(
            400, "invalid_request",
            f"{where}: {len(raw)} bytes of data for shape {list(shape)} of {datatype} ({count * dtype.itemsize} expected)",
        )
    return Tensor(name, datatype, shape, array=np.frombuffer(raw, dtype=dtype).reshape(shape))


def from_json(
    name: str, datatype: str, shape: tuple[int, ...], data: object, *, where: str, base64_bytes: bool = False
) -> Tensor:
    """A tensor from JSON ``data`` (flat or nested row-major, as the protocol allows)."""
    count = math.prod(shape)
    if datatype == BYTES:
        flat = _flatten(data, where)
        if len(flat) != count:
            raise ServiceError(400, "invalid_request", f"{where}: {len(flat)} elements for a shape of {count}")
        return Tensor(name, datatype, shape, elements=[_text_element(item, where, base64_bytes) for item in flat])
    dtype = _numeric(datatype, where)
    if dtype.kind != "b" and _has_booleans(data):
        raise ServiceError(400, "invalid_request", f"{where}: {datatype} data must be numbers, not true/false")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise ServiceError(400, "invalid_request", f"{where}: data is not a rectangular list of numbers") from None
    if values.size != count:
        raise ServiceError(400, "invalid_request", f"{where}: {values.size} values for shape {list(shape)} ({count} expected)")
    return Tensor(name, datatype, shape, array=_cast(values, dtype, datatype, where).reshape(shape))


def from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any, *, where: str) -> Tensor:
    """A tensor from gRPC typed ``contents`` (the field that matches the datatype)."""
    count = math.prod(shape)
    if datatype == BYTES:
        items = list(contents.bytes_contents)
        if len(items) != count:
            raise ServiceError(400, "invalid_request", f"{where}: {len(items)} bytes_contents for a shape of {count}")
        return Tensor(name, datatype, shape, elements=items)
    dtype = _numeric(datatype, where)
    field = _CONTENTS_FIELD[datatype]
    values = getattr(contents, field)
    if len(values) != count:
        raise ServiceError(400, "invalid_request", f"{where}: {len(values)} {field} for a shape of {count}")
    try:
        array = np.fromiter(values, dtype=np.float64 if dtype.kind == "f" else np.int64, count=count)
    except (OverflowError, ValueError):
        raise ServiceError(400, "invalid_request", f"{where}: values outside the range of {datatype}") from None
    return Tensor(name, datatype, shape, array=_cast(array, dtype, datatype, where).reshape(shape))


_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP16": "fp32_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def to_json(tensor: Tensor) -> dict[str, object]:
    """``{"name", "datatype", "shape", "data"}`` with flat row-major data."""
    data: list[object]
    if tensor.elements is not None:
        data = [bytes(element).decode("utf-8", "replace") for element in tensor.elements]
    else:
        assert tensor.array is not None
        data = tensor.array.ravel().tolist()
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "data": data}


def to_raw(tensor: Tensor) -> bytes:
    """Raw bytes of an output (binary extension / gRPC ``raw_output_contents``)."""
    if tensor.elements is not None:
        return join_bytes_elements([bytes(element) for element in tensor.elements])
    assert tensor.array is not None
    return np.ascontiguousarray(tensor.array, dtype=NUMERIC[tensor.datatype]).tobytes()


def _numeric(datatype: str, where: str) -> np.dtype:
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise ServiceError(400, "invalid_request", f"{where}: datatype {datatype} is not supported here")
    return dtype


def _cast(values: np.ndarray, dtype: np.dtype, datatype: str, where: str) -> np.ndarray:
    """Exact conversion to ``dtype``: no silent truncation of floats, wrap-around or strings."""
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(dtype)
    if dtype.kind == "b":
        if kind != "b":
            raise ServiceError(400, "invalid_request", f"{where}: {datatype} data must be true/false")
        return values.astype(dtype)
    if dtype.kind in "iu":
        if kind not in "iu":
            raise ServiceError(400, "invalid_request", f"{where}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise ServiceError(400, "invalid_request", f"{where}: values outside the range of {datatype}")
        return values.astype(dtype)
    if kind not in "iuf":
        raise ServiceError(400, "invalid_request", f"{where}: {datatype} data must be numbers")
    return values.astype(dtype)


def _has_booleans(data: object) -> bool:
    """JSON true/false among numbers: NumPy would silently read them as 1 and 0."""
    stack = [data]
    while stack:
        item = stack.pop()
        if item is True or item is False:
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def _flatten(data: object, where: str) -> list[object]:
    if not isinstance(data, list):
        raise ServiceError(400, "invalid_request", f"{where}: data must be a list")
    flat: list[object] = []
    stack: list[object] = [data]
    while stack:  # iterative: a deeply nested list must not exhaust the interpreter's stack
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _text_element(item: object, where: str, base64_bytes: bool) -> bytes:
    if not isinstance(item, str):
        raise ServiceError(400, "invalid_request", f"{where}: BYTES data in JSON must be strings")
    if base64_bytes:
        try:
            return base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ServiceError(400, "invalid_request", f"{where}: an element is not valid base64") from None
    return item.encode("utf-8", "surrogatepass")
