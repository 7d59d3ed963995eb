"""Requests, results and responses through a real shared-memory arena pair, and the frames that send them."""

import gc
import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from naiad.domain.datatypes import DATATYPES, bf16_from_floats, numpy_dtype
from naiad.domain.errors import ErrorCode, ServerError, internal, invalid, unavailable
from naiad.domain.tensors import (
    NO_PARAMETERS,
    InferenceRequest,
    InferenceResponse,
    InferenceResult,
    RequestedOutput,
    Tensor,
)
from naiad.processes.arena import ReadArena, WriteArena
from naiad.processes.frames import pack, plain_loads
from naiad.processes.messages import DROP, EXECUTE, RESULTS, SEGMENT
from naiad.processes.packing import (
    decode_requests,
    decode_response,
    decode_results,
    encode_requests,
    encode_response,
    encode_results,
    frames_for,
    read_tensors,
    write_tensors,
)

MIB = 1 << 20
NUMERIC = sorted(DATATYPES - {"BYTES"})


class Pair:
    """A writer's arena and the reader that maps its segments, as the two processes hold them."""

    def __init__(self, first_size: int = 64 * 1024, growth: int = 64 * 1024) -> None:
        self.writer = WriteArena("packing", first_size, growth)
        self.reader = ReadArena()

    def share(self) -> None:
        for new in self.writer.take_created():
            self.reader.add(new.segment, new.size, new.fd)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    shared = Pair()
    yield shared
    gc.collect()
    shared.close()


def across(value: Any) -> Any:
    """`value` as the other process unpickles it: plain values only."""
    return plain_loads(pack(value)[4:])


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BOOL":
        flags: np.ndarray = np.arange(count) % 3 == 0
        return flags.reshape(shape)
    if datatype == "BF16":
        return bf16_from_floats(np.linspace(-2.5, 2.5, count, dtype=np.float32)).reshape(shape)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        floats: np.ndarray = np.arange(count, dtype=dtype) * dtype.type(1.5) - dtype.type(3)
        return floats.reshape(shape)
    info = np.iinfo(dtype)
    values = np.arange(count).astype(dtype)
    values[0], values[-1] = info.min, info.max
    return values.reshape(shape)


def bytes_tensor(name: str, values: list[bytes], shape: tuple[int, ...]) -> Tensor:
    return Tensor(name, "BYTES", shape, np.array(values, dtype=np.object_).reshape(shape))


def round_trip(pair: Pair, requests: list[InferenceRequest]) -> list[InferenceRequest]:
    block, encoded = encode_requests(pair.writer, requests)
    pair.share()
    return decode_requests(pair.reader, across(block), across(encoded), "for model 'm'")


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips(pair: Pair, datatype: str) -> None:
    data = sample(datatype, (3, 5))
    (request,) = round_trip(pair, [InferenceRequest((Tensor("X", datatype, (3, 5), data),))])
    (tensor,) = request.inputs
    assert tensor.name == "X"
    assert tensor.datatype == datatype
    assert tensor.shape == (3, 5)
    assert tensor.data.dtype == numpy_dtype(datatype)
    assert tensor.data.shape == (3, 5)
    assert np.array_equal(tensor.data, data)
    assert tensor.data.tobytes() == data.tobytes()


def test_the_datatypes_cover_what_naiad_supports() -> None:
    assert NUMERIC == [
        "BF16",
        "BOOL",
        "FP16",
        "FP32",
        "FP64",
        "INT16",
        "INT32",
        "INT64",
        "INT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "UINT8",
    ]


def test_inputs_are_read_in_place_read_only_and_aligned(pair: Pair) -> None:
    tensors = (
        Tensor("A", "UINT8", (3,), np.array([1, 2, 3], dtype=np.uint8)),
        Tensor("B", "FP64", (2,), np.array([0.5, -0.25])),
        Tensor("C", "INT32", (), np.array(7, dtype=np.int32)),
    )
    (request,) = round_trip(pair, [InferenceRequest(tensors)])
    a, b, c = request.inputs
    assert a.data.tolist() == [1, 2, 3]
    assert b.data.tolist() == [0.5, -0.25]
    assert c.shape == ()
    assert c.data.shape == ()
    assert int(c.data) == 7
    for tensor in request.inputs:
        assert not tensor.data.flags.writeable
        assert not tensor.data.flags.owndata
        assert tensor.data.ctypes.data % 64 == 0
    with pytest.raises(ValueError):
        b.data[0] = 1.0


