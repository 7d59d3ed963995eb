"""End to end over HTTP: a real `python -m naiad serve` process driven with `requests` and `tritonclient.http`."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, ServerFactory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("http")
    factory = ServerFactory(root)
    yield factory.start(models.build_inference_repository(root))
    factory.close()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    with httpclient.InferenceServerClient(server.address, concurrency=16) as triton:
        yield triton


def add_sub_body(a: list[float], b: list[float], nested: bool = False) -> dict[str, Any]:
    def data(values: list[float]) -> Any:
        return [values] if nested else values

    return {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": data(a)},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": data(b)},
        ]
    }


A = [float(i) for i in range(16)]
B = [1.0] * 16


# Health and metadata


def test_health_and_server_metadata(server: RunningServer) -> None:
    assert requests.get(server.url + "/v2/health/live").status_code == 200
    ready = requests.get(server.url + "/v2/health/ready")
    assert ready.status_code == 200 and ready.content == b""
    metadata = requests.get(server.url + "/v2").json()
    assert metadata["name"] == "naiad"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "statistics" in metadata["extensions"]


def test_model_metadata_and_config(server: RunningServer) -> None:
    metadata = requests.get(server.url + "/v2/models/add_sub").json()
    assert metadata["name"] == "add_sub"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    assert metadata["outputs"][1] == {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 16]}
    config = requests.get(server.url + "/v2/models/add_sub/config").json()
    assert config["name"] == "add_sub"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [16]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert "dynamic_batching" in config
    assert requests.get(server.url + "/v2/models/add_sub/versions/1/ready").status_code == 200
    assert requests.get(server.url + "/v2/models/add_sub/ready").status_code == 200


def test_tritonclient_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("no_such_model")
    assert client.get_model_metadata("add_sub")["platform"] == "python"
    assert client.get_model_config("add_sub")["backend"] == "python"


# Inference with requests, as the KServe docs show


@pytest.mark.parametrize("nested", [False, True])
def test_json_inference(server: RunningServer, nested: bool) -> None:
    body = add_sub_body(A, B, nested)
    body["id"] = "req-42"
    reply = requests.post(server.url + "/v2/models/add_sub/infer", json=body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["model_name"] == "add_sub"
    assert result["model_version"] == "1"
    assert result["id"] == "req-42"
    outputs = {o["name"]: o for o in result["outputs"]}
    assert outputs["OUTPUT0"]["data"] == [a + b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT1"]["data"] == [a - b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT0"]["shape"] == [1, 16]
    assert outputs["OUTPUT0"]["datatype"] == "FP32"


def test_versioned_url_and_requested_outputs(server: RunningServer) -> None:
    body = add_sub_body(A, B)
    body["outputs"] = [{"name": "OUTPUT1"}]
    result = requests.post(server.url + "/v2/models/add_sub/versions/1/infer", json=body).json()
    assert [o["name"] for o in result["outputs"]] == ["OUTPUT1"]


def test_model_without_dynamic_batching(server: RunningServer) -> None:
    reply = requests.post(server.url + "/v2/models/add_sub_plain/infer", json=add_sub_body(A, B))
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["data"][0] == 1.0


# tritonclient.http, binary data on by default


def test_tritonclient_binary_round_trip(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "FP32"), httpclient.InferInput("INPUT1", [2, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("add_sub", inputs, outputs=outputs, request_id="7")
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "7"


def test_tritonclient_json_inputs_and_no_requested_outputs(client: httpclient.InferenceServerClient) -> None:
    a = np.full((1, 16), 2.5, dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "FP32"), httpclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=False)
    inputs[1].set_data_from_numpy(a, binary_data=False)
    result = client.infer("add_sub", inputs)
    assert np.array_equal(result.as_numpy("OUTPUT0"), a * 2)
    assert np.array_equal(result.as_numpy("OUTPUT1"), a * 0)


def test_tritonclient_compression(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(16 * 8, dtype=np.float32).reshape(8, 16)
    inputs = [httpclient.InferInput("INPUT0", [8, 16], "FP32"), httpclient.InferInput("INPUT1", [8, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "add_sub", inputs, request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
        )
        assert np.array_equal(result.as_numpy("OUTPUT0"), a * 2)


@pytest.mark.parametrize("datatype", list(models.DATATYPES))
def test_every_datatype_binary(client: httpclient.InferenceServerClient, datatype: str) -> None:
    if datatype == "BYTES":
        data = np.array([b"hello", b"", b"\xff\x00binary"], dtype=np.object_)
    elif datatype == "BOOL":
        data = np.array([True, False, True])
    else:
        from tritonclient.utils import triton_to_np_dtype

        data = np.array([0, 1, 100], dtype=triton_to_np_dtype(datatype))
    tensor = httpclient.InferInput("INPUT0", [3], datatype)
    tensor.set_data_from_numpy(data)
    requested = [httpclient.InferRequestedOutput("OUTPUT0")]
    result = client.infer(f"identity_{datatype.lower()}", [tensor], outputs=requested)
    out = result.get_output("OUTPUT0")
    assert out["datatype"] == datatype
    assert list(result.as_numpy("OUTPUT0")) == list(data)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False]),
        ("INT8", [-128, 127]),
        ("UINT64", [0, 18446744073709551615]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP64", [0.5, -1e300]),
        ("FP16", [0.5, -2.0]),
        ("BYTES", ["hé", "x"]),
    ],
)
def test_every_datatype_json(server: RunningServer, datatype: str, values: list[Any]) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": datatype, "data": values}]}
    reply = requests.post(f"{server.url}/v2/models/identity_{datatype.lower()}/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == values
    assert reply.json()["outputs"][0]["datatype"] == datatype


def test_binary_output_selection_by_parameters(server: RunningServer) -> None:
    body = add_sub_body(A, B)
    body["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}]
    reply = requests.post(server.url + "/v2/models/add_sub/infer", json=body)
    assert reply.status_code == 200
    length = int(reply.headers["Inference-Header-Content-Length"])
    assert reply.headers["Content-Type"] == "application/octet-stream"
    header = json.loads(reply.content[:length])
    first, second = header["outputs"]
    assert "data" not in first and first["parameters"]["binary_data_size"] == 64
    assert second["data"][0] == -1.0
    assert np.array_equal(np.frombuffer(reply.content[length:], dtype="<f4"), np.array(A) + 1)
    body["parameters"] = {"binary_data_output": True}
    body["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}]
    reply = requests.post(server.url + "/v2/models/add_sub/infer", json=body)
    header = json.loads(reply.content[: int(reply.headers["Inference-Header-Content-Length"])])
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]


def test_raw_binary_request(server: RunningServer) -> None:
    raw = np.array([4, 5, 6], dtype="<i4").tobytes()
    reply = requests.post(
        server.url + "/v2/models/identity_int32/infer", data=raw, headers={"Inference-Header-Content-Length": "0"}
    )
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["Inference-Header-Content-Length"])
    assert reply.content[length:] == raw
    assert json.loads(reply.content[:length])["outputs"][0]["shape"] == [3]


def test_gzip_and_deflate_request_bodies(server: RunningServer) -> None:
    body = json.dumps(add_sub_body(A, B)).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        reply = requests.post(
            server.url + "/v2/models/add_sub/infer",
            data=packed,
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"][1] == 2.0


def test_large_response_is_compressed_when_accepted(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [400], "datatype": "INT32", "data": list(range(400))}]}
    reply = requests.post(server.url + "/v2/models/identity_int32/infer", json=body)
    assert reply.headers.get("Content-Encoding") == "gzip"
    assert reply.json()["outputs"][0]["data"] == list(range(400))
    plain = requests.post(
        server.url + "/v2/models/identity_int32/infer", json=body, headers={"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in plain.headers


def test_parameters_id_and_requested_outputs_reach_the_model(server: RunningServer) -> None:
    body = {
        "id": "abc",
        "parameters": {"temperature": 0.5, "mode": "fast", "flag": True},
        "inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT32", "data": [1]}],
        "outputs": [{"name": "OUTPUT0"}],
    }
    reply = requests.post(server.url + "/v2/models/params_echo/infer", json=body)
    assert reply.status_code == 200, reply.text
    seen = json.loads(reply.json()["outputs"][0]["data"][0])
    assert seen == {
        "id": "abc",
        "outputs": ["OUTPUT0"],
        "parameters": {"flag": True, "mode": "fast", "temperature": 0.5},
    }


def test_bls_calls_another_model(server: RunningServer) -> None:
    body = add_sub_body(A, B)
    reply = requests.post(server.url + "/v2/models/bls/infer", json=body)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    assert outputs["SUM"][3] == 4.0 and outputs["DIFF"][3] == 2.0


def test_reshape_in_and_out(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "INT32", "data": list(range(8))}]}
    reply = requests.post(server.url + "/v2/models/reshaped/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    assert out["shape"] == [2, 4]
    assert out["data"] == [2 * i for i in range(8)]


def test_classification_with_labels(server: RunningServer) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.7, 0.05, 0.15]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}],
    }
    reply = requests.post(server.url + "/v2/models/classifier/infer", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    assert out["data"] == ["0.700000:1:dog", "0.150000:3:fish"]


def test_version_policy_and_version_errors(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [0]}]}
    latest = requests.post(server.url + "/v2/models/versioned/infer", json=body).json()
    assert latest["model_version"] == "3" and latest["outputs"][0]["data"] == [3]
    two = requests.post(server.url + "/v2/models/versioned/versions/2/infer", json=body).json()
    assert two["outputs"][0]["data"] == [2]
    one = requests.post(server.url + "/v2/models/versioned/versions/1/infer", json=body)
    assert one.status_code == 404
    assert one.json() == {"error": "Request for unknown model: 'versioned' version 1 is not found"}
    bad = requests.post(server.url + "/v2/models/versioned/versions/abc/infer", json=body)
    assert bad.status_code == 400 and "version string 'abc'" in bad.json()["error"]
    assert requests.get(server.url + "/v2/models/versioned").json()["versions"] == ["2", "3"]


def test_optional_input(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    assert requests.post(server.url + "/v2/models/optional_in/infer", json=body).json()["outputs"][0]["data"] == [
        101,
        102,
    ]
    body["inputs"].append({"name": "INPUT1", "shape": [2], "datatype": "INT32", "data": [10, 10]})
    assert requests.post(server.url + "/v2/models/optional_in/infer", json=body).json()["outputs"][0]["data"] == [
        11,
        12,
    ]


# Batching and statistics


def test_concurrent_requests_are_batched(server: RunningServer) -> None:
    def one(index: int) -> list[float]:
        values = [float(index)] * 16
        reply = requests.post(server.url + "/v2/models/add_sub/infer", json=add_sub_body(values, values))
        assert reply.status_code == 200
        return list(reply.json()["outputs"][0]["data"])

    before = requests.get(server.url + "/v2/models/add_sub/stats").json()["model_stats"][0]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(400)))
    assert all(result == [2.0 * i] * 16 for i, result in enumerate(results))
    after = requests.get(server.url + "/v2/models/add_sub/stats").json()["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 400
    assert executions < inferences
    assert any(entry["batch_size"] > 1 for entry in after["batch_stats"])


def test_statistics_shape(server: RunningServer) -> None:
    requests.post(server.url + "/v2/models/add_sub_plain/infer", json=add_sub_body(A, B))
    stats = requests.get(server.url + "/v2/models/add_sub_plain/versions/1/stats").json()["model_stats"][0]
    assert stats["name"] == "add_sub_plain" and stats["version"] == "1"
    assert stats["inference_count"] >= 1 and stats["execution_count"] >= 1
    assert stats["last_inference"] > 1_600_000_000_000
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(stats["inference_stats"][key]) == {"count", "ns"}
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert stats["batch_stats"][0]["batch_size"] == 1
    everything = requests.get(server.url + "/v2/models/stats").json()["model_stats"]
    assert {"add_sub", "add_sub_plain", "bls"} <= {entry["name"] for entry in everything}


def test_tritonclient_statistics_and_index(client: httpclient.InferenceServerClient) -> None:
    stats = client.get_inference_statistics("add_sub")
    assert stats["model_stats"][0]["name"] == "add_sub"
    index = client.get_model_repository_index()
    assert {"name": "add_sub", "version": "1", "state": "READY"} in index
    assert all(entry["state"] == "READY" for entry in index)


# Model failures are per request


def test_exception_in_execute_is_a_500_and_the_server_keeps_serving(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]}
    reply = requests.post(server.url + "/v2/models/failing/infer", json=body)
    assert reply.status_code == 500
    message = reply.json()["error"]
    assert "failing_0_0" in message and "ValueError: boom in execute" in message
    assert "Traceback" not in message
    assert requests.post(server.url + "/v2/models/add_sub/infer", json=add_sub_body(A, B)).status_code == 200
    stats = requests.get(server.url + "/v2/models/failing/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] >= 1


@pytest.mark.parametrize(("kind", "status"), [("ok", 200), ("invalid", 400), ("internal", 500)])
def test_error_responses_from_the_model(server: RunningServer, kind: str, status: int) -> None:
    body = {
        "parameters": {"kind": kind},
        "inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}],
    }
    reply = requests.post(server.url + "/v2/models/error_response/infer", json=body)
    assert reply.status_code == status
    if status != 200:
        assert reply.json()["error"] in ("the model says the input is bad", "the model failed")


def test_tritonclient_raises_with_the_message(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([1], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="boom in execute"):
        client.infer("failing", [tensor])
