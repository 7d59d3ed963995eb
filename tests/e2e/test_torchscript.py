"""TorchScript models (`pytorch_libtorch`) served by a real server process: the Iris and CIFAR walkthroughs, Triton's
input and output naming rules, dynamic batching, parameters, and load errors that say how to fix the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.concurrent_clients import assert_batched, infer_concurrently
from tests.conftest import ServerFactory

torch = pytest.importorskip("torch")


class IrisNet(torch.nn.Module):  # type: ignore[misc]
    """The walkthrough's classifier: 4 features in, 3 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class TinyCifar(torch.nn.Module):  # type: ignore[misc]
    """Any image size in, 10 probabilities out: UINT8 [N, 3, H, W] -> FP32 [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(image.float() / 255.0)).mean(dim=(2, 3))
        return torch.softmax(self.fc(features), dim=1)


class TwoInTwoOut(torch.nn.Module):  # type: ignore[misc]
    """forward(scale, values) -> (values * scale, values.sum(1)): argument names differ from their order."""

    def forward(self, scale: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values * scale, values.sum(dim=1, keepdim=True)


IRIS_CONFIG = """
name: "iris"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""

CIFAR_CONFIG = """
name: "cifar"
platform: "pytorch_libtorch"
default_model_filename: "model.ts"
max_batch_size: 0
input [ { name: "image__0" data_type: TYPE_UINT8 dims: [ -1, 3, -1, -1 ] } ]
output [ { name: "probs__0" data_type: TYPE_FP32 dims: [ -1, 10 ] } ]
"""


def save_traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> torch.jit.ScriptModule:
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = torch.jit.trace(module.eval(), example)
    torch.jit.save(traced, str(path))
    return traced


def write_config(repo: Path, name: str, config: str) -> None:
    (repo / name).mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def walkthrough_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.jit.ScriptModule, torch.nn.Module]:
    repo = tmp_path_factory.mktemp("ts") / "models"
    torch.manual_seed(0)
    iris = save_traced(IrisNet(), (torch.zeros(1, 4),), repo / "iris" / "1" / "model.pt")
    write_config(repo, "iris", IRIS_CONFIG)
    cifar = TinyCifar().eval()
    save_traced(cifar, (torch.zeros(1, 3, 8, 8, dtype=torch.uint8),), repo / "cifar" / "1" / "model.ts")
    write_config(repo, "cifar", CIFAR_CONFIG)
    return repo, iris, cifar


