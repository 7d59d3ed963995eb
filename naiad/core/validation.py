"""Checks a request against its model's config (inputs, datatypes, shapes, batch size, outputs) with Triton's
messages, and gives the model its inputs reshaped as the config's `reshape` asks."""

from __future__ import annotations

from collections.abc import Hashable

from naiad.domain.errors import invalid
from naiad.domain.model_config import ModelConfig, TensorSpec
from naiad.domain.tensors import InferenceRequest, Tensor

_BATCH_NOTE = (
    " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended "
    "to each input shape. If you want to specify the full shape including the batch dim in your input dims "
    "config, try setting max_batch_size to zero. See the model configuration docs for more info on "
    "max_batch_size."
)


def tag(request: InferenceRequest) -> str:
    """Triton's prefix on the errors its core finds in a request: `[request id: <id>] `."""
    return f"[request id: {request.id or '<id_unknown>'}] "


class RequestChecker:
    """Validates requests for one model; built once per loaded model version."""

    def __init__(self, config: ModelConfig) -> None:
        self._model = config.name
        self._max_batch = config.max_batch_size
        self._inputs: dict[str, TensorSpec] = {spec.name: spec for spec in config.inputs}
        self._outputs = frozenset(spec.name for spec in config.outputs)
        self._required = [spec.name for spec in config.inputs if not spec.optional]
        self._reshaping = any(spec.reshape is not None for spec in config.inputs)
        self._batching = config.dynamic_batching is not None

    def check(self, request: InferenceRequest) -> tuple[InferenceRequest, int, Hashable]:
        """The request as the model sees it, its batch size, and the key of requests it may batch with."""
        inputs = request.inputs
        model = self._model
        batch = 0
        seen: set[str] = set()
        for tensor in inputs:
            spec = self._inputs.get(tensor.name)
            if spec is None:
                raise invalid(f"unexpected inference input '{tensor.name}' for model '{model}'")
            if tensor.name in seen:
                raise invalid(f"input '{tensor.name}' already exists in request for model '{model}'")
            seen.add(tensor.name)
            if tensor.datatype != spec.datatype:
                raise invalid(
                    f"{tag(request)}inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                    f"'{model}' expects '{spec.datatype}'"
                )
            shape = tensor.shape
            if self._max_batch:
                if not shape or not _matches(shape[1:], spec.dims):
                    raise invalid(tag(request) + self._shape_message(tensor, spec, batched=True))
                size = shape[0]
                if batch and size != batch:
                    raise invalid(
                        f"{tag(request)}input '{tensor.name}' batch size does not match other inputs for '{model}'"
                    )
                batch = size
            elif not _matches(shape, spec.dims):
                raise invalid(tag(request) + self._shape_message(tensor, spec, batched=False))
        if len(seen) != len(self._inputs):
            missing = [name for name in self._required if name not in seen]
            if missing:
                raise invalid(tag(request) + self._missing_message(seen, missing))
        if self._max_batch:
            if batch > self._max_batch:
                raise invalid(f"{tag(request)}inference request batch-size must be <= {self._max_batch} for '{model}'")
            if batch < 1:
                raise invalid(f"{tag(request)}inference request batch-size must be >= 1 for '{model}', got {batch}")
        else:
            batch = 1
        if request.outputs is not None:
            self._check_outputs(request)
        if self._reshaping:
            request = self._reshaped(request)
        key: Hashable = None
        if self._batching:
            key = tuple([(tensor.name, tensor.shape[1:]) for tensor in inputs])
        return request, batch, key

    def _check_outputs(self, request: InferenceRequest) -> None:
        names: set[str] = set()
        for output in request.outputs or ():
            if output.name not in self._outputs:
                raise invalid(f"unexpected inference output '{output.name}' for model '{self._model}'")
            if output.name in names:
                raise invalid(f"output '{output.name}' already exists in request")
            names.add(output.name)

    def _reshaped(self, request: InferenceRequest) -> InferenceRequest:
        tensors: list[Tensor] = []
        for tensor in request.inputs:
            reshape = self._inputs[tensor.name].reshape
            if reshape is None:
                tensors.append(tensor)
                continue
            shape = (tensor.shape[0], *reshape) if self._max_batch else reshape
            try:
                data = tensor.data.reshape(shape)
            except ValueError:
                raise invalid(
                    f"input '{tensor.name}' of shape {list(tensor.shape)} cannot be reshaped to {list(shape)} "
                    f"for model '{self._model}'"
                ) from None
            tensors.append(Tensor(tensor.name, tensor.datatype, tuple(data.shape), data, tensor.parameters))
        return InferenceRequest(tuple(tensors), request.outputs, request.id, request.parameters)

    def _shape_message(self, tensor: Tensor, spec: TensorSpec, batched: bool) -> str:
        expected = [-1, *spec.dims] if batched else list(spec.dims)
        message = (
            f"unexpected shape for input '{tensor.name}' for model '{self._model}'. "
            f"Expected {_dims(expected)}, got {_dims(list(tensor.shape))}."
        )
        return message + _BATCH_NOTE if batched else message

    def _missing_message(self, seen: set[str], missing: list[str]) -> str:
        total = len(self._inputs)
        required = len(self._required)
        got = [name for name in self._inputs if name in seen]
        expected = f"{required} inputs" if required == total else f"number of inputs between {required} and {total}"
        return (
            f"expected {expected} but got {len(seen)} inputs for model '{self._model}'. "
            f"Got input(s) {got}, but missing required input(s) {missing}. Please provide all required input(s)."
        )


def _matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if shape == dims:
        return True
    if len(shape) != len(dims):
        return False
    for got, want in zip(shape, dims, strict=True):  # noqa: SIM110 - a plain loop: all() + generator costs more here
        if got != want and want != -1:
            return False
    return True


def _dims(values: list[int]) -> str:
    return "[" + ",".join(str(value) for value in values) + "]"