def test_bytes_tensors_round_trip(pair: Pair) -> None:
    values = [b"", b"hello", "\u00e9t\u00e9".encode(), b"\xff\xfe\x00\x80", b"", b"x" * 300]
    tensors = (
        bytes_tensor("S", values, (2, 3)),
        bytes_tensor("EMPTY", [b"", b""], (2,)),
        Tensor("NONE", "BYTES", (2, 0), np.empty((2, 0), dtype=np.object_)),
        Tensor("TEXT", "BYTES", (2,), np.array(["ab", "\u00fc"], dtype=np.object_)),
    )
    (request,) = round_trip(pair, [InferenceRequest(tensors)])
    s, empty, none, text = request.inputs
    assert s.shape == (2, 3)
    assert s.data.dtype == np.object_
    assert s.data.shape == (2, 3)
    assert s.data.reshape(-1).tolist() == values
    assert empty.data.tolist() == [b"", b""]
    assert none.shape == (2, 0)
    assert none.data.shape == (2, 0)
    assert none.data.size == 0
    assert text.data.tolist() == [b"ab", "\u00fc".encode()]


def test_zero_size_tensors_need_no_block(pair: Pair) -> None:
    tensors = (
        Tensor("F", "FP32", (0, 4), np.empty((0, 4), dtype=np.float32)),
        Tensor("S", "BYTES", (0,), np.empty((0,), dtype=np.object_)),
    )
    block, encoded = encode_requests(pair.writer, [InferenceRequest(tensors)])
    assert block is None
    assert pair.writer.size == 0
    (request,) = decode_requests(pair.reader, block, across(encoded), "for model 'm'")
    f, s = request.inputs
    assert f.data.shape == (0, 4)
    assert f.data.dtype == np.float32
    assert s.data.shape == (0,)


def test_zero_size_tensors_beside_others(pair: Pair) -> None:
    tensors = (
        Tensor("Z", "INT64", (0,), np.empty((0,), dtype=np.int64)),
        Tensor("X", "INT64", (2,), np.array([5, 6], dtype=np.int64)),
        Tensor("S", "BYTES", (0, 3), np.empty((0, 3), dtype=np.object_)),
    )
    (request,) = round_trip(pair, [InferenceRequest(tensors)])
    z, x, s = request.inputs
    assert z.data.shape == (0,)
    assert x.data.tolist() == [5, 6]
    assert s.data.shape == (0, 3)


@pytest.mark.parametrize(
    "data",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4).T,
        np.arange(20, dtype=np.int32)[::3],
        np.arange(24, dtype=np.int32).reshape(4, 6)[1:3, ::2],
        np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        np.arange(6, dtype=">i4"),
    ],
    ids=["transposed", "strided", "sliced", "fortran", "big-endian"],
)
def test_non_contiguous_input_arrives_contiguous(pair: Pair, data: np.ndarray) -> None:
    shape = tuple(int(dim) for dim in data.shape)
    (request,) = round_trip(pair, [InferenceRequest((Tensor("X", "INT32", shape, data),))])
    (tensor,) = request.inputs
    assert tensor.data.flags.c_contiguous
    assert tensor.data.dtype == np.dtype(np.int32)
    assert tensor.data.shape == shape
    assert tensor.data.tolist() == data.tolist()


def test_a_tensor_of_another_dtype_of_the_same_size_is_cast_to_its_datatype(pair: Pair) -> None:
    data = np.array([1, -2, 300], dtype=np.int32)
    (request,) = round_trip(pair, [InferenceRequest((Tensor("X", "FP32", (3,), data),))])
    (tensor,) = request.inputs
    assert tensor.data.dtype == np.float32
    assert tensor.data.tolist() == [1.0, -2.0, 300.0]