def test_iris_walkthrough_json_request_returns_the_models_logits(
    walkthrough_repo: tuple[Path, torch.jit.ScriptModule, torch.nn.Module], naiad: ServerFactory
) -> None:
    repo, iris, _ = walkthrough_repo
    server = naiad.start(repo)
    body = {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}
    reply = requests.post(server.url + "/v2/models/iris/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    output = reply.json()["outputs"][0]
    assert output["name"] == "output__0" and output["datatype"] == "FP32" and output["shape"] == [1, 3]
    expected = iris(torch.tensor([[5.1, 3.5, 1.4, 0.2]])).detach().numpy()
    np.testing.assert_allclose(np.array(output["data"]).reshape(1, 3), expected, rtol=1e-5, atol=1e-6)
    metadata = requests.get(server.url + "/v2/models/iris", timeout=5).json()
    assert metadata["platform"] == "pytorch_libtorch"
    assert metadata["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, 4]}]


def test_concurrent_requests_are_batched_and_split_back_correctly(
    walkthrough_repo: tuple[Path, torch.jit.ScriptModule, torch.nn.Module], naiad: ServerFactory
) -> None:
    repo, iris, _ = walkthrough_repo
    server = naiad.start(repo)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32) for _ in range(48)]

    answers = infer_concurrently(server.address, "iris", "input__0", "output__0", batches)
    for features, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer, iris(torch.from_numpy(features)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert_batched(server.url, "iris", batches)


def test_cifar_walkthrough_takes_any_image_size_over_grpc(
    walkthrough_repo: tuple[Path, torch.jit.ScriptModule, torch.nn.Module], naiad: ServerFactory
) -> None:
    repo, _, cifar = walkthrough_repo
    server = naiad.start(repo, grpc=True)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    for height, width in ((32, 32), (17, 40)):
        image = np.random.default_rng(height).integers(0, 255, size=(2, 3, height, width), dtype=np.uint8)
        tensor = grpcclient.InferInput("image__0", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        probs = client.infer("cifar", [tensor]).as_numpy("probs__0")
        assert probs is not None and probs.shape == (2, 10)
        with torch.inference_mode():
            expected = cifar(torch.from_numpy(image)).numpy()
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    config = client.get_model_config("cifar", as_json=True)["config"]
    assert config["platform"] == "pytorch_libtorch" and config["default_model_filename"] == "model.ts"


@pytest.mark.parametrize(
    ("input_names", "output_names"),
    [
        (("values", "scale"), ("OUT__0", "OUT__1")),  # forward() argument names, listed out of order
        (("B__1", "A__0"), ("second__1", "first__0")),  # <name>__<index>, listed out of order
        (("first", "second"), ("product", "total")),  # neither: the order of the config
    ],
)
def test_inputs_and_outputs_map_as_in_triton(
    input_names: tuple[str, str], output_names: tuple[str, str], tmp_path: Path, naiad: ServerFactory
) -> None:
    repo = tmp_path / "models"
    save_traced(TwoInTwoOut(), (torch.ones(1, 3), torch.ones(1, 3)), repo / "two" / "1" / "model.pt")
    inputs = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 3 ] }}' for n in input_names)
    write_config(
        repo,
        "two",
        f"""
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input [ {inputs} ]
        output [ {{ name: "{output_names[0]}" data_type: TYPE_FP32 dims: [ 3 ] }},
                 {{ name: "{output_names[1]}" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        """,
    )
    server = naiad.start(repo)
    scale = np.array([[2.0, 2.0, 2.0]], dtype=np.float32)
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    # which config input lands on forward(scale, values), per convention
    by_name = {
        ("values", "scale"): {"scale": scale, "values": values},
        ("B__1", "A__0"): {"A__0": scale, "B__1": values},
        ("first", "second"): {"first": scale, "second": values},
    }[input_names]
    body = {
        "inputs": [
            {"name": n, "shape": [1, 3], "datatype": "FP32", "data": by_name[n].ravel().tolist()} for n in input_names
        ]
    }
    reply = requests.post(server.url + "/v2/models/two/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    product, total = (
        (outputs["OUT__0"], outputs["OUT__1"])
        if "OUT__0" in outputs
        else (outputs["first__0"], outputs["second__1"])
        if "first__0" in outputs
        else (outputs["product"], outputs["total"])
    )
    assert product == [2.0, 4.0, 6.0]
    assert total == [6.0]


def test_broken_files_fail_to_load_with_the_fix_in_the_reason(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    iris_config = IRIS_CONFIG.replace('name: "iris"\n', "")
    # a state_dict saved with torch.save, where a TorchScript graph is needed
    (repo / "state_dict" / "1").mkdir(parents=True)
    torch.save(IrisNet().state_dict(), repo / "state_dict" / "1" / "model.pt")
    write_config(repo, "state_dict", iris_config)
    # a file written by a newer PyTorch: the archive's format version is beyond what this torch reads
    newer = repo / "newer" / "1" / "model.pt"
    save_traced(IrisNet(), (torch.zeros(1, 4),), tmp_path / "plain.pt")
    newer.parent.mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "plain.pt") as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("/version") or item.filename.endswith(".data/version"):
                data = b"99\n"
            target.writestr(item, data)
    write_config(repo, "newer", iris_config)
    # the weights under another name
    (repo / "misnamed" / "1").mkdir(parents=True)
    (tmp_path / "plain.pt").rename(repo / "misnamed" / "1" / "model.pth")
    write_config(repo, "misnamed", iris_config)
    # a config that asks for an input forward() does not have
    save_traced(IrisNet(), (torch.zeros(1, 4),), repo / "extra_input" / "1" / "model.pt")
    write_config(
        repo,
        "extra_input",
        iris_config.replace(
            'input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            'input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] },'
            ' { name: "input__1" data_type: TYPE_FP32 dims: [ 4 ] } ]',
        ),
    )
    # a datatype torch has no tensor for in Triton's PyTorch backend
    save_traced(IrisNet(), (torch.zeros(1, 4),), repo / "uint32" / "1" / "model.pt")
    write_config(repo, "uint32", iris_config.replace("TYPE_FP32 dims: [ 4 ]", "TYPE_UINT32 dims: [ 4 ]"))

    server = naiad.start(repo, "--exit-on-error=false", until="started")
    index = {e["name"]: e for e in requests.post(server.url + "/v2/repository/index", timeout=10).json()}
    assert all(entry["state"] == "UNAVAILABLE" for entry in index.values()), index
    assert "written by torch.save" in index["state_dict"]["reason"]
    assert "torch.jit.trace" in index["state_dict"]["reason"]
    assert f"newer PyTorch than the installed {torch.__version__}" in index["newer"]["reason"]
    assert "unable to find" in index["misnamed"]["reason"] and "model.pth" in index["misnamed"]["reason"]
    assert "configuration expects 2 inputs, model provides 1" in index["extra_input"]["reason"]
    assert "unsupported datatype TYPE_UINT32 for input 'input__0'" in index["uint32"]["reason"]


