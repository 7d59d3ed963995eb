"""`ModelInferRequest` ⇄ `InferenceRequest` and `InferenceResponse` → `ModelInferResponse`: raw contents read
with `numpy.frombuffer`, typed contents, BYTES in Triton's length-prefixed form, and `InferParameter`s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from naiad.domain import datatypes
from naiad.domain.errors import ErrorCode, ServerError, invalid
from naiad.domain.tensors import NO_PARAMETERS, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

_OutputTensor = pb.ModelInferResponse.InferOutputTensor

# Which typed `contents` field holds each datatype (FP16 and BF16 travel only as raw contents, as in Triton).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_SHARED_MEMORY = "shared_memory_region"


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """The protocol-neutral request; raises `ServerError` naming the model and tensor at fault."""
    model = message.model_name
    raw = message.raw_input_contents
    inputs = message.inputs
    if raw and len(raw) != len(inputs):
        raise invalid(f"expected {len(inputs)} raw input contents for model '{model}', one per input, got {len(raw)}")
    tensors: list[Tensor] = []
    for index, item in enumerate(inputs):
        name = item.name
        datatype = item.datatype
        if datatype not in datatypes.DATATYPES:
            raise invalid(f"invalid datatype '{datatype}' of input '{name}' for model '{model}'")
        shape = list(item.shape)
        if shape and min(shape) < 0:
            raise invalid(f"input '{name}' for model '{model}' has a negative dimension in its shape {shape}")
        if item.parameters:
            parameters: Mapping[str, Any] = decode_parameters(item.parameters)
            if _SHARED_MEMORY in parameters:
                raise ServerError(ErrorCode.UNSUPPORTED, "shared memory is not supported by naiad")
        else:
            parameters = NO_PARAMETERS
        has_contents = item.HasField("contents")
        if raw:
            if has_contents:
                raise invalid(
                    f"contents field must not be specified when using raw_input_contents for '{name}' for model "
                    f"'{model}'"
                )
            data = datatypes.from_raw(datatype, shape, raw[index], f"input '{name}' for model '{model}'")
        elif has_contents:
            data = _from_contents(item.contents, datatype, shape, name, model)
        else:
            raise invalid(f"input '{name}' for model '{model}' has no data: set raw_input_contents or contents")
        tensors.append(Tensor(name, datatype, tuple(shape), data, parameters))
    outputs: tuple[RequestedOutput, ...] | None = None
    if message.outputs:
        requested: list[RequestedOutput] = []
        for output in message.outputs:
            if output.parameters:
                output_parameters = decode_parameters(output.parameters)
                if _SHARED_MEMORY in output_parameters:
                    raise ServerError(ErrorCode.UNSUPPORTED, "shared memory is not supported by naiad")
                requested.append(RequestedOutput(output.name, output_parameters))
            else:
                requested.append(RequestedOutput(output.name))
        outputs = tuple(requested)
    parameters = decode_parameters(message.parameters) if message.parameters else NO_PARAMETERS
    return InferenceRequest(tuple(tensors), outputs, message.id, parameters)


def _from_contents(contents: pb.InferTensorContents, datatype: str, shape: list[int], name: str, model: str) -> Any:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid(
            f"input '{name}' for model '{model}' has datatype {datatype}, which travels only as raw_input_contents"
        )
    used = [descriptor.name for descriptor, _ in contents.ListFields()]
    if used and used != [field]:
        raise invalid(
            f"input '{name}' for model '{model}' has datatype {datatype}, so its values belong in '{field}', "
            f"not in '{', '.join(used)}'"
        )
    values = getattr(contents, field)
    count = datatypes.element_count(shape)
    if len(values) != count:
        raise invalid(
            f"unexpected number of elements in '{field}' of input '{name}' for model '{model}': shape {shape} "
            f"needs {count}, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    target = datatypes.numpy_dtype(datatype)
    array = np.array(values, dtype=np.int64 if target.kind in "iu" and target.itemsize < 8 else target)
    if array.dtype != target:
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise invalid(f"a value of input '{name}' for model '{model}' is out of range for {datatype}")
        array = array.astype(target)
    return array.reshape(shape)


def decode_parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """`InferParameter`s as plain Python values."""
    decoded: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        decoded[key] = getattr(parameter, choice) if choice is not None else None
    return decoded


def encode_parameters(parameters: Mapping[str, Any], target: Any) -> None:
    """Write plain values into a protobuf map of `InferParameter`s."""
    for key, value in parameters.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            if value > 2**63 - 1:
                parameter.uint64_param = value
            else:
                parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = str(value)


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    """Every output as raw contents, as Triton answers."""
    outputs = response.outputs
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
        outputs=[_OutputTensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs],
        raw_output_contents=[datatypes.to_raw(t.datatype, t.data) for t in outputs],
    )
    if response.parameters:
        encode_parameters(response.parameters, message.parameters)
    return message
