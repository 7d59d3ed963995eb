"""ONNX models (`onnxruntime_onnx`) served by a real server process: the ResNet-50 walkthrough's folder with only
`1/model.onnx` (auto-complete), dynamic batching, and load errors for configs and files that do not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.concurrent_clients import assert_batched, infer_concurrently
from tests.conftest import ServerFactory

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


class SmallCnn(torch.nn.Module):  # type: ignore[misc]
    """A ResNet-shaped stand-in: FP32 [N, 3, 32, 32] images in, [N, 10] logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(images)).mean(dim=(2, 3)))


def export_cnn(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.onnx.export(
        SmallCnn().eval(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["input.1"],
        output_names=["logits"],
        dynamic_axes={"input.1": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def cnn_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    repo = tmp_path_factory.mktemp("onnx") / "models"
    model = export_cnn(repo / "resnet50" / "1" / "model.onnx")
    # the same file with a queue delay and one instance, so that concurrent requests surely share executions;
    # its inputs and outputs are left to auto-complete
    batched = repo / "batched" / "1"
    batched.mkdir(parents=True)
    (batched / "model.onnx").write_bytes(model.read_bytes())
    (repo / "batched" / "config.pbtxt").write_text(
        'backend: "onnxruntime"\nmax_batch_size: 8\ninstance_group [ { kind: KIND_CPU count: 1 } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    )
    return repo, ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def test_folder_with_only_model_onnx_is_served_with_a_config_filled_from_the_model(
    cnn_repo: tuple[Path, object], naiad: ServerFactory
) -> None:
    repo, session = cnn_repo
    server = naiad.start(repo, grpc=True)
    metadata = requests.get(server.url + "/v2/models/resnet50", timeout=5).json()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input.1", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    config = requests.get(server.url + "/v2/models/resnet50/config", timeout=5).json()
    assert config["max_batch_size"] == 4 and config["backend"] == "onnxruntime"
    assert "dynamic_batching" in config
    assert [group["count"] for group in config["instance_group"]] == [2]

    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("input.1", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    logits = client.infer("resnet50", [tensor]).as_numpy("logits")
    expected = session.run(["logits"], {"input.1": images})[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_default_max_batch_size_comes_from_backend_config(cnn_repo: tuple[Path, object], naiad: ServerFactory) -> None:
    repo, _ = cnn_repo
    server = naiad.start(repo, "--backend-config=onnxruntime,default-max-batch-size=16")
    assert requests.get(server.url + "/v2/models/resnet50/config", timeout=5).json()["max_batch_size"] == 16
    server.stop()
    server = naiad.start(repo, "--backend-config=default-max-batch-size=2")
    assert requests.get(server.url + "/v2/models/resnet50/config", timeout=5).json()["max_batch_size"] == 2


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    cnn_repo: tuple[Path, object], naiad: ServerFactory
) -> None:
    repo, session = cnn_repo
    server = naiad.start(repo)
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(int(rng.integers(1, 3)), 3, 32, 32)).astype(np.float32) for _ in range(32)]

    answers = infer_concurrently(server.address, "batched", "input.1", "logits", inputs)
    for images, answer in zip(inputs, answers, strict=True):
        expected = session.run(["logits"], {"input.1": images})[0]  # type: ignore[attr-defined]
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)
    assert_batched(server.url, "batched", inputs)


def opset_model(path: Path, opset: int) -> None:
    """y = Relu(x) on FP32 [-1, 4], declaring `opset`."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_configs_and_files_that_do_not_fit_fail_to_load_saying_why(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    opset_model(repo / "relu" / "1" / "model.onnx", 13)
    opset_model(repo / "future_opset" / "1" / "model.onnx", 99)
    for name, tensor in (
        ("wrong_name", 'name: "input" data_type: TYPE_FP32 dims: [ 4 ]'),
        ("wrong_type", 'name: "x" data_type: TYPE_INT32 dims: [ 4 ]'),
        ("wrong_dims", 'name: "x" data_type: TYPE_FP32 dims: [ 5, 2 ]'),
    ):
        opset_model(repo / name / "1" / "model.onnx", 13)
        (repo / name / "config.pbtxt").write_text(
            f'backend: "onnxruntime"\nmax_batch_size: 4\ninput [ {{ {tensor} }} ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        )
    opset_model(repo / "openvino" / "1" / "model.onnx", 13)
    (repo / "openvino" / "config.pbtxt").write_text(
        'backend: "onnxruntime"\n'
        'optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }\n'
    )
    opset_model(repo / "not_batchable" / "1" / "model.onnx", 13)
    (repo / "not_batchable" / "1" / "model.onnx").write_bytes(b"")  # replaced below by a fixed-size model
    from onnx import TensorProto, helper

    fixed = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "fixed",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    fixed.ir_version = 8
    onnx.save(fixed, str(repo / "not_batchable" / "1" / "model.onnx"))
    (repo / "not_batchable" / "config.pbtxt").write_text('backend: "onnxruntime"\nmax_batch_size: 8\n')

    server = naiad.start(repo, "--exit-on-error=false", until="started")
    index = {e["name"]: e for e in requests.post(server.url + "/v2/repository/index", timeout=10).json()}
    assert index["relu"]["state"] == "READY", index["relu"]
    assert "unexpected inference input 'input', allowed inputs are: x" in index["wrong_name"]["reason"]
    assert (
        "configuration expects datatype TYPE_INT32 for input 'x', model provides TYPE_FP32"
        in (index["wrong_type"]["reason"])
    )
    assert "the model expects 2 dimensions (shape [-1, 4])" in index["wrong_dims"]["reason"]
    assert "cannot run this opset" in index["future_opset"]["reason"]
    assert "cpu_execution_accelerator 'openvino' of model 'openvino' is not supported" in index["openvino"]["reason"]
    assert (
        "model does not support batching while non-zero max_batch_size is specified"
        in (index["not_batchable"]["reason"])
    )
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [-1, 2, -3, 4, 5, -6, 7, -8]}]}
    reply = requests.post(server.url + "/v2/models/relu/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [0, 2, 0, 4, 5, 0, 7, 0]


def test_scalar_outputs_strings_and_onnxruntime_parameters(tmp_path: Path, naiad: ServerFactory) -> None:
    from onnx import TensorProto, helper

    repo = tmp_path / "models"
    total = helper.make_model(
        helper.make_graph(
            [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
            "total",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
            [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
            initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    total.ir_version = 8
    (repo / "total" / "1").mkdir(parents=True)
    onnx.save(total, str(repo / "total" / "1" / "model.onnx"))
    echo = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["text"], ["same"])],
            "echo",
            [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2])],
            [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", 2])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    echo.ir_version = 8
    (repo / "echo" / "1").mkdir(parents=True)
    onnx.save(echo, str(repo / "echo" / "1" / "model.onnx"))
    (repo / "echo" / "config.pbtxt").write_text(
        'backend: "onnxruntime"\n'
        'parameters { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }\n'
    )
    server = naiad.start(repo)
    config = requests.get(server.url + "/v2/models/total/config", timeout=5).json()
    assert config["max_batch_size"] == 0 and config["output"][0]["dims"] == [1]
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3.5]}]}
    reply = requests.post(server.url + "/v2/models/total/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0] == {"name": "total", "datatype": "FP32", "shape": [1], "data": [6.5]}
    body = {"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["ab", "héllo"]}]}
    reply = requests.post(server.url + "/v2/models/echo/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == ["ab", "héllo"]
