"""Ensembles served by a real server process: a Python pre-processing model, an ONNX model and a Python
post-processing model chained as one model, batching through the steps, errors from a step, statistics, and the
load-time checks of the step graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests import models
from tests.concurrent_clients import infer_concurrently
from tests.conftest import ServerFactory

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
from tests.e2e.test_onnx_runtime import export_cnn  # noqa: E402 - needs torch and onnx, checked above

PRE = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            if not image.any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("the image is all black", pb_utils.TritonError.INVALID_ARG)))
                continue
            pixels = (image.astype(np.float32) / 255.0 - 0.5) / 0.25
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", pixels)]))
        return responses
"""

POST = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
            label = probs.argmax(axis=1).astype(np.int64).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs),
                                                         pb_utils.Tensor("LABEL", label)]))
        return responses
"""

PIPELINE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 4
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ] } ]
output [
  { name: "PROBS" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "preprocess"
      model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" }
      output_map { key: "PIXELS" value: "pixels" }
    },
    {
      model_name: "classifier"
      model_version: -1
      input_map { key: "input.1" value: "pixels" }
      output_map { key: "logits" value: "logits" }
    },
    {
      model_name: "postprocess"
      model_version: -1
      input_map { key: "LOGITS" value: "logits" }
      output_map [ { key: "PROBS" value: "PROBS" }, { key: "LABEL" value: "LABEL" } ]
    }
  ]
}
"""


def python_config(name: str, inputs: str, outputs: str) -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\ninput [ {inputs} ]\noutput [ {outputs} ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    )


def build_pipeline(root: Path) -> tuple[Path, object]:
    repo = root / "models"
    models.write_model(
        repo,
        "preprocess",
        python_config(
            "preprocess",
            '{ name: "IMAGE" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ] }',
            '{ name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }',
        ),
        PRE,
    )
    models.write_model(
        repo,
        "postprocess",
        python_config(
            "postprocess",
            '{ name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] }',
            '{ name: "PROBS" data_type: TYPE_FP32 dims: [ 10 ] }, { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] }',
        ),
        POST,
    )
    onnx_file = export_cnn(repo / "classifier" / "1" / "model.onnx")
    (repo / "pipeline" / "1").mkdir(parents=True)
    (repo / "pipeline" / "config.pbtxt").write_text(PIPELINE)
    return repo, ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


