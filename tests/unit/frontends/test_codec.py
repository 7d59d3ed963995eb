"""KServe V2 JSON and the binary tensor extension, decoded and encoded without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from naiad.config import model_config
from naiad.domain.errors import ServerError
from naiad.domain.tensors import InferenceResponse, Tensor
from naiad.frontends.http import codec


def json_body(**document: object) -> bytes:
    return json.dumps(document).encode()


def test_flat_and_nested_data_decode_to_the_same_tensor() -> None:
    flat = codec.decode_request(
        json_body(inputs=[{"name": "X", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]}]), None, "m"
    )
    nested = codec.decode_request(
        json_body(inputs=[{"name": "X", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]), None, "m"
    )
    for decoded in (flat, nested):
        tensor = decoded.request.inputs[0]
        assert tensor.shape == (2, 2) and tensor.data.dtype == np.int32
        assert tensor.data.tolist() == [[1, 2], [3, 4]]


def test_request_level_fields() -> None:
    decoded = codec.decode_request(
        json_body(
            id="r1",
            parameters={"binary_data_output": True, "k": 1},
            inputs=[],
            outputs=[{"name": "A", "parameters": {"binary_data": False}}, {"name": "B"}],
        ),
        None,
        "m",
    )
    assert decoded.request.id == "r1"
    assert decoded.request.parameters["k"] == 1
    assert decoded.binary_all is True
    assert decoded.binary_outputs == {"A": False}
    assert [o.name for o in decoded.request.outputs or ()] == ["A", "B"]


def test_binary_inputs_are_views_of_the_body() -> None:
    header = json_body(
        inputs=[
            {"name": "A", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "S", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 11}},
        ]
    )
    payload = np.array([1.5, -2.0], dtype="<f4").tobytes() + b"\x02\0\0\0hi\x01\0\0\0!"
    decoded = codec.decode_request(header + payload, len(header), "m")
    a, s = decoded.request.inputs
    assert a.data.tolist() == [1.5, -2.0]
    assert not a.data.flags.owndata
    assert s.data.tolist() == [b"hi", b"!"]


def test_raw_binary_body_deduces_the_shape() -> None:
    config = model_config.build(
        {
            "backend": "python",
            "max_batch_size": 4,
            "input": [{"name": "IN", "data_type": "TYPE_INT16", "dims": [-1]}],
            "output": [{"name": "OUT", "data_type": "TYPE_INT16", "dims": [-1]}],
        },
        "raw",
    )
    decoded = codec.decode_raw_binary(np.arange(5, dtype="<i2").tobytes(), config)
    tensor = decoded.request.inputs[0]
    assert tensor.shape == (1, 5) and tensor.data.tolist() == [[0, 1, 2, 3, 4]]
    assert decoded.binary_all


@pytest.mark.parametrize(
    ("data", "datatype", "fragment"),
    [
        ([1.5], "INT32", "expected INT32 values"),
        ([True], "INT8", "expected INT8 values"),
        ([1], "BOOL", "expected BOOL values"),
        ([300], "UINT8", "out of range for uint8"),
        ([1, "a"], "FP32", "Unable to parse 'data'"),
        ([1], "BYTES", "expected strings for BYTES"),
        ([1, 2], "FP32", "needs 1, got 2"),
    ],
)
def test_bad_json_data(data: list[object], datatype: str, fragment: str) -> None:
    body = json_body(inputs=[{"name": "X", "shape": [1], "datatype": datatype, "data": data}])
    with pytest.raises(ServerError) as info:
        codec.decode_request(body, None, "m")
    assert fragment in info.value.message
    assert "'X'" in info.value.message or "BYTES" in info.value.message


def test_json_and_binary_outputs() -> None:
    decoded = codec.decode_request(
        json_body(inputs=[], outputs=[{"name": "A", "parameters": {"binary_data": True}}, {"name": "B"}]), None, "m"
    )
    a = np.array([[1.0, 2.0]], dtype=np.float32)
    b = np.array([b"x", b"yz"], dtype=np.object_)
    response = InferenceResponse(
        "m", "1", "id7", (Tensor("A", "FP32", (1, 2), a), Tensor("B", "BYTES", (2,), b)), {"p": True}
    )
    payload, length = codec.encode_response(response, decoded)
    assert length is not None
    header = json.loads(payload[:length])
    assert list(header)[:3] == ["id", "model_name", "model_version"]  # Triton's order
    assert header["id"] == "id7" and header["parameters"] == {"p": True}
    assert header["outputs"][0] == {
        "name": "A",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1]["data"] == ["x", "yz"]
    assert np.frombuffer(payload[length:], dtype="<f4").tolist() == [1.0, 2.0]


def test_non_utf8_bytes_need_binary() -> None:
    decoded = codec.decode_request(json_body(inputs=[]), None, "m")
    response = InferenceResponse("m", "1", "", (Tensor("B", "BYTES", (1,), np.array([b"\xff"], dtype=np.object_)),))
    with pytest.raises(ServerError, match="not UTF-8"):
        codec.encode_response(response, decoded)
