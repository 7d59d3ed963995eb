"""KServe V2 JSON and Triton's binary tensor extension ⇄ `InferenceRequest` / `InferenceResponse`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from naiad.domain import datatypes
from naiad.domain.errors import invalid
from naiad.domain.model_config import ModelConfig
from naiad.domain.tensors import NO_PARAMETERS, InferenceRequest, InferenceResponse, RequestedOutput, Tensor

_FLOAT_KINDS = frozenset("fiu")
_INT_KINDS = frozenset("iu")
_JSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class DecodedRequest:
    """A decoded request and what the response encoder must know: which outputs go back as binary."""

    __slots__ = ("binary_all", "binary_outputs", "request")

    def __init__(self, request: InferenceRequest, binary_all: bool, binary_outputs: Mapping[str, bool]) -> None:
        self.request = request
        self.binary_all = binary_all
        self.binary_outputs = binary_outputs


def decode_request(body: bytes, header_length: int | None, model: str) -> DecodedRequest:
    """Decode a JSON request, or a JSON header followed by binary tensors when `header_length` is given."""
    header: bytes | memoryview
    binary: bytes | memoryview
    if header_length is None:
        header, binary = body, b""
    else:
        if header_length > len(body):
            raise invalid(f"inference header size should be in range (0, {len(body)}), got: {header_length}")
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    document = parse_object(header)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list):
        raise invalid("Unable to parse 'inputs': the request must have an 'inputs' array")
    offset = 0
    inputs: list[Tensor] = []
    for item in raw_inputs:
        tensor, offset = _decode_input(item, binary, offset, model)
        inputs.append(tensor)
    if offset != len(binary):
        raise invalid(f"unexpected additional input data for model '{model}'")
    parameters = _parameters(document.get("parameters"), "request")
    binary_all = parameters.get("binary_data_output") is True
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_outputs: dict[str, bool] = {}
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise invalid("Unable to parse 'outputs': expected an array")
        requested: list[RequestedOutput] = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise invalid("Unable to parse 'outputs': each requested output needs a 'name'")
            output_parameters = _parameters(item.get("parameters"), f"output '{item['name']}'")
            flag = output_parameters.get("binary_data")
            if isinstance(flag, bool):
                binary_outputs[item["name"]] = flag
            requested.append(RequestedOutput(item["name"], output_parameters))
        outputs = tuple(requested)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("Unable to parse 'id': expected a string")
    request = InferenceRequest(tuple(inputs), outputs, request_id, parameters)
    return DecodedRequest(request, binary_all, binary_outputs)


def parse_object(text: bytes | memoryview) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(document, dict):
        raise invalid("failed to parse the request JSON buffer: the request must be a JSON object")
    return document


def decode_raw_binary(body: bytes, config: ModelConfig) -> DecodedRequest:
    """A request whose body is the raw bytes of the model's only input (`Inference-Header-Content-Length: 0`)."""
    model = config.name
    if len(config.inputs) != 1:
        raise invalid(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(config.inputs)} inputs "
            f"in '{model}' model configuration"
        )
    spec = config.inputs[0]
    dims = list(spec.dims)
    if spec.datatype == "BYTES":
        if dims != [1]:
            raise invalid(f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]")
        data = np.array([bytes(body)], dtype=np.object_)
    else:
        if dims.count(-1) > 1:
            raise invalid(
                f"The shape of the raw input '{spec.name}' can not be deduced because there are more than one "
                "variable-sized dimension"
            )
        size = datatypes.element_size(spec.datatype)
        known = datatypes.element_count(d for d in dims if d != -1) * size
        if -1 in dims:
            if known == 0 or len(body) % known:
                raise invalid(
                    f"The shape of the raw input '{spec.name}' can not be deduced: {len(body)} bytes is not a "
                    f"multiple of {known}"
                )
            dims[dims.index(-1)] = len(body) // known
        data = datatypes.from_raw(spec.datatype, dims, body, f"input '{spec.name}' for model '{model}'")
    shape = [1, *dims] if config.max_batch_size > 0 else dims
    tensor = Tensor(spec.name, spec.datatype, tuple(shape), data.reshape(shape))
    return DecodedRequest(InferenceRequest((tensor,)), True, {})


_FLOATS = frozenset({"FP32", "FP64", "FP16"})


