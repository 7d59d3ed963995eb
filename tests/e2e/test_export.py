"""`naiad export` as a user runs it: a module file and its state_dict become a repository entry (TorchScript or
ONNX) that the server then serves with the module's own answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import ServerFactory

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

MODULES = """
import torch


class IrisNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


class TinyCifar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, image):
        features = torch.relu(self.conv(image.float() / 255.0)).mean(dim=(2, 3))
        return torch.softmax(self.fc(features), dim=1)


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 32)

    def forward(self, x):
        return self.hidden(x)


class Named(torch.nn.Module):
    def forward(self, x):
        return {"doubled": x * 2}
"""


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naiad", "export", *args], capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path, object]:
    """models.py and the weights of an IrisNet, as a user has them after training."""
    source = tmp_path / "models.py"
    source.write_text(MODULES)
    namespace: dict[str, object] = {}
    exec(compile(MODULES, str(source), "exec"), namespace)
    torch.manual_seed(5)
    iris = namespace["IrisNet"]()  # type: ignore[operator]
    weights = tmp_path / "iris_weights.pt"
    torch.save(iris.state_dict(), weights)
    return source, weights, iris.eval()


def test_exported_torchscript_entry_serves_the_modules_answers(
    trained: tuple[Path, Path, object], tmp_path: Path, naiad: ServerFactory
) -> None:
    source, weights, iris = trained
    repo = tmp_path / "repo"
    result = run_export(
        *("--module", f"{source}:IrisNet", "--weights", str(weights), "--input", "input__0:FP32:4"),
        *("--repository", str(repo), "--name", "iris"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    iris: version 1 (pytorch_libtorch)" in result.stdout
    config = (repo / "iris" / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config and "max_batch_size: 8" in config
    assert 'name: "output__0" data_type: TYPE_FP32 dims: [ 3 ]' in config and "dynamic_batching" in config

    server = naiad.start(repo)
    body = {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    reply = requests.post(server.url + "/v2/models/iris/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    with torch.no_grad():
        expected = iris(torch.tensor([[5.1, 3.5, 1.4, 0.2]])).numpy()  # type: ignore[operator]
    np.testing.assert_allclose(reply.json()["outputs"][0]["data"], expected.ravel(), rtol=1e-5, atol=1e-6)


def test_exported_onnx_entry_with_any_image_size(
    trained: tuple[Path, Path, object], tmp_path: Path, naiad: ServerFactory
) -> None:
    source, _, _ = trained
    repo = tmp_path / "repo"
    result = run_export(
        *("--module", f"{source}:TinyCifar", "--input", "image__0:UINT8:-1,3,-1,-1", "--output", "probs__0"),
        *("--max-batch-size", "0", "--format", "onnx", "--repository", str(repo), "--name", "cifar"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = (repo / "cifar" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 0" in config
    assert 'name: "image__0" data_type: TYPE_UINT8 dims: [ -1, 3, -1, -1 ]' in config
    assert 'name: "probs__0" data_type: TYPE_FP32 dims: [ -1, 10 ]' in config
    server = naiad.start(repo)
    for height, width in ((32, 32), (20, 41)):
        image = np.random.default_rng(height).integers(0, 255, size=(3, 3, height, width), dtype=np.uint8)
        body = {
            "inputs": [
                {"name": "image__0", "shape": list(image.shape), "datatype": "UINT8", "data": image.ravel().tolist()}
            ]
        }
        reply = requests.post(server.url + "/v2/models/cifar/infer", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["shape"] == [3, 10]


def test_export_refuses_weights_that_do_not_fit_and_outputs_it_cannot_serve(
    trained: tuple[Path, Path, object], tmp_path: Path
) -> None:
    source, weights, _ = trained
    repo = tmp_path / "repo"
    wrong = run_export(
        *("--module", f"{source}:Wide", "--weights", str(weights), "--input", "x__0:FP32:4"),
        *("--repository", str(repo), "--name", "wide"),
    )
    assert wrong.returncode == 1
    assert "do not fit the module: missing [], unexpected ['out.bias', 'out.weight']" in wrong.stderr
    named = run_export(
        *("--module", f"{source}:Named", "--input", "x__0:FP32:4", "--repository", str(repo), "--name", "named")
    )
    assert named.returncode == 1
    assert "forward() must return a Tensor or a tuple of Tensors to be served, got dict" in named.stderr
    bad_input = run_export(
        *("--module", f"{source}:IrisNet", "--input", "x__0:FLOAT:4", "--repository", str(repo), "--name", "x")
    )
    assert bad_input.returncode == 2 and "must be a numeric KServe name such as FP32" in bad_input.stderr
