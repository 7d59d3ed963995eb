"""Request checks against a model's config, with Triton's messages."""

from __future__ import annotations

import numpy as np
import pytest

from naiad.config import model_config
from naiad.core.validation import RequestChecker
from naiad.domain.errors import ErrorCode, ServerError
from naiad.domain.tensors import InferenceRequest, RequestedOutput, Tensor

CONFIG = model_config.build(
    {
        "backend": "python",
        "max_batch_size": 4,
        "input": [
            {"name": "A", "data_type": "TYPE_FP32", "dims": [2, -1]},
            {"name": "B", "data_type": "TYPE_INT32", "dims": [4], "reshape": {"shape": [2, 2]}},
            {"name": "C", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
        ],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
        "dynamic_batching": {},
    },
    "m",
)
CHECKER = RequestChecker(CONFIG)


def tensor(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    dtype = {"FP32": np.float32, "INT32": np.int32, "BYTES": np.object_}[datatype]
    return Tensor(name, datatype, shape, np.zeros(shape, dtype=dtype))


def good(batch: int = 2, width: int = 3) -> list[Tensor]:
    return [tensor("A", "FP32", (batch, 2, width)), tensor("B", "INT32", (batch, 4))]


def refused(inputs: list[Tensor], outputs: tuple[RequestedOutput, ...] | None = None) -> str:
    with pytest.raises(ServerError) as info:
        CHECKER.check(InferenceRequest(tuple(inputs), outputs))
    assert info.value.code is ErrorCode.INVALID_ARG
    return info.value.message


def test_a_good_request_is_reshaped_and_keyed_for_batching() -> None:
    checked, batch, key = CHECKER.check(InferenceRequest(tuple(good())))
    assert batch == 2
    assert checked.inputs[1].shape == (2, 2, 2)
    assert key == (("A", (2, 3)), ("B", (4,)))
    _, _, other = CHECKER.check(InferenceRequest(tuple(good(width=5))))
    assert other != key  # a different variable dimension never batches with it


def test_messages_name_model_and_tensor() -> None:
    assert "unexpected inference input 'Z' for model 'm'" in refused([*good(), tensor("Z", "FP32", (2, 1))])
    assert "data-type is 'INT32', but model 'm' expects 'FP32'" in refused(
        [tensor("A", "INT32", (2, 2, 3)), tensor("B", "INT32", (2, 4))]
    )
    assert "Expected [-1,2,-1], got [2,3,3]" in refused([tensor("A", "FP32", (2, 3, 3)), tensor("B", "INT32", (2, 4))])
    assert "batch-size must be <= 4 for 'm'" in refused(good(batch=5))
    assert "batch size does not match" in refused([tensor("A", "FP32", (2, 2, 3)), tensor("B", "INT32", (3, 4))])
    missing = refused(good()[:1])
    assert "expected number of inputs between 2 and 3 but got 1 inputs for model 'm'" in missing
    assert "missing required input(s) ['B']" in missing
    assert "unexpected inference output 'NOPE'" in refused(good(), (RequestedOutput("NOPE"),))
    assert "output 'OUT' already exists" in refused(good(), (RequestedOutput("OUT"), RequestedOutput("OUT")))


def test_optional_input_may_come() -> None:
    _, batch, _ = CHECKER.check(InferenceRequest((*good(), tensor("C", "BYTES", (2, 1)))))
    assert batch == 2
