"""The datatype table and BYTES packing."""

import numpy as np
import pytest

from naiad.domain import datatypes
from naiad.domain.errors import ErrorCode, ServerError


def test_config_names_round_trip() -> None:
    for name in datatypes.DATATYPES:
        assert datatypes.from_config_type(datatypes.to_config_type(name)) == name
    assert datatypes.from_config_type("TYPE_STRING") == "BYTES"


def test_numpy_dtypes_map_back() -> None:
    assert datatypes.datatype_of(np.dtype(np.float32)) == "FP32"
    assert datatypes.datatype_of(np.dtype(np.bool_)) == "BOOL"
    assert datatypes.datatype_of(np.dtype("U3")) == "BYTES"
    with pytest.raises(ValueError):
        datatypes.datatype_of(np.dtype(np.complex64))


def test_raw_round_trip_without_copy() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = datatypes.to_raw("FP32", array)
    back = datatypes.from_raw("FP32", [2, 3], raw, "input 'X'")
    assert np.array_equal(back, array)
    assert not back.flags.owndata


def test_raw_size_mismatch_names_tensor() -> None:
    with pytest.raises(ServerError) as info:
        datatypes.from_raw("FP32", [1, 8], b"\0" * 40, "input 'INPUT0' for model 'm'")
    assert info.value.code is ErrorCode.INVALID_ARG
    assert "input byte size mismatch for input 'INPUT0' for model 'm'. Expected 32, got 40" in info.value.message


def test_bytes_round_trip() -> None:
    array = np.array([b"a", b"", "\u00e9".encode()], dtype=np.object_)
    raw = datatypes.serialize_bytes(array)
    assert raw[:4] == b"\x01\x00\x00\x00"
    back = datatypes.deserialize_bytes(raw, 3, "input 'S'")
    assert list(back) == list(array)


def test_bytes_too_few_and_too_many() -> None:
    raw = datatypes.serialize_bytes(np.array([b"ab", b"c"], dtype=np.object_))
    with pytest.raises(ServerError, match="expected 3 string elements"):
        datatypes.deserialize_bytes(raw, 3, "input 'S'")
    with pytest.raises(ServerError, match="more than the expected 1"):
        datatypes.deserialize_bytes(raw, 1, "input 'S'")


def test_bf16_rounds_and_widens() -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = datatypes.bf16_from_floats(values)
    assert bits.dtype == np.uint16
    assert np.array_equal(datatypes.bf16_to_floats(bits), values)
