"""The datatype table: KServe names ⇄ numpy dtypes ⇄ config `TYPE_*` names, and BYTES packing."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from naiad.domain.errors import invalid

# KServe name -> (numpy dtype, element byte size; 0 for variable-size BYTES).
# BF16 has no numpy dtype: its elements travel as their raw 16 bits in a uint16 array.
_TABLE: dict[str, tuple[np.dtype[Any], int]] = {
    "BOOL": (np.dtype(np.bool_), 1),
    "UINT8": (np.dtype(np.uint8), 1),
    "UINT16": (np.dtype(np.uint16), 2),
    "UINT32": (np.dtype(np.uint32), 4),
    "UINT64": (np.dtype(np.uint64), 8),
    "INT8": (np.dtype(np.int8), 1),
    "INT16": (np.dtype(np.int16), 2),
    "INT32": (np.dtype(np.int32), 4),
    "INT64": (np.dtype(np.int64), 8),
    "FP16": (np.dtype(np.float16), 2),
    "FP32": (np.dtype(np.float32), 4),
    "FP64": (np.dtype(np.float64), 8),
    "BF16": (np.dtype(np.uint16), 2),
    "BYTES": (np.dtype(np.object_), 0),
}

DATATYPES: frozenset[str] = frozenset(_TABLE)

_BY_DTYPE: dict[np.dtype[Any], str] = {dtype: name for name, (dtype, _) in _TABLE.items() if name not in ("BF16",)}

_LITTLE_ENDIAN: dict[str, np.dtype[Any]] = {
    name: dtype.newbyteorder("<") for name, (dtype, _) in _TABLE.items() if name != "BYTES"
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype that holds elements of `datatype` (uint16 bits for BF16, object for BYTES)."""
    return _TABLE[datatype][0]


def element_size(datatype: str) -> int:
    """Bytes per element, 0 for BYTES."""
    return _TABLE[datatype][1]


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The KServe name for a numpy dtype; str and bytes arrays are BYTES."""
    name = _BY_DTYPE.get(dtype)
    if name is not None:
        return name
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    raise ValueError(f"numpy dtype {dtype} has no KServe datatype")


def from_config_type(config_type: str) -> str:
    """`TYPE_FP32` -> `FP32`; `TYPE_STRING` -> `BYTES`."""
    name = config_type[5:] if config_type.startswith("TYPE_") else config_type
    return "BYTES" if name == "STRING" else name


def to_config_type(datatype: str) -> str:
    """`FP32` -> `TYPE_FP32`; `BYTES` -> `TYPE_STRING`."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def element_count(shape: Iterable[int]) -> int:
    """The number of elements in a tensor of `shape`."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def from_raw(datatype: str, shape: list[int], buffer: bytes | memoryview, what: str) -> np.ndarray:
    """A tensor read from its little-endian, row-major bytes without copying them.

    `what` names the tensor and model in the error raised when the size does not fit the shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(buffer, count, what).reshape(shape)
    expected = count * _TABLE[datatype][1]
    if len(buffer) != expected:
        raise invalid(f"input byte size mismatch for {what}. Expected {expected}, got {len(buffer)}")
    return np.frombuffer(buffer, dtype=_LITTLE_ENDIAN[datatype]).reshape(shape)


def to_raw(datatype: str, array: np.ndarray) -> bytes:
    """The little-endian, row-major bytes of a tensor (length-prefixed elements for BYTES)."""
    if datatype == "BYTES":
        return serialize_bytes(array)
    target = _LITTLE_ENDIAN[datatype]
    if array.dtype != target:
        array = array.astype(target)
    return np.ascontiguousarray(array).tobytes()


def as_bytes_element(value: object) -> bytes:
    """One BYTES element as bytes: str is UTF-8 encoded, numbers are written as text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_ | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in row-major order, each as a 4-byte little-endian length then the bytes."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for value in array.reshape(-1):
        data = as_bytes_element(value)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, what: str) -> np.ndarray:
    """`count` length-prefixed BYTES elements from `buffer`, as a 1-D object array."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    size = len(view)
    for index in range(count):
        if offset + 4 > size:
            raise invalid(f"expected {count} string elements for {what}, got {index}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > size:
            raise invalid(f"element {index} of {what} runs past the end of its data")
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise invalid(f"unexpected number of string elements for {what}: more than the expected {count}")
    return out


def bf16_from_floats(values: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16, returned as their raw uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_to_floats(bits: np.ndarray) -> np.ndarray:
    """bfloat16 raw uint16 bits widened to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