def expected(session: object, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = (images.astype(np.float32) / 255.0 - 0.5) / 0.25
    logits = session.run(["logits"], {"input.1": pixels})[0]  # type: ignore[attr-defined]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    return probs, probs.argmax(axis=1).reshape(-1, 1)


def test_pipeline_of_three_models_is_served_as_one(tmp_path: Path, naiad: ServerFactory) -> None:
    repo, session = build_pipeline(tmp_path)
    server = naiad.start(repo, grpc=True)
    metadata = requests.get(server.url + "/v2/models/pipeline", timeout=5).json()
    assert metadata["platform"] == "ensemble"
    assert [o["name"] for o in metadata["outputs"]] == ["PROBS", "LABEL"]

    images = np.random.default_rng(3).integers(1, 255, size=(2, 3, 32, 32), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer("pipeline", [tensor], request_id="walk-1")
    probs, label = expected(session, images)
    np.testing.assert_allclose(result.as_numpy("PROBS"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("LABEL"), label)
    assert result.get_response().id == "walk-1"

    # only the output asked for comes back
    only_label = client.infer("pipeline", [tensor], outputs=[grpcclient.InferRequestedOutput("LABEL")])
    assert only_label.as_numpy("PROBS") is None
    np.testing.assert_array_equal(only_label.as_numpy("LABEL"), label)

    stats = {s["name"]: s for s in requests.get(server.url + "/v2/models/stats", timeout=5).json()["model_stats"]}
    assert stats["pipeline"]["inference_stats"]["success"]["count"] == 2
    for step in ("preprocess", "classifier", "postprocess"):
        assert stats[step]["inference_stats"]["success"]["count"] == 2, step
        assert stats[step]["inference_count"] == 4, step


def test_concurrent_ensemble_requests_are_batched_in_the_steps(tmp_path: Path, naiad: ServerFactory) -> None:
    repo, session = build_pipeline(tmp_path)
    server = naiad.start(repo)
    rng = np.random.default_rng(4)
    batches = [rng.integers(1, 255, size=(int(rng.integers(1, 3)), 3, 32, 32), dtype=np.uint8) for _ in range(24)]
    answers = infer_concurrently(server.address, "pipeline", "IMAGE", "PROBS", batches, datatype="UINT8")
    for images, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(answer, expected(session, images)[0], rtol=1e-5, atol=1e-6)
    stats = requests.get(server.url + "/v2/models/preprocess/stats", timeout=5).json()["model_stats"][0]
    assert stats["inference_count"] == sum(len(b) for b in batches)
    assert stats["execution_count"] < len(batches), "the steps should batch concurrent ensemble requests"


def test_a_failing_step_reaches_the_client_with_the_ensemble_named(tmp_path: Path, naiad: ServerFactory) -> None:
    repo, _ = build_pipeline(tmp_path)
    server = naiad.start(repo)
    black = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    image = {"name": "IMAGE", "shape": list(black.shape), "datatype": "UINT8", "data": black.ravel().tolist()}
    body = {"inputs": [image]}
    reply = requests.post(server.url + "/v2/models/pipeline/infer", json=body, timeout=10)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "in ensemble 'pipeline', the image is all black"
    wrong = requests.post(
        server.url + "/v2/models/pipeline/infer",
        json={"inputs": [{"name": "IMAGE", "shape": [1, 3], "datatype": "UINT8", "data": [1, 2, 3]}]},
        timeout=10,
    )
    assert wrong.status_code == 400 and "unexpected shape for input 'IMAGE' for model 'pipeline'" in wrong.text
    stats = requests.get(server.url + "/v2/models/pipeline/stats", timeout=5).json()["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 1


def test_step_graphs_that_cannot_work_fail_to_load_saying_why(tmp_path: Path, naiad: ServerFactory) -> None:
    repo, _ = build_pipeline(tmp_path)
    broken = {
        "unknown_input": PIPELINE.replace('key: "input.1" value: "pixels"', 'key: "images" value: "pixels"'),
        "unwritten_output": PIPELINE.replace(', { key: "LABEL" value: "LABEL" }', ""),
        "unused_tensor": PIPELINE.replace('{ key: "LABEL" value: "LABEL" }', '{ key: "LABEL" value: "label2" }'),
        "missing_model": PIPELINE.replace('model_name: "postprocess"', 'model_name: "nowhere"'),
        "too_large_batch": PIPELINE.replace("max_batch_size: 4", "max_batch_size: 16"),
        "cycle_a": 'platform: "ensemble"\nmax_batch_size: 4\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'ensemble_scheduling { step [ { model_name: "cycle_b" model_version: -1 input_map { key: "X" value: "X" }'
        ' output_map { key: "Y" value: "Y" } } ] }\n',
    }
    broken["cycle_b"] = broken["cycle_a"].replace('"cycle_b"', '"cycle_a"')
    for name, config in broken.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config.replace('name: "pipeline"\n', ""))
    server = naiad.start(repo, "--exit-on-error=false", until="started")
    index = {e["name"]: e for e in requests.post(server.url + "/v2/repository/index", timeout=10).json()}
    assert index["pipeline"]["state"] == "READY"
    reasons = {name: index[name].get("reason", "") for name in broken}
    assert (
        "ensemble tensor pixels is mapping to non-existing input images in model classifier"
        in (reasons["unknown_input"])
    )
    assert "output 'LABEL' for ensemble 'unwritten_output' is not written" in reasons["unwritten_output"]
    assert "ensemble tensor 'label2' is unused in ensemble 'unused_tensor'" in reasons["unused_tensor"]
    assert "contains models that are not available or ambiguous: nowhere" in reasons["missing_model"]
    assert "allows maximum batch size 16, but it contains model preprocess" in reasons["too_large_batch"]
    assert "circular dependency between ensembles: cycle_a -> cycle_b -> cycle_a" in reasons["cycle_a"]
    assert "circular dependency between ensembles" in reasons["cycle_b"]


FORK = """
platform: "ensemble"
max_batch_size: 4
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ] } ]
output [
  { name: "PIXELS" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] },
  { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] }
]
ensemble_scheduling {
  step [
    { model_name: "preprocess" input_map { key: "IMAGE" value: "IMAGE" } output_map { key: "PIXELS" value: "PIXELS" } },
    { model_name: "classifier" input_map { key: "input.1" value: "PIXELS" }
      output_map { key: "logits" value: "LOGITS" } }
  ]
}
"""


def test_steps_that_no_requested_output_needs_are_not_run(tmp_path: Path, naiad: ServerFactory) -> None:
    repo, _ = build_pipeline(tmp_path)
    (repo / "fork" / "1").mkdir(parents=True)
    (repo / "fork" / "config.pbtxt").write_text(FORK)
    server = naiad.start(repo, grpc=True)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    images = np.random.default_rng(5).integers(1, 255, size=(1, 3, 32, 32), dtype=np.uint8)
    tensor = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)

    def classifier_runs() -> int:
        stats = requests.get(server.url + "/v2/models/classifier/stats", timeout=5).json()["model_stats"][0]
        return int(stats["inference_count"])

    pixels_only = client.infer("fork", [tensor], outputs=[grpcclient.InferRequestedOutput("PIXELS")])
    assert pixels_only.as_numpy("PIXELS") is not None and pixels_only.as_numpy("LOGITS") is None
    assert classifier_runs() == 0
    both = client.infer("fork", [tensor])
    assert both.as_numpy("LOGITS") is not None and both.as_numpy("LOGITS").shape == (1, 10)
    assert classifier_runs() == 1
