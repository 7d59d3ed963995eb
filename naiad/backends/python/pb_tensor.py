"""`pb_utils.Tensor`, Triton's datatype codes and BYTES packing, and the exception `pb_utils` raises."""

from __future__ import annotations

import importlib
import struct
from typing import Any

import numpy as np

from naiad.domain.datatypes import as_bytes_element, serialize_bytes
from naiad.domain.tensors import Tensor as DomainTensor

TRITON_STRING_TO_NUMPY: dict[str, type[Any]] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType codes, as `Tensor.triton_dtype()` returns them.
_CODES: dict[str, int] = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
    "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}  # fmt: skip
_DATATYPES: dict[int, str] = {code: name for name, code in _CODES.items()}
_NUMPY_TYPES: dict[int, type[Any]] = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8, 7: np.int16,
    8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64, 13: np.object_,
}  # fmt: skip
_DTYPE_CODES: dict[np.dtype[Any], int] = {np.dtype(kind): code for code, kind in _NUMPY_TYPES.items()}
_BYTES, _BF16 = 13, 14
_DL_CPU, _DL_CUDA_HOST = 1, 3


class TritonModelException(Exception):  # noqa: N818 (Triton's name)
    """The exception `pb_utils` raises; a model may raise it from initialize, execute or finalize."""

    def message(self) -> str:
        """The exception's text."""
        return str(self)


class Tensor:
    """A named tensor holding a numpy array: `pb_utils.Tensor("OUTPUT0", array)`."""

    __slots__ = ("_array", "_dtype", "_name")

    def __init__(self, name: str, numpy_array: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Tensor name must be a str, got {type(name).__name__}")
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = _as_array(name, numpy_array)
        dtype = array.dtype
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
            dtype = array.dtype
        code = _DTYPE_CODES.get(dtype)
        if code is None:
            if dtype.kind not in "SU":
                raise TritonModelException(
                    f"numpy dtype {dtype} of tensor '{name}' has no Triton datatype; use bool, (u)int8-64, "
                    "float16/32/64, or np.object_ (bytes) arrays"
                )
            code = _BYTES
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        self._name = name
        self._array = array
        self._dtype = code

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray, code: int) -> Tensor:
        """A tensor around an array already in Triton's form, without checks or copies."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._dtype = code
        return tensor

    def name(self) -> str:
        """The tensor's name."""
        return self._name

    def as_numpy(self) -> np.ndarray:
        """The tensor's numpy array (not a copy); BYTES tensors are object arrays of `bytes`."""
        if self._dtype == _BF16:
            raise TritonModelException(
                "Tensor dtype is BF16 and cannot be converted to NumPy. Use to_dlpack() and from_dlpack() instead."
            )
        return self._array

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType code (TYPE_FP32 is 11, BYTES 13, BF16 14)."""
        return self._dtype

    def shape(self) -> list[int]:
        """The tensor's dimensions."""
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        """True: naiad keeps every tensor in CPU memory."""
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule sharing the tensor's memory (BF16 needs torch installed)."""
        return self.__dlpack__()

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        if self._dtype == _BYTES:
            raise TritonModelException("DLPack does not have support for string tensors.")
        if self._dtype == _BF16:
            torch = _torch(f"exporting BF16 tensor '{self._name}' through DLPack")
            bits = self._array if self._array.flags.writeable else self._array.copy()
            return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).__dlpack__()
        try:
            return self._array.__dlpack__(stream=stream, **kwargs)
        except BufferError:
            if self._array.flags.writeable:
                raise
            # Old DLPack cannot mark memory read-only: export a copy of read-only (request) memory.
            return self._array.copy().__dlpack__(stream=stream, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CPU, 0)

    @staticmethod
    def from_dlpack(name: str, tensor: Any) -> Tensor:
        """A tensor from a DLPack capsule or an object with `__dlpack__` (torch, cupy on CPU, numpy)."""
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        source: Any = tensor
        if type(tensor).__name__ == "PyCapsule":
            source = _Capsule(tensor)
        elif not hasattr(tensor, "__dlpack__") or not hasattr(tensor, "__dlpack_device__"):
            raise TritonModelException(
                "Provided tensor is not supported. Tensor must be a DLPack capsule or have `__dlpack__` and "
                "`__dlpack_device__` attributes"
            )
        else:
            device = int(tensor.__dlpack_device__()[0])
            if device not in (_DL_CPU, _DL_CUDA_HOST):
                raise TritonModelException(
                    f"DLDevice type {device} of tensor '{name}' is not supported: naiad keeps tensors in CPU "
                    "memory; move it to the CPU first"
                )
        try:
            array = np.from_dlpack(source)
        except (BufferError, TypeError, ValueError, RuntimeError) as exc:
            bits = _bf16_bits(source)
            if bits is None:
                raise TritonModelException(f"cannot read DLPack tensor '{name}': {exc}") from exc
            return Tensor._wrap(name, bits, _BF16)
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {_DATATYPES[self._dtype]}, shape={list(self._array.shape)})"


