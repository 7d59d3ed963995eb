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
_ANCILLARY = socket.CMSG_SPACE(64 * array.array("i").itemsize)  # descriptors read at once; a frame passes one
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
    """Receives from a socket into one buffer kept for the connection's life, and splits what came into whole
    messages, keeping the descriptors that came with them. (A buffer allocated per receive costs more than the
    receive itself: at this size, fresh pages from the kernel each time.)"""

    __slots__ = ("_buffer", "_end", "_fds", "_loads", "_start")

    def __init__(self, plain: bool) -> None:
        self._buffer = bytearray(_READ_SIZE)
        self._start = 0  # the first byte not yet taken
        self._end = 0  # the end of what was received
        self._fds: deque[int] = deque()
        self._loads: Callable[[bytes | memoryview], Any] = plain_loads if plain else pickle.loads

    def receive(self, sock: socket.socket) -> list[Message] | None:
        """Receive once: the messages it completes, in order, or None at the end of the stream. Raises what the
        socket raises (BlockingIOError on a non-blocking socket with nothing to read)."""
        self._make_room()
        with memoryview(self._buffer) as whole:
            nbytes, ancillary, flags, _address = sock.recvmsg_into([whole[self._end :]], _ANCILLARY)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise OSError("more file descriptors arrived at once than naiad reads")
        if not nbytes:
            return None
        self._end += nbytes
        return self._split()

    def _make_room(self) -> None:
        """Room after the received bytes for at least the rest of the frame they begin (and a full read)."""
        start, end, buffer = self._start, self._end, self._buffer
        if start == end:
            self._start = self._end = 0
            return
        needed = _READ_SIZE
        if end - start >= 4:
            needed = max(needed, 4 + HEADER.unpack_from(buffer, start)[0])
        if len(buffer) - end >= needed - (end - start):
            return
        rest = bytes(buffer[start:end])
        if len(buffer) < needed:
            self._buffer = buffer = bytearray(needed)
        buffer[: len(rest)] = rest
        self._start, self._end = 0, len(rest)

    def _split(self) -> list[Message]:
        messages: list[Message] = []
        loads = self._loads
        offset, end = self._start, self._end
        with memoryview(self._buffer) as view:
            while end - offset >= 4:
                (length,) = HEADER.unpack_from(view, offset)
                if end - offset - 4 < length:
                    break
                messages.append(loads(view[offset + 4 : offset + 4 + length]))
                offset += 4 + length
        self._start = offset
        return messages

    def take_fd(self) -> int:
        """The next descriptor received (sent with a segment's frame)."""
        return self._fds.popleft()

    def close(self) -> None:
        """Close the descriptors received and not taken."""
        while self._fds:
            close_quietly(self._fds.popleft())


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
