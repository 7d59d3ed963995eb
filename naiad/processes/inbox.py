"""The messages an instance process receives, read by whichever of its threads is waiting for one: the main thread
between jobs, a thread waiting for a BLS answer. A job thus reaches the main thread with no hand-over between
threads (each costs a wake-up); the one thread of its own, for `async_exec` answers, reads only while such an
answer is due."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from naiad.processes.frames import FrameBuffer, Message, receive


class Inbox:
    """The reader role of the socket, taken in turn by the threads that wait."""

    def __init__(self, sock: socket.socket, take: Callable[[Message, FrameBuffer], None]) -> None:
        self._sock = sock
        self._take = take
        self._frames = FrameBuffer(plain=False)
        self._condition = threading.Condition()
        self._reading = False
        self._async_due = 0
        threading.Thread(target=self._read_for_async, name="naiad-stub-async-reader", daemon=True).start()

    def wait_for(self, ready: Callable[[], bool]) -> None:
        """Return once `ready()` is true, reading the socket meanwhile unless another thread is."""
        condition = self._condition
        with condition:
            while not ready():
                if self._reading:
                    condition.wait()
                    continue
                self._reading = True
                condition.release()
                try:
                    self._receive()
                finally:
                    condition.acquire()
                    self._reading = False
                    condition.notify_all()

    def async_call(self, delta: int) -> None:
        """An answer for a coroutine is due (+1), or came (-1): someone must read while any is due."""
        with self._condition:
            self._async_due += delta
            self._condition.notify_all()

    def _receive(self) -> None:
        try:
            data, fds = receive(self._sock)
        except OSError:
            data, fds = b"", []
        if not data:  # the server is gone: nothing here may outlive it
            os._exit(0)
        for message in self._frames.feed(data, fds):
            self._take(message, self._frames)

    def _read_for_async(self) -> None:
        condition = self._condition
        while True:
            with condition:
                while not self._async_due:
                    condition.wait()
            self.wait_for(lambda: not self._async_due)
