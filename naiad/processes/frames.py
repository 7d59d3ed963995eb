"""Frames between the server and an instance process: a 4-byte length and a pickled tuple of plain values, over a
Unix stream socket, with the file descriptors of new shared-memory segments passed beside the bytes.

Tensor bytes never travel here (they are in shared memory). What the server reads from a child is unpickled with
no classes at all, so a model process can send values, never objects that run code in the server."""

from __future__ import annotations

import array
import contextlib
import io
import os
import pickle
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

HEADER = struct.Struct("<I")
_MAX_FDS = 16  # descriptors read with one receive; each frame passes at most one
_READ_SIZE = 256 * 1024

Message = tuple[Any, ...]


class PlainUnpickler(pickle.Unpickler):
    """Unpickles tuples, lists, dicts, strings, bytes and numbers only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an instance process sent a {module}.{name}, which is not a plain value")


def plain_loads(data: bytes | memoryview) -> Any:
    """Plain values from a pickle, refusing any class."""
    return PlainUnpickler(io.BytesIO(data)).load()


def pack(message: Message) -> bytes:
    """One frame: the length, then the pickled message."""
    payload = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(payload)) + payload


class FrameBuffer:
    """Bytes and descriptors as they arrive, split into whole messages."""

    __slots__ = ("_data", "_fds", "_loads")

    def __init__(self, plain: bool) -> None:
        self._data = bytearray()
        self._fds: deque[int] = deque()
        self._loads: Callable[[bytes | memoryview], Any] = plain_loads if plain else pickle.loads

    def feed(self, data: bytes, fds: Sequence[int]) -> list[Message]:
        """Take what one receive returned; the messages it completes, in order."""
        self._fds.extend(fds)
        buffer = self._data
        if not buffer:  # the common case: whole frames in one receive
            return self._split(memoryview(data))
        buffer += data
        view = memoryview(buffer)
        try:
            messages = self._split(view)
        finally:
            view.release()
        return messages

    def _split(self, view: memoryview) -> list[Message]:
        messages: list[Message] = []
        loads = self._loads
        offset, end = 0, len(view)
        while end - offset >= 4:
            (length,) = HEADER.unpack_from(view, offset)
            if end - offset - 4 < length:
                break
            messages.append(loads(view[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        rest = bytes(view[offset:])
        self._data[:] = rest
        return messages

    def take_fd(self) -> int:
        """The next descriptor received (sent with a segment's frame)."""
        return self._fds.popleft()

    def close(self) -> None:
        """Close the descriptors received and not taken."""
        while self._fds:
            close_quietly(self._fds.popleft())


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """What one receive returns: bytes (empty at the end of the stream) and the descriptors that came with them."""
    data, fds, _flags, _address = socket.recv_fds(sock, _READ_SIZE, _MAX_FDS)
    return data, fds


def send_blocking(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send a frame whole on a blocking socket, descriptors with its first byte."""
    view = memoryview(data)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([view], ancillary)
    while sent < len(view):
        view = view[sent:]
        sent = sock.send(view)


def close_quietly(fd: int) -> None:
    """Close a descriptor that may already be gone."""
    with contextlib.suppress(OSError):
        os.close(fd)
