"""Every bad input gets a clear `{"error": ...}` with Triton's status code, naming the model or tensor at fault."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import models
from tests.conftest import RunningServer, ServerFactory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("errors")
    repo = root / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "identity_int32", models.identity_config("identity_int32", "TYPE_INT32"), models.IDENTITY)
    models.write_model(repo, "identity_bytes", models.identity_config("identity_bytes", "TYPE_STRING"), models.IDENTITY)
    factory = ServerFactory(root)
    yield factory.start(repo, "--http-max-input-size=100000")
    factory.close()


def infer(server: RunningServer, body: Any, model: str = "add_sub", **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{server.url}/v2/models/{model}/infer", data=data, **kwargs)


def tensor(name: str, shape: list[int], data: Any, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


GOOD = [tensor("INPUT0", [1, 16], [1.0] * 16), tensor("INPUT1", [1, 16], [1.0] * 16)]


def expect(reply: requests.Response, status: int, *fragments: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    message = reply.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message


def test_unknown_model_and_version(server: RunningServer) -> None:
    expect(infer(server, {"inputs": GOOD}, "nope"), 404, "Request for unknown model: 'nope' is not found")
    expect(requests.get(server.url + "/v2/models/nope"), 404, "'nope' is not found")
    expect(requests.get(server.url + "/v2/models/add_sub/versions/9"), 404, "'add_sub' version 9 is not found")
    expect(requests.get(server.url + "/v2/models/nope/stats"), 404, "'nope'")
    expect(requests.get(server.url + "/v2/models/nope/config"), 404, "'nope'")
    not_ready = requests.get(server.url + "/v2/models/nope/ready")
    assert not_ready.status_code == 400 and not_ready.json() == {"error": "Model version not ready"}


def test_unknown_input(server: RunningServer) -> None:
    body = {"inputs": [*GOOD, tensor("EXTRA", [1, 16], [1.0] * 16)]}
    expect(infer(server, body), 400, "unexpected inference input 'EXTRA' for model 'add_sub'")


def test_missing_input(server: RunningServer) -> None:
    expect(
        infer(server, {"inputs": GOOD[:1]}),
        400,
        "expected 2 inputs but got 1 inputs for model 'add_sub'",
        "missing required input(s) ['INPUT1']",
    )


def test_wrong_datatype(server: RunningServer) -> None:
    body = {"inputs": [GOOD[0], tensor("INPUT1", [1, 16], [1] * 16, "INT32")]}
    expect(
        infer(server, body), 400, "inference input 'INPUT1' data-type is 'INT32', but model 'add_sub' expects 'FP32'"
    )


def test_wrong_shape(server: RunningServer) -> None:
    body = {"inputs": [GOOD[0], tensor("INPUT1", [1, 15], [1.0] * 15)]}
    expect(
        infer(server, body),
        400,
        "unexpected shape for input 'INPUT1' for model 'add_sub'. Expected [-1,16], got [1,15]",
    )


def test_data_count_not_matching_shape(server: RunningServer) -> None:
    for count in (15, 17):
        body = {"inputs": [GOOD[0], tensor("INPUT1", [1, 16], [1.0] * count)]}
        expect(infer(server, body), 400, "'data' of input 'INPUT1' for model 'add_sub'", "needs 16")


def test_batch_over_max_batch_size(server: RunningServer) -> None:
    body = {"inputs": [tensor(n, [9, 16], [1.0] * 144) for n in ("INPUT0", "INPUT1")]}
    expect(infer(server, body), 400, "inference request batch-size must be <= 8 for 'add_sub'")


def test_inputs_disagree_on_batch(server: RunningServer) -> None:
    body = {"inputs": [tensor("INPUT0", [1, 16], [1.0] * 16), tensor("INPUT1", [2, 16], [1.0] * 32)]}
    expect(infer(server, body), 400, "batch size does not match other inputs for 'add_sub'")


def test_unknown_and_duplicate_outputs(server: RunningServer) -> None:
    expect(infer(server, {"inputs": GOOD, "outputs": [{"name": "NOPE"}]}), 400, "unexpected inference output 'NOPE'")
    body = {"inputs": GOOD, "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}
    expect(infer(server, body), 400, "output 'OUTPUT0' already exists in request")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "failed to parse the request JSON buffer"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "Unable to parse 'inputs'"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "Unable to parse 'name'"),
        (b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "data": [1]}]}', "Unable to parse 'datatype'"),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "data": [1]}]}', "Unable to parse 'shape'"),
        (b'{"inputs": [{"name": "INPUT0", "shape": [2, -5], "datatype": "FP32", "data": [1]}]}', "non-negative"),
        (b'{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP99", "data": [1]}]}', "invalid datatype 'FP99'"),
        (b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}', "input 'INPUT0' has no 'data'"),
        (
            b'{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": ["x"]}]}',
            "Unable to parse 'data'",
        ),
        (b'{"inputs": [], "parameters": [1]}', "Unable to parse 'parameters'"),
    ],
)
def test_malformed_json(server: RunningServer, body: bytes, fragment: str) -> None:
    expect(infer(server, body), 400, fragment)


def test_int_data_checked(server: RunningServer) -> None:
    body = {"inputs": [tensor("INPUT0", [2], [1.5, 2], "INT32")]}
    expect(infer(server, body, "identity_int32"), 400, "expected INT32 values")
    body = {"inputs": [tensor("INPUT0", [1], [2**40], "INT32")]}
    expect(infer(server, body, "identity_int32"), 400, "out of range for int32")


def test_deeply_nested_json(server: RunningServer) -> None:
    deep = "[" * 2000 + "]" * 2000
    body = ('{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": ' + deep + "}]}").encode()
    expect(infer(server, body, "identity_int32"), 400, "failed to parse the request JSON buffer")
    assert requests.get(server.url + "/v2/health/live").status_code == 200


def binary_body(header: dict[str, Any], payload: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + payload, {"Inference-Header-Content-Length": str(len(text))}


def test_binary_size_errors(server: RunningServer) -> None:
    header = {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]}
    body, headers = binary_body(header, b"\0" * 4)
    expect(infer(server, body, "identity_int32", headers=headers), 400, "expecting 4 additional bytes")
    body, headers = binary_body(header, b"\0" * 12)
    expect(infer(server, body, "identity_int32", headers=headers), 400, "unexpected additional input data")
    header["inputs"][0]["parameters"]["binary_data_size"] = 12
    body, headers = binary_body(header, b"\0" * 12)
    expect(infer(server, body, "identity_int32", headers=headers), 400, "Expected 8, got 12")


def test_bad_inference_header_length(server: RunningServer) -> None:
    body = json.dumps({"inputs": GOOD}).encode()
    for value in ("abc", "-1", "99999999999999999999"):
        expect(infer(server, body, headers={"Inference-Header-Content-Length": value}), 400, "Inference-Header")
    expect(infer(server, body, headers={"Inference-Header-Content-Length": str(len(body) + 10)}), 400, "header size")


def test_bytes_binary_element_count(server: RunningServer) -> None:
    header = {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    body, headers = binary_body(header, b"\x01\0\0\0a\x00\0\0\0")
    expect(infer(server, body, "identity_bytes", headers=headers), 400, "expected 3 string elements")


def test_raw_binary_needs_one_input(server: RunningServer) -> None:
    reply = infer(server, b"\0" * 64, headers={"Inference-Header-Content-Length": "0"})
    expect(reply, 400, "Raw request must only have 1 input")


def test_body_over_max_input_size(server: RunningServer) -> None:
    body = {"inputs": [tensor("INPUT0", [30000], list(range(30000)), "INT32")]}
    expect(infer(server, body, "identity_int32"), 400, "exceeds the maximum allowed input size of 100000 bytes")


def test_decompressed_size_is_bounded(server: RunningServer) -> None:
    import gzip

    bomb = gzip.compress(b" " * 1_000_000)
    reply = infer(server, bomb, "identity_int32", headers={"Content-Encoding": "gzip"})
    expect(reply, 400, "exceeds the maximum allowed input size")


def test_unsupported_content_encoding(server: RunningServer) -> None:
    expect(infer(server, b"{}", headers={"Content-Encoding": "br"}), 400, "Unsupported content-encoding 'br'")


def test_routes_methods_and_unsupported_apis(server: RunningServer) -> None:
    expect(requests.get(server.url + "/v3/health"), 404, "Not Found")
    expect(requests.get(server.url + "/v2/models/add_sub/unknown"), 404, "Not Found")
    reply = requests.get(server.url + "/v2/models/add_sub/infer")
    assert reply.status_code == 405 and reply.json() == {"error": "Method Not Allowed"}
    assert requests.post(server.url + "/v2/health/live").status_code == 405
    expect(requests.get(server.url + "/v2/systemsharedmemory/status"), 501, "shared memory")
    expect(
        requests.post(server.url + "/v2/repository/models/add_sub/load"),
        503,
        "--model-control-mode=explicit",
        "add_sub",
    )
    expect(
        requests.post(server.url + "/v2/repository/index", data=b'{"ready": [[true]]}'),
        400,
        "Invalid value for 'ready': expected a boolean",
    )
    assert requests.get(server.url + "/v2/health/live").status_code == 200


def test_errors_leave_the_server_serving(server: RunningServer) -> None:
    reply = infer(server, {"inputs": GOOD})
    assert reply.status_code == 200
    assert reply.json()["outputs"][0]["data"] == [2.0] * 16
    stats = requests.get(server.url + "/v2/models/add_sub/stats").json()["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 0  # as Triton: requests refused by validation are not model failures
    assert stats["success"]["count"] >= 1


def test_repository_path_is_absent(tmp_path: Path, naiad: Any) -> None:
    del naiad
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", f"--model-repository={tmp_path / 'missing'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "missing" in result.stderr and "not a directory" in result.stderr
