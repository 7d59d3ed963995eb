"""`ExitWatch`: told on the event loop the moment a child process exits (its pid file descriptor turns readable, or
a thread waiting for it where there is none), even while something it started still holds its sockets; and how a
process ended, in words."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable

from naiad.processes.frames import close_quietly


class ExitWatch:
    """Calls `on_exit` on `loop` once `process` has exited (`process.poll()` then has its status)."""

    def __init__(
        self, process: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._pidfd = -1
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                self._pidfd = pidfd_open(process.pid)
            except OSError:
                self._pidfd = -1
            else:
                loop.add_reader(self._pidfd, on_exit)
                return

        def wait() -> None:  # pragma: no cover - without pidfd (macOS, old Linux)
            process.wait()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
                loop.call_soon_threadsafe(on_exit)

        threading.Thread(target=wait, name=f"naiad-wait-{process.pid}", daemon=True).start()

    def close(self) -> None:
        """Stop watching."""
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._pidfd)
            close_quietly(self._pidfd)
            self._pidfd = -1


def how_it_ended(returncode: int) -> str:
    """How a process ended, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"