def test_wrong_output_datatype_and_missing_output_index_are_request_errors(
    tmp_path: Path, naiad: ServerFactory
) -> None:
    repo = tmp_path / "models"
    save_traced(IrisNet(), (torch.zeros(1, 4),), repo / "wrong_type" / "1" / "model.pt")
    unnamed = IRIS_CONFIG.replace('name: "iris"\n', "")
    write_config(repo, "wrong_type", unnamed.replace("TYPE_FP32 dims: [ 3 ]", "TYPE_INT64 dims: [ 3 ]"))
    save_traced(IrisNet(), (torch.zeros(1, 4),), repo / "no_index" / "1" / "model.pt")
    write_config(repo, "no_index", unnamed.replace("output__0", "output__1"))
    server = naiad.start(repo)
    body = {"inputs": [{"name": "input__0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    wrong = requests.post(server.url + "/v2/models/wrong_type/infer", json=body, timeout=10)
    assert wrong.status_code == 400
    assert "configuration expects datatype TYPE_INT64 for output 'output__0'" in wrong.json()["error"]
    assert "model provides TYPE_FP32" in wrong.json()["error"]
    missing = requests.post(server.url + "/v2/models/no_index/infer", json=body, timeout=10)
    assert missing.status_code == 400
    assert "refers to an output index which doesn't exist. This model has 1 outputs" in missing.json()["error"]


class Shout(torch.nn.Module):  # type: ignore[misc]
    """List[str] in: the strings upper-cased, and their lengths as a tensor."""

    def forward(self, words: list[str]) -> tuple[list[str], torch.Tensor]:
        lengths = torch.tensor([len(word) for word in words], dtype=torch.int64)
        return [word.upper() for word in words], lengths


def shout_config(max_batch_size: int, dims: str) -> str:
    return f"""
        platform: "pytorch_libtorch"
        max_batch_size: {max_batch_size}
        input [ {{ name: "WORDS__0" data_type: TYPE_STRING dims: [ {dims} ] }} ]
        output [ {{ name: "LOUD__0" data_type: TYPE_STRING dims: [ {dims} ] }},
                 {{ name: "LENGTHS__1" data_type: TYPE_INT64 dims: [ {dims} ] }} ]
        """


def test_bytes_travel_as_a_list_of_strings(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    for name, config in (("shout", shout_config(0, "-1")), ("too_wide", shout_config(4, "2"))):
        (repo / name / "1").mkdir(parents=True)
        torch.jit.save(torch.jit.script(Shout()), str(repo / name / "1" / "model.pt"))
        write_config(repo, name, config)
    server = naiad.start(repo, "--exit-on-error=false", "--strict-readiness=false")
    body = {"inputs": [{"name": "WORDS__0", "shape": [3], "datatype": "BYTES", "data": ["naiad", "is", "héré"]}]}
    reply = requests.post(server.url + "/v2/models/shout/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    # as TorchScript itself answers: it upper-cases ASCII only and counts UTF-8 bytes
    loud, lengths = torch.jit.script(Shout())(["naiad", "is", "héré"])
    assert outputs["LOUD__0"]["data"] == loud == ["NAIAD", "IS", "HéRé"]
    assert outputs["LENGTHS__1"]["data"] == lengths.tolist() == [5, 2, 6]
    index = {e["name"]: e for e in requests.post(server.url + "/v2/repository/index", timeout=10).json()}
    assert "Triton only supports 1 dimensional List of String as input for 'WORDS__0'" in index["too_wide"]["reason"]
