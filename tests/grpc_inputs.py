"""`tritonclient.grpc` inputs built the way a user builds them, for the gRPC suites."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient


def one_input(name: str, value: np.ndarray, datatype: str) -> list[grpcclient.InferInput]:
    """A request's single input `name` holding `value`."""
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return [tensor]


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    """add_sub's two FP32 inputs."""
    return [*one_input("INPUT0", a, "FP32"), *one_input("INPUT1", b, "FP32")]
