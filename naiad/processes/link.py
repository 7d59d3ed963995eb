"""`Link`: one side of a socket to another process, on an asyncio loop: frames read as they come and sent without
blocking the loop, with the shared-memory arenas each way (new segments, dropped ones and freed blocks ride on the
messages themselves)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable

from naiad.processes import messages as m
from naiad.processes.arena import ReadArena, WriteArena
from naiad.processes.frames import FrameBuffer, Message, close_quietly
from naiad.processes.packing import frames_for


class Link:
    """Delivers each message the other side sends (but the arena's own) to `on_message`, and tells `on_lost` once
    the socket is closed or broken; `on_bad` gets what could not be read, after which nothing more is read."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        writer: WriteArena,
        *,
        plain: bool,
        on_message: Callable[[Message], None],
        on_lost: Callable[[], None],
        on_bad: Callable[[Exception], None],
    ) -> None:
        self.writer = writer
        self.reader = ReadArena()
        self._sock: socket.socket | None = sock
        self._loop = loop
        self._frames = FrameBuffer(plain=plain)
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_bad = on_bad
        self._out: deque[tuple[memoryview, tuple[int, ...]]] = deque()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def open(self) -> bool:
        """Whether messages can still be sent."""
        return self._sock is not None

    def send(self, message: Message) -> None:
        """Queue `message` (its `freed` field is filled in here) and send what the socket takes now."""
        if self._sock is None:
            return
        flushing = not self._out
        for data, fds in frames_for(message, self.writer, self.reader):
            self._out.append((memoryview(data), fds))
        if flushing:  # otherwise the loop is already waiting to write the backlog
            self._flush()

    def close(self) -> None:
        """Stop reading and writing, close the socket, and unmap both arenas."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(Exception):
                self._loop.remove_writer(sock.fileno())
            sock.close()
        for _view, fds in self._out:
            for fd in fds:
                close_quietly(fd)
        self._out.clear()
        self._frames.close()
        self.writer.close()
        self.reader.close()

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            messages = self._frames.receive(sock)
            if messages is None:
                self._lost()
                return
            for message in messages:
                self._take(message)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
        except Exception as exc:  # a message that cannot be read: the other side is not to be trusted any more
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            self._on_bad(exc)

    def _take(self, message: Message) -> None:
        kind, freed = message[0], message[1]
        if freed:
            self.writer.free(freed)
        if kind == m.SEGMENT:
            self.reader.add(message[2], message[3], self._frames.take_fd())
        elif kind == m.DROP:
            for segment in message[2]:
                self.reader.drop(segment)
        elif kind != m.FREE:
            self._on_message(message)

    def _lost(self) -> None:
        sock = self._sock
        if sock is None:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock.fileno())
        self._on_lost()

    def _flush(self) -> None:
        sock, out = self._sock, self._out
        if sock is None:
            return
        while out:
            view, fds = out[0]
            try:
                if fds:
                    sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(sock.fileno(), self._writable)
                return
            except OSError:
                self._lost()
                return
            for fd in fds:
                os.close(fd)
            if sent < len(view):
                out[0] = (view[sent:], ())
                self._loop.add_writer(sock.fileno(), self._writable)
                return
            out.popleft()

    def _writable(self) -> None:
        if self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
        self._flush()
