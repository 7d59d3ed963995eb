"""Length-prefixed pickled frames over a Unix socket, with descriptors passed beside them."""

import datetime
import os
import pickle
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from naiad.processes.frames import HEADER, FrameBuffer, Message, pack, plain_loads, send_blocking

READ_SIZE = 256 * 1024


class Custom:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.value == self.value

    def __hash__(self) -> int:
        return self.value


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.settimeout(5)
    right.settimeout(5)
    yield left, right
    left.close()
    right.close()


def receive_until(buffer: FrameBuffer, sock: socket.socket, count: int) -> list[Message]:
    messages: list[Message] = []
    while len(messages) < count:
        received = buffer.receive(sock)
        assert received is not None
        messages.extend(received)
    return messages


def test_pack_is_a_length_then_the_pickle() -> None:
    frame = pack((1, (), "x"))
    (length,) = HEADER.unpack_from(frame)
    assert length == len(frame) - 4
    assert pickle.loads(frame[4:]) == (1, (), "x")


def test_a_frame_sent_whole_arrives_whole(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    message = (21, ((0, 64, 128),), "text", b"\x00\xff", 1.5, None, True, [1, 2], {"k": (3,)})
    send_blocking(left, pack(message))
    assert FrameBuffer(plain=True).receive(right) == [message]


def test_a_frame_sent_a_byte_at_a_time_arrives_once_complete(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    frame = pack((2, (), "split", list(range(10))))
    buffer = FrameBuffer(plain=True)
    for index in range(len(frame) - 1):
        left.sendall(frame[index : index + 1])
        assert buffer.receive(right) == []
    left.sendall(frame[-1:])
    assert buffer.receive(right) == [(2, (), "split", list(range(10)))]


def test_a_frame_sent_in_two_halves_arrives_once_complete(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    first, second = pack((1, (), "a")), pack((2, (), "b" * 100))
    data = first + second
    middle = len(first) + len(second) // 2
    buffer = FrameBuffer(plain=True)
    left.sendall(data[:middle])
    assert buffer.receive(right) == [(1, (), "a")]
    left.sendall(data[middle:])
    assert buffer.receive(right) == [(2, (), "b" * 100)]


def test_a_header_split_in_two_is_read_whole(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    frame = pack((3, (), "header"))
    buffer = FrameBuffer(plain=True)
    left.sendall(frame[:2])
    assert buffer.receive(right) == []
    left.sendall(frame[2:])
    assert buffer.receive(right) == [(3, (), "header")]


def test_many_frames_in_one_send_arrive_in_order(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    messages = [(24, (), index, "x" * index) for index in range(50)]
    left.sendall(b"".join(pack(message) for message in messages))
    assert receive_until(FrameBuffer(plain=True), right, 50) == messages


def test_frames_cut_anywhere_arrive_whole_and_in_order(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    messages = [(index, (), bytes([index]) * (10_000 * index)) for index in range(30)]  # about 4 MB in all
    data = b"".join(pack(message) for message in messages)
    buffer = FrameBuffer(plain=True)
    received: list[Message] = []
    for start in range(0, len(data), 70_001):
        left.sendall(data[start : start + 70_001])
        while select.select([right], [], [], 0)[0]:
            got = buffer.receive(right)
            assert got is not None
            received.extend(got)
    assert [message[0] for message in received] == list(range(30))
    assert received == messages


def test_a_frame_larger_than_the_read_size_arrives(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    payload = bytes(range(256)) * (3 * READ_SIZE // 256 + 1)
    frames = pack((1, (), payload)) + pack((2, (), "after"))
    sender = threading.Thread(target=send_blocking, args=(left, frames))
    sender.start()
    try:
        messages = receive_until(FrameBuffer(plain=True), right, 2)
    finally:
        sender.join(5)
    assert messages == [(1, (), payload), (2, (), "after")]


def test_a_descriptor_passed_with_a_frame_reaches_the_same_file(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    left, right = sockets
    fd = os.memfd_create("frames-test")
    try:
        os.write(fd, b"shared bytes")
        send_blocking(left, pack((40, (), 0, 4096)), [fd])
        buffer = FrameBuffer(plain=True)
        assert buffer.receive(right) == [(40, (), 0, 4096)]
        received = buffer.take_fd()
        try:
            assert received != fd
            assert os.pread(received, 12, 0) == b"shared bytes"
            os.pwrite(received, b"SHARED", 0)
            assert os.pread(fd, 12, 0) == b"SHARED bytes"
        finally:
            os.close(received)
        with pytest.raises(IndexError):
            buffer.take_fd()
    finally:
        os.close(fd)


def test_descriptors_of_several_frames_come_out_in_order(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    pipes = [os.pipe() for _ in range(3)]
    try:
        for index, (_read, write) in enumerate(pipes):
            send_blocking(left, pack((40, (), index)), [write])
        buffer = FrameBuffer(plain=True)
        assert receive_until(buffer, right, 3) == [(40, (), 0), (40, (), 1), (40, (), 2)]
        for index, (read, _write) in enumerate(pipes):
            received = buffer.take_fd()
            os.write(received, f"pipe {index}".encode())
            os.close(received)
            assert os.read(read, 100) == f"pipe {index}".encode()
    finally:
        for read, write in pipes:
            os.close(read)
            os.close(write)


def test_close_closes_descriptors_not_taken(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    read, write = os.pipe()
    try:
        send_blocking(left, pack((40, (), 0)), [write])
        os.close(write)
        buffer = FrameBuffer(plain=True)
        assert buffer.receive(right) == [(40, (), 0)]
        buffer.close()
        assert os.read(read, 10) == b""  # every write end is closed: end of file
    finally:
        os.close(read)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (datetime.date(2024, 5, 1), "datetime.date"),
        (Custom(3), "Custom"),
        (complex(1, 2), "builtins.complex"),
        (os.system, "system"),
    ],
)
def test_a_plain_buffer_refuses_any_class(
    sockets: tuple[socket.socket, socket.socket], value: object, name: str
) -> None:
    left, right = sockets
    send_blocking(left, pack((27, (), value)))
    with pytest.raises(pickle.UnpicklingError, match="which is not a plain value") as info:
        FrameBuffer(plain=True).receive(right)
    assert name in str(info.value)


@pytest.mark.parametrize("value", [datetime.date(2024, 5, 1), Custom(3), complex(1, 2)])
def test_a_buffer_that_is_not_plain_accepts_classes(
    sockets: tuple[socket.socket, socket.socket], value: object
) -> None:
    left, right = sockets
    send_blocking(left, pack((27, (), value)))
    assert FrameBuffer(plain=False).receive(right) == [(27, (), value)]


def test_plain_loads_accepts_plain_values_and_refuses_classes() -> None:
    value = (1, -(2**70), 2.5, "s", b"b", bytearray(b"ba"), None, True, [()], {"k": {1, 2}}, frozenset({3}))
    assert plain_loads(pickle.dumps(value, protocol=5)) == value
    with pytest.raises(pickle.UnpicklingError, match=r"datetime\.datetime"):
        plain_loads(pickle.dumps(datetime.datetime(2024, 1, 1)))


def test_receive_returns_none_when_the_peer_closes(sockets: tuple[socket.socket, socket.socket]) -> None:
    left, right = sockets
    buffer = FrameBuffer(plain=True)
    send_blocking(left, pack((28, ())))
    left.shutdown(socket.SHUT_WR)
    assert buffer.receive(right) == [(28, ())]
    assert buffer.receive(right) is None


def test_receive_returns_none_at_once_on_a_closed_empty_stream() -> None:
    left, right = socket.socketpair()
    try:
        left.close()
        assert FrameBuffer(plain=False).receive(right) is None
    finally:
        right.close()


def test_receive_raises_on_a_non_blocking_socket_with_nothing_to_read(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    _left, right = sockets
    right.setblocking(False)
    with pytest.raises(BlockingIOError):
        FrameBuffer(plain=True).receive(right)