class _Capsule:
    """Lets `np.from_dlpack` read a bare DLPack capsule."""

    __slots__ = ("_capsule",)

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CPU, 0)


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic | list | tuple | int | float | bool) or hasattr(value, "__array__"):
        return np.asarray(value)
    raise TritonModelException(
        f"tensor '{name}' needs a numpy array, got {type(value).__name__}; use np.asarray(...) or "
        "Tensor.from_dlpack(...)"
    )


def _torch(why: str) -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise TritonModelException(f"{why} needs torch, which is not installed") from None


def _bf16_bits(source: Any) -> np.ndarray | None:
    """A bfloat16 DLPack tensor as its raw uint16 bits (through torch), or None if it is not one."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return None
    value = torch.utils.dlpack.from_dlpack(source)
    if value.dtype != torch.bfloat16:
        return None
    bits: np.ndarray = value.contiguous().cpu().view(torch.int16).numpy().view(np.uint16)
    return bits


def _to_domain_tensor(tensor: Tensor) -> DomainTensor:
    """naiad's tensor for a `pb_utils.Tensor`; str and bytes arrays become object arrays of `bytes`."""
    array = tensor._array
    if tensor._dtype == _BYTES:
        array = _bytes_objects(array)
    return DomainTensor(tensor._name, _DATATYPES[tensor._dtype], array.shape, array)


def _bytes_objects(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "O":
        for value in array.flat:
            if type(value) is not bytes:
                break
        else:
            return array
    out = np.empty(array.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for index, value in enumerate(array.flat):
        flat[index] = as_bytes_element(value)
    return out


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """BYTES elements in C order, each as a 4-byte little-endian length and its bytes (None for numbers)."""
    if input_tensor.size == 0:
        return b""
    if input_tensor.dtype.kind not in "OSU":
        return None
    return serialize_bytes(np.ascontiguousarray(input_tensor))


def deserialize_bytes_tensor(encoded_tensor: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Length-prefixed BYTES elements as a 1-D object array of `bytes`."""
    data = np.ascontiguousarray(encoded_tensor).data if isinstance(encoded_tensor, np.ndarray) else encoded_tensor
    view = memoryview(data).cast("B")
    items: list[bytes] = []
    offset = 0
    unpack = struct.Struct("<I").unpack_from
    while offset < len(view):
        (length,) = unpack(view, offset)
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def triton_to_numpy_type(data_type: int) -> type[Any] | None:
    """The numpy type for a TRITONSERVER_DataType code (None for BF16 and unknown codes)."""
    return _NUMPY_TYPES.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The TRITONSERVER_DataType code for a numpy type or dtype (None when Triton has none)."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind == "S":
        return _BYTES
    return _DTYPE_CODES.get(dtype if dtype.isnative else dtype.newbyteorder("="))


def triton_string_to_numpy(triton_type_string: str) -> type[Any]:
    """The numpy type for a config type name (`TYPE_FP32` -> np.float32)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]
