"""The entry of an instance process, run as a file: `python -u .../naiad/processes/child.py INSTANCE FD FIRST GROWTH
LABEL`, so that `ps` names the instance. It takes the socket the server passed, says hello, then runs the stub.

It imports naiad from the folder it lies in, not from the path, so that in a model's own environment the
environment's packages are the ones imported and the server's site-packages stay out; and it needs the standard
library only up to the hello, so an environment that lacks what the stub needs (numpy, a recent enough Python) is
reported to the server by name instead of dying unexplained."""

from __future__ import annotations

import os
import signal
import socket
import sys

_OLDEST_PYTHON = (3, 10)


def main(argv: list[str]) -> int:
    """Serve one instance over the socket descriptor `argv[1]`; the process's exit status."""
    from naiad.processes.frames import pack, send_blocking
    from naiad.processes.messages import FAILED, HELLO

    fd, first_segment, growth, label = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    # The server decides when an instance ends: a Ctrl-C or a SIGTERM to the whole group (systemd, a terminal) must
    # not cut a request or skip finalize(); the server's own end is seen on the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    send_blocking(sock, pack((HELLO, (), os.getpid(), tuple(sys.version_info[:3]))))

    def refuse(why: str) -> int:
        send_blocking(sock, pack((FAILED, (), ("INTERNAL", f"the instance process cannot run: {why}"))))
        return 1

    if sys.version_info < _OLDEST_PYTHON:
        return refuse(f"its Python is {sys.version.split()[0]}; naiad needs Python 3.10 or newer")
    try:
        from naiad.processes.stub import Stub
    except ImportError as exc:
        return refuse(f"its Python ({sys.executable}) cannot import what naiad needs ({exc}); install numpy in it")
    return Stub(sock, first_segment, growth, label).run()


def _import_naiad() -> None:
    """Import naiad from the folder above this file, with nothing else of the server's on the path."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # a file run puts its own folder first: this one holds naiad's modules, not a model's
    package = os.path.dirname(here)
    spec = importlib.util.spec_from_file_location(
        "naiad", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["naiad"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    _import_naiad()
    from naiad.processes.child import main as run

    raise SystemExit(run(sys.argv[1:]))
