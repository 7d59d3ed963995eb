"""docs/pytorch-and-onnx.md followed as written: Iris trained and exported to TorchScript, CIFAR with any image size,
ResNet-50 in ONNX with no config.pbtxt; each served and asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.conftest import ServerFactory

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

WALKTHROUGHS = Path(__file__).resolve().parents[2] / "examples" / "walkthroughs"


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def naiad_export(*args: str, cwd: Path) -> str:
    return run("-m", "naiad", "export", *args, cwd=cwd)


def test_iris_and_cifar_walkthroughs(tmp_path: Path, naiad: ServerFactory) -> None:
    trained = run(str(WALKTHROUGHS / "train_iris.py"), "iris_weights.pt", cwd=tmp_path)
    accuracy = float(trained.split("accuracy ")[1].split(";")[0])
    assert accuracy > 0.9, trained
    networks = WALKTHROUGHS / "networks.py"
    naiad_export(
        *("--module", f"{networks}:IrisNet", "--weights", "iris_weights.pt", "--input", "input__0:FP32:4"),
        *("--max-batch-size", "8", "--repository", "models", "--name", "iris"),
        cwd=tmp_path,
    )
    naiad_export(
        *("--module", f"{networks}:CifarNet", "--input", "image__0:UINT8:-1,3,-1,-1", "--output", "probs__0"),
        *("--max-batch-size", "0", "--filename", "model.ts", "--repository", "models", "--name", "cifar"),
        cwd=tmp_path,
    )
    assert 'default_model_filename: "model.ts"' in (tmp_path / "models" / "cifar" / "config.pbtxt").read_text()
    server = naiad.start(tmp_path / "models", grpc=True)

    body = {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}
    reply = requests.post(server.url + "/v2/models/iris/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    logits = reply.json()["outputs"][0]["data"]
    assert len(logits) == 3 and int(np.argmax(logits)) == 0, "a setosa flower"

    client = grpcclient.InferenceServerClient(server.grpc_address)
    image = np.random.default_rng(0).integers(0, 255, size=(1, 3, 48, 64), dtype=np.uint8)
    tensor = grpcclient.InferInput("image__0", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    probs = client.infer("cifar", [tensor]).as_numpy("probs__0")
    assert probs is not None and probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) < 1e-5


def test_resnet50_onnx_walkthrough_without_config(tmp_path: Path, naiad: ServerFactory) -> None:
    run(str(WALKTHROUGHS / "export_resnet50_onnx.py"), "models", "--base", "8", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "models" / "resnet50").rglob("*")) == ["1", "model.onnx"]
    server = naiad.start(tmp_path / "models", "--backend-config=onnxruntime,default-max-batch-size=16")
    metadata = requests.get(server.url + "/v2/models/resnet50", timeout=5).json()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}]
    assert requests.get(server.url + "/v2/models/resnet50/config", timeout=5).json()["max_batch_size"] == 16
    images = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    tensor = {"name": "input", "shape": [2, 3, 224, 224], "datatype": "FP32", "data": images.ravel().tolist()}
    body = {"inputs": [tensor]}
    reply = requests.post(server.url + "/v2/models/resnet50/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["shape"] == [2, 1000]
