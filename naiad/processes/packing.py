"""Tensors through shared memory, and the requests, results and responses that carry them.

The tensors of a message are written into one block of the writer's arena and described by plain tuples, then read
on the other side as arrays over that block. Numbers are copied once, into the block, and read in place; BYTES
elements are written in Triton's length-prefixed form and unpacked by the reader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from naiad.domain.datatypes import deserialize_bytes, element_count, numpy_dtype, serialize_bytes
from naiad.domain.errors import ServerError
from naiad.domain.tensors import (
    NO_PARAMETERS,
    InferenceRequest,
    InferenceResponse,
    InferenceResult,
    RequestedOutput,
    Tensor,
)
from naiad.processes.arena import Block, ReadArena, WriteArena, aligned
from naiad.processes.frames import pack
from naiad.processes.messages import DROP, SEGMENT, error_of, server_error

# name, datatype, shape, position in the block, bytes
Descriptor = tuple[str, str, tuple[int, ...], int, int]


def write_tensors(arena: WriteArena, tensors: Sequence[Tensor]) -> tuple[Block | None, tuple[Descriptor, ...]]:
    """Copy the tensors into one new block; the block (None when they hold no bytes) and their descriptors."""
    descriptors: list[Descriptor] = []
    sources: list[bytes | tuple[np.ndarray, np.dtype[Any]]] = []  # BYTES serialized, or an array and its dtype
    total = 0
    for tensor in tensors:
        data = tensor.data
        if tensor.datatype == "BYTES":
            serialized = serialize_bytes(data) if data.size else b""
            nbytes = len(serialized)
            sources.append(serialized)
        else:
            dtype = numpy_dtype(tensor.datatype)
            nbytes = data.size * dtype.itemsize  # the datatype's size, not the array's
            sources.append((data, dtype))
        descriptors.append((str(tensor.name), str(tensor.datatype), tuple(map(int, tensor.shape)), total, nbytes))
        total += aligned(nbytes)
    if total == 0:
        return None, tuple(descriptors)
    block = arena.allocate(total)
    try:
        for (_name, _datatype, _shape, position, nbytes), source in zip(descriptors, sources, strict=True):
            if not nbytes:
                continue
            if isinstance(source, bytes):
                arena.write(block, position, source)
                continue
            array, dtype = source
            if array.dtype == dtype and array.flags.c_contiguous:
                arena.write(block, position, array)
            else:
                np.copyto(arena.array(block, position, dtype, array.shape), array, casting="unsafe")
    except BaseException:
        arena.free([block])
        raise
    return block, tuple(descriptors)


def read_tensors(
    arena: ReadArena, block: Block | None, descriptors: Sequence[Descriptor], where: str
) -> tuple[Tensor, ...]:
    """The tensors a message describes, as arrays over its block (read-only); `where` names them in errors."""
    base = arena.view(block) if block is not None else None
    tensors: list[Tensor] = []
    for name, datatype, shape, position, nbytes in descriptors:
        dtype = numpy_dtype(datatype)
        if datatype == "BYTES":
            count = element_count(shape)
            raw = base[position : position + nbytes].data if base is not None and nbytes else memoryview(b"")
            data = deserialize_bytes(raw, count, f"tensor '{name}' {where}").reshape(shape)
        elif base is None or not nbytes:
            data = np.empty(shape, dtype=dtype)
        else:
            data = base[position : position + nbytes].view(dtype).reshape(shape)
        tensors.append(Tensor(name, datatype, shape, data))
    return tuple(tensors)


def _parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): plain(value, key) for key, value in parameters.items()} if parameters else {}


def plain(value: Any, what: object = "value") -> Any:
    """`value` as the plain type it stands for (a numpy scalar, a `str` or `int` subclass, such as an IntEnum,
    become str, int, float or bool), which the other side can unpickle; raises TypeError for anything else."""
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (str, bytes)):
        return str(value) if isinstance(value, str) else bytes(value)
    if isinstance(value, (list, tuple)):
        return [plain(item, what) for item in value]
    if isinstance(value, Mapping):
        return {str(key): plain(item, key) for key, item in value.items()}
    raise TypeError(f"parameter '{what}' is a {type(value).__name__}, which is not a bool, int, float or str")


def _received(parameters: dict[str, Any]) -> Mapping[str, Any]:
    return parameters if parameters else NO_PARAMETERS


def encode_requests(arena: WriteArena, requests: Sequence[InferenceRequest]) -> tuple[Block | None, tuple[Any, ...]]:
    """A batch of requests: one block for every input, and per request its id, parameters, requested outputs (names
    and parameters) and input descriptors."""
    fields = [
        (
            plain(request.id, "id"),
            _parameters(request.parameters),
            None
            if request.outputs is None
            else tuple((str(output.name), _parameters(output.parameters)) for output in request.outputs),
        )
        for request in requests
    ]
    block, descriptors = write_tensors(arena, [tensor for request in requests for tensor in request.inputs])
    encoded: list[Any] = []
    start = 0
    for request, (request_id, parameters, outputs) in zip(requests, fields, strict=True):
        end = start + len(request.inputs)
        encoded.append((request_id, parameters, outputs, descriptors[start:end]))
        start = end
    return block, tuple(encoded)


def decode_requests(
    arena: ReadArena, block: Block | None, encoded: Sequence[Any], where: str
) -> list[InferenceRequest]:
    """The requests of `encode_requests`, their inputs read in place."""
    descriptors = [descriptor for entry in encoded for descriptor in entry[3]]
    tensors = read_tensors(arena, block, descriptors, where)
    requests: list[InferenceRequest] = []
    start = 0
    for request_id, parameters, outputs, inputs in encoded:
        end = start + len(inputs)
        requested = (
            None if outputs is None else tuple(RequestedOutput(name, _received(values)) for name, values in outputs)
        )
        requests.append(InferenceRequest(tensors[start:end], requested, request_id, _received(parameters)))
        start = end
    return requests


def encode_results(
    arena: WriteArena, results: Sequence[InferenceResult | ServerError]
) -> tuple[Block | None, tuple[Any, ...]]:
    """One result or error per request of a batch: (True, parameters, descriptors) or (False, error)."""
    outputs = [tensor for result in results if not isinstance(result, ServerError) for tensor in result.outputs]
    parameters = [None if isinstance(result, ServerError) else _parameters(result.parameters) for result in results]
    block, descriptors = write_tensors(arena, outputs)  # last: nothing after it may fail and leave the block taken
    encoded: list[Any] = []
    start = 0
    for result, values in zip(results, parameters, strict=True):
        if isinstance(result, ServerError):
            encoded.append((False, error_of(result)))
            continue
        end = start + len(result.outputs)
        encoded.append((True, values, descriptors[start:end]))
        start = end
    return block, tuple(encoded)


def decode_results(
    arena: ReadArena, block: Block | None, encoded: Sequence[Any], where: str
) -> list[InferenceResult | ServerError]:
    """The results of `encode_results`, their outputs read in place."""
    descriptors = [descriptor for entry in encoded if entry[0] for descriptor in entry[2]]
    tensors = read_tensors(arena, block, descriptors, where)
    results: list[InferenceResult | ServerError] = []
    start = 0
    for entry in encoded:
        if not entry[0]:
            results.append(server_error(entry[1]))
            continue
        end = start + len(entry[2])
        results.append(InferenceResult(tensors[start:end], _received(entry[1])))
        start = end
    return results


def encode_response(arena: WriteArena, response: InferenceResponse) -> tuple[Block | None, tuple[Any, ...]]:
    """A BLS call's response: its model, version, id, parameters and output descriptors."""
    fields = (str(response.model_name), str(response.model_version), plain(response.id, "id"))
    parameters = _parameters(response.parameters)
    block, descriptors = write_tensors(arena, response.outputs)
    return block, (*fields, parameters, descriptors)


def decode_response(arena: ReadArena, block: Block | None, encoded: Sequence[Any], where: str) -> InferenceResponse:
    """The response of `encode_response`."""
    model_name, model_version, response_id, parameters, descriptors = encoded
    outputs = read_tensors(arena, block, descriptors, where)
    return InferenceResponse(model_name, model_version, response_id, outputs, _received(parameters))


def frames_for(message: tuple[Any, ...], writer: WriteArena, reader: ReadArena) -> list[tuple[bytes, tuple[int, ...]]]:
    """The frames that send `message` with the blocks `reader` gave back: first any segment `writer` made (each
    with its descriptor) or released, then the message itself."""
    frames: list[tuple[bytes, tuple[int, ...]]] = [
        (pack((SEGMENT, (), new.segment, new.size)), (new.fd,)) for new in writer.take_created()
    ]
    dropped = writer.take_dropped()
    if dropped:
        frames.append((pack((DROP, (), tuple(dropped))), ()))
    frames.append((pack((message[0], reader.take_freed(), *message[2:])), ()))
    return frames
