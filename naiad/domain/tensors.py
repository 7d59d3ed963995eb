"""Requests, responses and tensors as value objects that every room passes around.

They are immutable NamedTuples rather than frozen dataclasses: several are built for every request, and a
NamedTuple is built in about a third of the time (0.18 against 0.48 µs)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

Parameters = Mapping[str, Any]


class _NoParameters(Mapping[str, Any]):
    """The shared, immutable empty parameter map."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0


NO_PARAMETERS: Parameters = _NoParameters()


class Tensor(NamedTuple):
    """A named tensor: its KServe datatype, its shape and its elements.

    `data` has the numpy dtype of `datatype` (object arrays of bytes for BYTES, uint16 bits for BF16)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = NO_PARAMETERS


class RequestedOutput(NamedTuple):
    """An output the client asked for, with its parameters (`binary_data`, `classification`)."""

    name: str
    parameters: Parameters = NO_PARAMETERS


class InferenceRequest(NamedTuple):
    """One inference request; `outputs` is None when the client wants every output."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None = None
    id: str = ""
    parameters: Parameters = NO_PARAMETERS


class InferenceResult(NamedTuple):
    """What a backend answers for one request: output tensors and response parameters."""

    outputs: tuple[Tensor, ...]
    parameters: Parameters = NO_PARAMETERS


class InferenceResponse(NamedTuple):
    """The answer to one request, as a front end encodes it."""

    model_name: str
    model_version: str
    id: str
    outputs: tuple[Tensor, ...]
    parameters: Parameters = NO_PARAMETERS
