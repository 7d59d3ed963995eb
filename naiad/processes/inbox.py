"""The messages an instance process receives, read by whichever of its threads is waiting for one: the main thread
between jobs, a thread waiting for a BLS answer. A job thus reaches the main thread with no hand-over between
threads (each costs a wake-up); the one thread of its own, for `async_exec` answers, reads only while such an
answer is due."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from typing import NoReturn

from naiad.processes.frames import FrameBuffer, Message


class Inbox:
    """The reader role of the socket, taken in turn by the threads that wait."""

    def __init__(self, sock: socket.socket, take: Callable[[Message, FrameBuffer], None]) -> None:
        self._sock = sock
        self._take = take
        self._frames = FrameBuffer(plain=False)
        lock = threading.Lock()
        self._condition = threading.Condition(lock)  # threads waiting for their answer, or for their turn to read
        # the async reader waits on its own, so that the wake-ups of every job do not reach it
        self._async_wanted = threading.Condition(lock)
        self._reading = False
        self._async_due = 0
        threading.Thread(target=self._read_for_async, name="naiad-stub-async-reader", daemon=True).start()
        threading.Thread(target=self._watch_server, name="naiad-stub-server-watch", daemon=True).start()

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
            if self._async_due:
                self._async_wanted.notify()
            self._condition.notify_all()

    def _receive(self) -> None:
        try:
            messages = self._frames.receive(self._sock)
        except OSError:
            messages = None
        if messages is None:
            server_gone()
        for message in messages:
            self._take(message, self._frames)

    def _watch_server(self) -> None:
        """End the process the moment the server's end of the socket closes, even in the middle of a job (no one
        reads then): the kernel reports the hang-up without any data being taken."""
        watch = select.poll()
        watch.register(self._sock.fileno(), getattr(select, "POLLRDHUP", 0))
        while True:
            for _fd, events in watch.poll():
                if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
                    server_gone()

    def _read_for_async(self) -> None:
        while True:
            with self._async_wanted:
                while not self._async_due:
                    self._async_wanted.wait()
            self.wait_for(lambda: not self._async_due)


def server_gone() -> NoReturn:
    """The server is gone: nothing of this instance may outlive it, what the model started included."""
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)  # the process's own session (it leads it): it ends with this too
    os._exit(0)