@pytest.mark.parametrize("source", [np.float64, np.float16])
def test_a_tensor_of_another_element_size_is_cast_to_its_datatype(pair: Pair, source: type) -> None:
    data: np.ndarray = np.array([1.5, -2.0, 3.25], dtype=source)
    (request,) = round_trip(pair, [InferenceRequest((Tensor("X", "FP32", (3,), data),))])
    (tensor,) = request.inputs
    assert tensor.data.dtype == np.float32
    assert tensor.data.tolist() == [1.5, -2.0, 3.25]


def test_casting_a_narrower_tensor_stays_inside_its_block(pair: Pair) -> None:
    hole = pair.writer.allocate(64)
    neighbour = pair.writer.allocate(64)
    pair.writer.write(neighbour, 0, b"\x01" * 64)
    pair.writer.free([hole])
    block, _descriptors = write_tensors(pair.writer, [Tensor("A", "FP64", (16,), np.ones(16, dtype=np.float32))])
    assert block is not None
    assert block[2] >= 16 * 8
    assert block[1] + block[2] <= neighbour[1] or block[1] >= neighbour[1] + neighbour[2]
    pair.share()
    assert pair.reader.view(neighbour).tobytes() == b"\x01" * 64


def test_request_fields_are_preserved(pair: Pair) -> None:
    request = InferenceRequest(
        (Tensor("X", "INT8", (1,), np.array([4], dtype=np.int8)),),
        (RequestedOutput("OUT1"), RequestedOutput("OUT0", {"binary_data": True})),
        "request-17",
        {"priority": 3, "sequence_start": True, "tag": "a"},
    )
    (back,) = round_trip(pair, [request])
    assert back.id == "request-17"
    assert dict(back.parameters) == {"priority": 3, "sequence_start": True, "tag": "a"}
    # the outputs' parameters too: a front-end process passes classification and binary_data on
    assert back.outputs == (RequestedOutput("OUT1"), RequestedOutput("OUT0", {"binary_data": True}))
    assert back.outputs[0].parameters is NO_PARAMETERS


def test_defaults_are_preserved(pair: Pair) -> None:
    (back,) = round_trip(pair, [InferenceRequest((Tensor("X", "INT8", (1,), np.array([4], dtype=np.int8)),))])
    assert back.id == ""
    assert back.outputs is None
    assert back.parameters is NO_PARAMETERS


def test_requests_of_a_batch_keep_their_own_inputs(pair: Pair) -> None:
    requests = [
        InferenceRequest(
            (
                Tensor("X", "FP32", (2,), np.array([i, i + 0.5], dtype=np.float32)),
                bytes_tensor("S", [f"r{i}".encode()], (1,)),
            ),
            id=f"r{i}",
        )
        for i in range(3)
    ]
    requests.insert(1, InferenceRequest((), id="no-inputs"))
    back = round_trip(pair, requests)
    assert [request.id for request in back] == ["r0", "no-inputs", "r1", "r2"]
    assert back[1].inputs == ()
    for i, request in zip((0, 2, 3), (0, 1, 2), strict=True):
        x, s = back[i].inputs
        assert (x.name, s.name) == ("X", "S")
        assert x.data.tolist() == [request, request + 0.5]
        assert s.data.tolist() == [f"r{request}".encode()]


def test_a_batch_is_one_block_given_back_when_every_input_is_gone(pair: Pair) -> None:
    requests = [InferenceRequest((Tensor("X", "INT16", (4,), np.arange(4, dtype=np.int16)),)) for _ in range(3)]
    block, encoded = encode_requests(pair.writer, requests)
    assert block is not None
    pair.share()
    back = decode_requests(pair.reader, block, encoded, "for model 'm'")
    kept = back[2].inputs[0].data
    del back
    gc.collect()
    assert pair.reader.take_freed() == ()
    assert kept.tolist() == [0, 1, 2, 3]
    del kept
    gc.collect()
    assert pair.reader.take_freed() == (block,)


def test_bytes_only_inputs_give_the_block_back_at_once(pair: Pair) -> None:
    block, encoded = encode_requests(pair.writer, [InferenceRequest((bytes_tensor("S", [b"ab"], (1,)),))])
    pair.share()
    (request,) = decode_requests(pair.reader, block, encoded, "for model 'm'")
    gc.collect()
    assert pair.reader.take_freed() == (block,)
    assert request.inputs[0].data.tolist() == [b"ab"]