def _decode_input(item: Any, binary: bytes | memoryview, offset: int, model: str) -> tuple[Tensor, int]:
    if type(item) is not dict:
        raise invalid("Unable to parse 'inputs': each input must be a JSON object")
    name = item.get("name")
    if type(name) is not str:
        raise invalid("Unable to parse 'name': each input needs a string 'name'")
    datatype = item.get("datatype")
    if type(datatype) is not str:
        raise invalid(f"Unable to parse 'datatype' of input '{name}'")
    if datatype not in datatypes.DATATYPES:
        raise invalid(f"invalid datatype '{datatype}' of input '{name}' for model '{model}'")
    shape = item.get("shape")
    count = 1
    if type(shape) is list:
        for dim in shape:
            if type(dim) is not int or dim < 0:
                shape = None
                break
            count *= dim
    if type(shape) is not list:
        raise invalid(
            f"Unable to parse 'shape' of input '{name}': expected an array of non-negative integers, got "
            f"{orjson.dumps(item.get('shape')).decode()}"
        )
    parameters = item.get("parameters")
    if parameters is None:
        parameters = NO_PARAMETERS
        size = None
    else:
        parameters = _parameters(parameters, f"input '{name}'")
        size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise invalid(f"'binary_data_size' of input '{name}' must be a non-negative integer")
        if "data" in item:
            raise invalid(f"input '{name}' has both 'data' and 'binary_data_size'")
        if offset + size > len(binary):
            raise invalid(
                f"unexpected size for input '{name}', expecting {offset + size - len(binary)} additional bytes "
                f"for model '{model}'"
            )
        what = f"input '{name}' for model '{model}'"
        data = datatypes.from_raw(datatype, shape, binary[offset : offset + size], what)
        return Tensor(name, datatype, tuple(shape), data, parameters), offset + size
    values = item.get("data")
    if values is None:
        raise invalid(
            f"input '{name}' has no 'data'; binary inputs need the 'binary_data_size' parameter and the "
            "Inference-Header-Content-Length header"
        )
    data = _from_json(values, datatype, name, model)
    if data.size != count:
        raise invalid(
            f"unexpected number of elements in 'data' of input '{name}' for model '{model}': shape {shape} needs "
            f"{count}, got {data.size}"
        )
    return Tensor(name, datatype, tuple(shape), data.reshape(shape), parameters), offset


def _from_json(values: Any, datatype: str, name: str, model: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_from_json(values, f"input '{name}' for model '{model}'")
    target = datatypes.numpy_dtype(datatype)
    try:
        if datatype in _FLOATS:  # the common case, kept short
            return np.array(values, dtype=target)
        array = np.array(values)
        if array.dtype.kind in "fO" and target.kind in "iu" and _all_ints(values):
            array = np.array(values, dtype=target)  # integers beyond int64, which numpy widened to float
        if array.size and not _kind_fits(array.dtype.kind, datatype):
            raise invalid(f"Unable to parse 'data' of input '{name}' for model '{model}': expected {datatype} values")
        if datatype == "BF16":
            return datatypes.bf16_from_floats(array.astype(np.float32))
        if array.dtype != target:
            if array.dtype.kind in _INT_KINDS and array.size:
                _check_range(array, target, f"input '{name}' for model '{model}'")
            array = array.astype(target)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"Unable to parse 'data' of input '{name}' for model '{model}': {_first_line(exc)}") from None
    return array


def _kind_fits(kind: str, datatype: str) -> bool:
    if datatype == "BOOL":
        return kind == "b"
    if datatype == "BF16":
        return kind in _FLOAT_KINDS
    return kind in _INT_KINDS


def _all_ints(values: Any) -> bool:
    return all(type(v) is int for v in np.array(values, dtype=np.object_).reshape(-1))


def _check_range(array: np.ndarray, target: np.dtype[Any], what: str) -> None:
    info = np.iinfo(target)
    if array.min() < info.min or array.max() > info.max:
        raise invalid(f"Unable to parse 'data' of {what}: a value is out of range for {target.name}")


def _bytes_from_json(values: Any, what: str) -> np.ndarray:
    flat: list[bytes] = []

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, str):
            flat.append(value.encode("utf-8"))
        elif isinstance(value, list) and depth < 64:
            for item in value:
                walk(item, depth + 1)
        else:
            raise invalid(f"Unable to parse 'data' of {what}: expected strings for BYTES")

    walk(values, 0)
    array = np.empty(len(flat), dtype=np.object_)
    array[:] = flat
    return array


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return NO_PARAMETERS
    if not isinstance(value, dict):
        raise invalid(f"Unable to parse 'parameters' of {where}: expected a JSON object")
    return value


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def encode_response(response: InferenceResponse, decoded: DecodedRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    binary_all = decoded.binary_all
    binary_outputs = decoded.binary_outputs
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_outputs.get(tensor.name, binary_all):
            raw = datatypes.to_raw(tensor.datatype, tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(tensor, response.model_name)
        outputs.append(entry)
    document: dict[str, Any] = {"id": response.id} if response.id else {}  # first, as Triton writes it
    document["model_name"] = response.model_name
    document["model_version"] = response.model_version
    if response.parameters:
        document["parameters"] = dict(response.parameters)
    document["outputs"] = outputs
    header = orjson.dumps(document, option=_JSON_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_json(tensor: Tensor, model: str) -> Any:
    data = tensor.data
    if tensor.datatype == "BYTES":
        try:
            return [datatypes.as_bytes_element(v).decode("utf-8") for v in data.reshape(-1)]
        except UnicodeDecodeError:
            raise invalid(
                f"output '{tensor.name}' of model '{model}' holds bytes that are not UTF-8 text; request it "
                "with the 'binary_data' parameter"
            ) from None
    if tensor.datatype == "BF16":
        data = datatypes.bf16_to_floats(data)
    flat = data.reshape(-1)
    if not flat.flags.c_contiguous or not flat.dtype.isnative:
        flat = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("="))
    return flat


def dumps(document: Any) -> bytes:
    """JSON for the non-inference endpoints."""
    return orjson.dumps(document, option=_JSON_NUMPY)
