"""The ensemble scheduler on its own, with steps answered by a stand-in `submit`: synchronous answers, parallel
steps, failures."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from naiad.config import model_config, pbtxt
from naiad.core.ensemble import EnsembleScheduler
from naiad.core.stats import ModelStats
from naiad.domain.errors import ServerError, invalid
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult, Tensor

FORK = """
name: "fork"
platform: "ensemble"
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "A" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 2 ] } ]
ensemble_scheduling { step [
  { model_name: "fast" input_map { key: "in" value: "X" } output_map { key: "out" value: "A" } },
  { model_name: "slow" input_map { key: "in" value: "X" } output_map { key: "out" value: "B" } }
] }
"""

Done = Callable[[InferenceResponse | ServerError], None]


def scheduler(answer: Callable[[str, InferenceRequest, Done], None]) -> EnsembleScheduler:
    config = model_config.build(pbtxt.to_json(pbtxt.parse_text(FORK, "config.pbtxt")), "fork")
    return EnsembleScheduler(config, ModelStats(), lambda model, version, request, done: answer(model, request, done))


def doubled(model: str, request: InferenceRequest) -> InferenceResponse:
    data = request.inputs[0].data * 2
    return InferenceResponse(model, "1", request.id, (Tensor("out", "FP32", data.shape, data, {}),))


def request() -> InferenceRequest:
    data = np.array([1.0, 2.0], dtype=np.float32)
    return InferenceRequest((Tensor("X", "FP32", (2,), data, {}),))


def test_a_step_answered_at_once_does_not_end_the_run_before_its_sibling_starts() -> None:
    later: list[Callable[[], None]] = []

    def answer(model: str, step: InferenceRequest, done: Done) -> None:
        if model == "fast":
            done(doubled(model, step))  # synchronously, inside submit
        else:
            later.append(lambda: done(doubled(model, step)))

    results: list[InferenceResult | ServerError] = []
    ensemble = scheduler(answer)
    ensemble.submit(request(), 0, None, results.append)
    assert results == [] and len(later) == 1 and ensemble.queued == 1
    later[0]()
    assert len(results) == 1 and isinstance(results[0], InferenceResult)
    assert [t.name for t in results[0].outputs] == ["A", "B"]
    assert ensemble.queued == 0


def test_the_first_failing_step_ends_the_run_once_with_the_ensemble_named() -> None:
    pending: list[Callable[[], None]] = []

    def answer(model: str, step: InferenceRequest, done: Done) -> None:
        if model == "fast":
            pending.append(lambda: done(invalid("bad input for fast")))
        else:
            pending.append(lambda: done(doubled(model, step)))

    results: list[InferenceResult | ServerError] = []
    ensemble = scheduler(answer)
    ensemble.submit(request(), 0, None, results.append)
    for call in pending:
        call()
    assert len(results) == 1 and isinstance(results[0], ServerError)
    assert results[0].message == "in ensemble 'fork', bad input for fast"
    assert ensemble.queued == 0


def test_a_step_refused_at_submit_fails_the_run() -> None:
    def answer(model: str, step: InferenceRequest, done: Done) -> None:
        raise invalid(f"Request for unknown model: '{model}' is not found")

    results: list[InferenceResult | ServerError] = []
    ensemble = scheduler(answer)
    ensemble.submit(request(), 0, None, results.append)
    assert len(results) == 1 and isinstance(results[0], ServerError)
    assert "in ensemble 'fork', Request for unknown model: 'fast'" in results[0].message
    assert ensemble.queued == 0