def test_results_and_errors_round_trip(pair: Pair) -> None:
    results: list[InferenceResult | ServerError] = [
        InferenceResult((Tensor("OUT", "FP16", (2,), np.array([1.0, -0.5], dtype=np.float16)),), {"n": 1}),
        internal("the model failed: boom"),
        InferenceResult(
            (
                bytes_tensor("S", [b"a", b"\xff"], (2,)),
                Tensor("I", "UINT64", (1,), np.array([2**64 - 1], dtype=np.uint64)),
            )
        ),
        invalid("bad input 'X'"),
        unavailable("queue full"),
    ]
    block, encoded = encode_results(pair.writer, results)
    pair.share()
    back = decode_results(pair.reader, across(block), across(encoded), "from model 'm'")
    assert len(back) == 5
    first, error, third, bad, full = back
    assert isinstance(first, InferenceResult)
    assert first.outputs[0].name == "OUT"
    assert first.outputs[0].data.tolist() == [1.0, -0.5]
    assert dict(first.parameters) == {"n": 1}
    assert isinstance(error, ServerError)
    assert error.code is ErrorCode.INTERNAL
    assert error.message == "the model failed: boom"
    assert isinstance(third, InferenceResult)
    assert [tensor.name for tensor in third.outputs] == ["S", "I"]
    assert third.outputs[0].data.tolist() == [b"a", b"\xff"]
    assert third.outputs[1].data.tolist() == [2**64 - 1]
    assert third.parameters is NO_PARAMETERS
    assert isinstance(bad, ServerError)
    assert (bad.code, bad.message) == (ErrorCode.INVALID_ARG, "bad input 'X'")
    assert isinstance(full, ServerError)
    assert (full.code, full.message) == (ErrorCode.UNAVAILABLE, "queue full")


def test_only_errors_need_no_block(pair: Pair) -> None:
    block, encoded = encode_results(pair.writer, [internal("a"), invalid("b")])
    assert block is None
    assert encoded == ((False, ("INTERNAL", "a")), (False, ("INVALID_ARG", "b")))
    back = decode_results(pair.reader, block, across(encoded), "from model 'm'")
    assert [(error.code, str(error)) for error in back if isinstance(error, ServerError)] == [
        (ErrorCode.INTERNAL, "a"),
        (ErrorCode.INVALID_ARG, "b"),
    ]


def test_a_response_round_trips(pair: Pair) -> None:
    response = InferenceResponse(
        "model",
        "3",
        "call-1",
        (
            Tensor("OUT0", "INT32", (2, 2), np.array([[1, 2], [3, 4]], dtype=np.int32)),
            bytes_tensor("OUT1", [b"z"], (1, 1)),
        ),
        {"triton_final_response": True},
    )
    block, encoded = encode_response(pair.writer, response)
    pair.share()
    back = decode_response(pair.reader, across(block), across(encoded), "from model 'model'")
    assert (back.model_name, back.model_version, back.id) == ("model", "3", "call-1")
    assert dict(back.parameters) == {"triton_final_response": True}
    out0, out1 = back.outputs
    assert (out0.name, out0.datatype, out0.shape) == ("OUT0", "INT32", (2, 2))
    assert out0.data.tolist() == [[1, 2], [3, 4]]
    assert (out1.name, out1.datatype, out1.shape) == ("OUT1", "BYTES", (1, 1))
    assert out1.data.tolist() == [[b"z"]]


def test_an_empty_response_round_trips(pair: Pair) -> None:
    block, encoded = encode_response(pair.writer, InferenceResponse("m", "1", "", ()))
    assert block is None
    back = decode_response(pair.reader, block, across(encoded), "from model 'm'")
    assert back == InferenceResponse("m", "1", "", (), NO_PARAMETERS)


