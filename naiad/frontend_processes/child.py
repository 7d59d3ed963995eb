"""The entry of a front-end process, `python -m naiad.frontend_processes.child INDEX LINK HTTP GRPC` (descriptors;
each of HTTP and GRPC a comma-separated list of listening sockets, or "-"): it takes its settings from the server
process, serves HTTP and gRPC on the sockets passed, and exits when told to, or at once when the server process is
gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from naiad.config.log_levels import LogLevels
from naiad.config.settings import ServerSettings
from naiad.frontend_processes import messages as fm
from naiad.frontend_processes.apps import ForwardingHttpApp, grpc_methods
from naiad.frontend_processes.remote import RemoteServer
from naiad.frontends.grpc.h2_server import Http2Server
from naiad.frontends.grpc.tls import GrpcSetupError
from naiad.frontends.http.protocol import HttpListener
from naiad.ops.logging import install
from naiad.processes.arena import WriteArena
from naiad.processes.frames import FrameBuffer, Message
from naiad.processes.messages import FREE

ARENA_BYTES = 8 * 1024 * 1024  # the first segment for request tensors, and each further one (or a tensor's size)

logger = logging.getLogger("naiad.frontend")


def main(argv: list[str]) -> int:
    """Serve until the server process says to stop; the exit status."""
    index, link = int(argv[0]), int(argv[1])
    http, grpc = _sockets(argv[2]), _sockets(argv[3])
    # The server process decides when front ends end: a Ctrl-C or SIGTERM to the whole group must not cut
    # connections before the server has drained them; its own end is seen on the link.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=link)
    start = _first_message(sock)
    if start is None or start[0] != fm.START:
        return 0  # the server process is gone already
    settings: ServerSettings = start[2]
    levels = LogLevels.from_settings(settings)
    levels.update({name: value for name, value in start[3].items() if name != "log_file"})
    frontend = FrontendProcess(index, sock, settings, levels)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(frontend.serve(http, grpc))
    return uvloop.run(frontend.serve(http, grpc))


class FrontendProcess:
    """The listeners of one front-end process and its link to the server process."""

    def __init__(self, index: int, sock: socket.socket, settings: ServerSettings, levels: LogLevels) -> None:
        self._index = index
        self._sock = sock
        self._settings = settings
        self._levels = levels
        self._http: HttpListener | None = None
        self._grpc: Http2Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._done: asyncio.Future[int] | None = None
        self._server: RemoteServer | None = None

    async def serve(self, http: list[socket.socket], grpc: list[socket.socket]) -> int:
        """Open the listeners, tell the server, and serve until closed."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        settings = self._settings
        writer = WriteArena(f"naiad_frontend_{self._index}_in", ARENA_BYTES, ARENA_BYTES)
        server = self._server = RemoteServer(self._sock, loop, settings, writer, self._command, _server_gone)
        install(LinkHandler(server), self._levels)
        error = ""
        try:
            if http:
                app = ForwardingHttpApp(server, settings.http_max_input_size)
                self._http = HttpListener(app.handle, settings.http_max_input_size)
                await self._http.start(settings.http_address, settings.http_port, http)
        except OSError as exc:
            error = f"failed to start the HTTP service on {settings.http_address}:{settings.http_port}: {exc}"
        try:
            if grpc and not error:
                self._grpc = Http2Server(grpc_methods(server), settings.grpc, None)
                await self._grpc.start(settings.grpc_port, grpc)
        except (GrpcSetupError, OSError) as exc:
            error = f"failed to start the GRPC service: {exc}"  # as the server process words it with one front end
        if error:
            server.link.send((fm.LISTENING, (), error))
            await asyncio.sleep(0.1)  # let the link carry it
            return 1
        server.link.send((fm.LISTENING, (), ""))
        logger.debug("front-end process %d serves (HTTP: %s, gRPC: %s)", self._index, bool(http), bool(grpc))
        return await self._done

    def _command(self, message: Message) -> None:
        kind = message[0]
        if kind == fm.LOG_SETTINGS:
            self._levels.update({name: value for name, value in message[2].items() if name != "log_file"})
        elif kind == fm.STOP_ACCEPTING:
            if self._http is not None:
                self._http.stop_accepting()
            if self._grpc is not None:
                self._grpc.stop_accepting(float(message[2]))
        elif kind == fm.CLOSE and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        """Close idle connections now and the others once answered (the server has drained), then exit."""
        if self._http is not None:
            await self._http.close(timeout=1)
        if self._grpc is not None:
            await self._grpc.close(timeout=5)
        if self._server is not None:
            self._server.link.send((FREE, ()))  # the last blocks given back
            await asyncio.sleep(0)
            self._server.close()
        if self._done is not None and not self._done.done():
            self._done.set_result(0)


class LinkHandler(logging.Handler):
    """Sends each record to the server process, whose log (stderr or --log-file, in its format) shows it."""

    def __init__(self, server: RemoteServer) -> None:
        super().__init__()
        self._server = server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._server.link.send((fm.LOG, (), record.name, record.levelno, text))
        except Exception:
            self.handleError(record)


def _server_gone() -> None:
    """The server process is gone: nothing here can be answered any more."""
    os._exit(0)


def _first_message(sock: socket.socket) -> Message | None:
    frames = FrameBuffer(plain=False)
    while True:
        with contextlib.suppress(InterruptedError):
            messages = frames.receive(sock)
            if messages is None:
                return None
            if messages:
                return messages[0]  # the server sends nothing else until this process listens


def _sockets(argument: str) -> list[socket.socket]:
    if argument == "-":
        return []
    return [socket.socket(fileno=int(fd)) for fd in argument.split(",")]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
