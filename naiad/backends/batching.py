"""One execution's worth of requests for a framework backend: their inputs joined along the batch dimension, and
the model's outputs split back into one result per request, as Triton's backend library does for its backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from naiad.domain.errors import ErrorCode, ServerError
from naiad.domain.tensors import InferenceRequest, InferenceResult, Tensor


class Batch:
    """The inputs of several requests, each joined along dimension 0 when the model batches."""

    __slots__ = ("inputs", "requests", "sizes")

    def __init__(self, requests: Sequence[InferenceRequest], batched: bool) -> None:
        self.requests = requests
        if len(requests) == 1:
            self.inputs: dict[str, np.ndarray] = {tensor.name: tensor.data for tensor in requests[0].inputs}
        else:
            # the scheduler only batches requests whose inputs agree in name and non-batch shape
            by_name: dict[str, list[np.ndarray]] = {}
            for request in requests:
                for tensor in request.inputs:
                    by_name.setdefault(tensor.name, []).append(tensor.data)
            self.inputs = {name: np.concatenate(parts) for name, parts in by_name.items()}
        if batched:
            self.sizes = [request.inputs[0].shape[0] if request.inputs else 1 for request in requests]
        else:
            self.sizes = [0] * len(requests)

    def split(
        self, outputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str], model: str
    ) -> list[InferenceResult | ServerError]:
        """One result per request: every output's rows for that request (the whole output when not batched);
        `datatypes` gives each output's KServe datatype."""
        if not self.sizes or not self.sizes[0]:
            tensors = tuple(Tensor(name, datatypes[name], array.shape, array, {}) for name, array in outputs.items())
            return [InferenceResult(tensors) for _ in self.requests]
        total = sum(self.sizes)
        results: list[InferenceResult | ServerError] = []
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] < total:
                got = array.shape[0] if array.ndim else "a scalar"
                failure = ServerError(
                    ErrorCode.UNSUPPORTED,
                    f"failed to split the output tensor '{name}' of model '{model}' in responses: expected "
                    f"batch size of at least {total} in model output, got {got}",
                )
                return [failure] * len(self.requests)
        start = 0
        for size in self.sizes:
            end = start + size
            rows = tuple(
                Tensor(name, datatypes[name], (size, *array.shape[1:]), array[start:end], {})
                for name, array in outputs.items()
            )
            results.append(InferenceResult(rows))
            start = end
        return results