def test_descriptors_place_each_tensor_at_an_aligned_position(pair: Pair) -> None:
    tensors = [
        Tensor("A", "UINT8", (3,), np.array([1, 2, 3], dtype=np.uint8)),
        Tensor("B", "FP32", (20,), np.zeros(20, dtype=np.float32)),
        bytes_tensor("C", [b"abc"], (1,)),
        Tensor("D", "INT64", (1,), np.array([9], dtype=np.int64)),
    ]
    block, descriptors = write_tensors(pair.writer, tensors)
    assert descriptors == (
        ("A", "UINT8", (3,), 0, 3),
        ("B", "FP32", (20,), 64, 80),
        ("C", "BYTES", (1,), 192, 7),
        ("D", "INT64", (1,), 256, 8),
    )
    assert block == (0, 0, 320)
    pair.share()
    back = read_tensors(pair.reader, block, descriptors, "in test")
    assert [tensor.data.tolist() for tensor in back] == [[1, 2, 3], [0.0] * 20, [b"abc"], [9]]


def test_a_large_tensor_grows_the_arena_and_its_segment_is_sent_first() -> None:
    pair = Pair(MIB, MIB)
    reader = ReadArena()  # the writer's side: blocks it read from the peer and gave back
    try:
        small = [InferenceRequest((Tensor("X", "UINT8", (4,), np.arange(4, dtype=np.uint8)),))]
        block, encoded = encode_requests(pair.writer, small)
        frames = frames_for((EXECUTE, (), 1, block, encoded), pair.writer, reader)
        assert len(frames) == 2
        assert plain_loads(frames[0][0][4:]) == (SEGMENT, (), 0, MIB)
        assert len(frames[0][1]) == 1
        pair.reader.add(0, MIB, frames[0][1][0])

        big = np.arange(3 * MIB // 4, dtype=np.float32)  # 3 MiB
        block, encoded = encode_requests(pair.writer, [InferenceRequest((Tensor("BIG", "FP32", big.shape, big),))])
        assert block is not None
        assert block[0] == 1
        frames = frames_for((EXECUTE, (), 2, block, encoded), pair.writer, reader)
        assert len(frames) == 2
        segment_frame, fds = frames[0]
        kind, freed, segment, size = plain_loads(segment_frame[4:])
        assert (kind, freed, segment) == (SEGMENT, (), 1)
        assert size >= big.nbytes
        assert size % mmap.PAGESIZE == 0
        assert len(fds) == 1
        assert pair.writer.size == MIB + size
        message = plain_loads(frames[1][0][4:])
        assert frames[1][1] == ()
        assert message[:4] == (EXECUTE, (), 2, block)
        pair.reader.add(segment, size, fds[0])
        (request,) = decode_requests(pair.reader, message[3], message[4], "for model 'm'")
        assert np.array_equal(request.inputs[0].data, big)
        del request
        gc.collect()
        freed_blocks = pair.reader.take_freed()
        assert freed_blocks == (block,)

        pair.writer.free(freed_blocks)
        frames = frames_for((EXECUTE, (), 3, None, ()), pair.writer, reader)
        assert [plain_loads(data[4:]) for data, _fds in frames] == [(DROP, (), (1,)), (EXECUTE, (), 3, None, ())]
        assert pair.writer.size == MIB
    finally:
        gc.collect()
        reader.close()
        pair.close()


def test_frames_for_carries_the_blocks_the_reader_gave_back(pair: Pair) -> None:
    peer = Pair()  # the other direction: the peer writes, this side reads and gives back
    try:
        first = peer.writer.allocate(100)
        second = peer.writer.allocate(10)
        peer.share()
        views = [peer.reader.view(first), peer.reader.view(second)]
        del views
        gc.collect()
        block, encoded = encode_results(pair.writer, [internal("x")])
        frames = frames_for((RESULTS, ("ignored",), 4, block, encoded), pair.writer, peer.reader)
        assert [fds for _data, fds in frames] == [()]
        message = plain_loads(frames[-1][0][4:])
        assert message[0] == RESULTS
        assert sorted(message[1]) == [(0, 0, 128), (0, 128, 64)]
        assert message[2:] == (4, None, ((False, ("INTERNAL", "x")),))
        again = frames_for((RESULTS, (), 5, None, ()), pair.writer, peer.reader)
        assert plain_loads(again[-1][0][4:])[1] == ()
    finally:
        gc.collect()
        peer.close()
