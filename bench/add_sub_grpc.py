"""add_sub's gRPC answers for the bare servicers in `bench/`: its config, its metadata and the arithmetic alone."""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

CONFIG = mc.ModelConfig(
    name="add_sub",
    backend="python",
    max_batch_size=64,
    input=[mc.ModelInput(name=f"INPUT{i}", data_type=mc.TYPE_FP32, dims=[16]) for i in (0, 1)],
    output=[mc.ModelOutput(name=f"OUTPUT{i}", data_type=mc.TYPE_FP32, dims=[16]) for i in (0, 1)],
)
_Meta = pb.ModelMetadataResponse.TensorMetadata
METADATA = pb.ModelMetadataResponse(
    name="add_sub",
    versions=["1"],
    platform="python",
    inputs=[_Meta(name=f"INPUT{i}", datatype="FP32", shape=[-1, 16]) for i in (0, 1)],
    outputs=[_Meta(name=f"OUTPUT{i}", datatype="FP32", shape=[-1, 16]) for i in (0, 1)],
)


def bare_infer(request: Any) -> Any:
    """The arithmetic on the raw contents, nothing checked: what `../shared/peers/grpc_bare.py` does."""
    a = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
    b = np.frombuffer(request.raw_input_contents[1], dtype=np.float32)
    shape = list(request.inputs[0].shape)
    outputs = [pb.ModelInferResponse.InferOutputTensor(name=f"OUTPUT{i}", datatype="FP32", shape=shape) for i in (0, 1)]
    return pb.ModelInferResponse(
        model_name="add_sub",
        model_version="1",
        id=request.id,
        outputs=outputs,
        raw_output_contents=[(a + b).tobytes(), (a - b).tobytes()],
    )
