"""`Link`: one side of a socket to another process, on an asyncio loop: frames read as they come and sent without
blocking the loop, with the shared-memory arenas each way (new segments, dropped ones and freed blocks ride on the
messages themselves). What is sent during one turn of the loop goes in one write at its end: under load, one
wake-up of the other side carries many messages."""

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
        self._flush_due = False  # a flush is scheduled for the end of this turn of the loop
        self._blocked = False  # the socket is full: the loop calls back once it takes more
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def open(self) -> bool:
        """Whether messages can still be sent."""
        return self._sock is not None

    def send(self, message: Message) -> None:
        """Queue `message` (its `freed` field is filled in here), to be sent at the end of this turn of the loop."""
        if self._sock is None:
            return
        for data, fds in frames_for(message, self.writer, self.reader):
            self._out.append((memoryview(data), fds))
        if not self._flush_due and not self._blocked:
            self._flush_due = True
            self._loop.call_soon(self._flush)

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
        self._flush_due = False
        sock, out = self._sock, self._out
        if sock is None:
            return
        while out:
            view, fds = out[0]
            if not fds and len(out) > 1 and not out[1][1]:  # frames without descriptors go in one write
                run: list[memoryview] = []
                while out and not out[0][1]:
                    run.append(out.popleft()[0])
                view = memoryview(b"".join(run))
                out.appendleft((view, ()))
            try:
                if fds:
                    sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                self._wait_writable(sock)
                return
            except OSError:
                self._lost()
                return
            for fd in fds:
                os.close(fd)
            if sent < len(view):
                out[0] = (view[sent:], ())
                self._wait_writable(sock)
                return
            out.popleft()

    def _wait_writable(self, sock: socket.socket) -> None:
        self._blocked = True
        self._loop.add_writer(sock.fileno(), self._writable)

    def _writable(self) -> None:
        self._blocked = False
        if self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())
        self._flush()
