"""`FrontendProcesses`: the server process's side of its front-end processes: the listening sockets they share,
starting them, one link each (inference submitted to the server; every other request answered by the server's own
HTTP app and gRPC methods, so there is one answer for the whole server), starting one again when it dies, and their
part in shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
from typing import Any

from naiad.config.settings import ServerSettings
from naiad.core.server import InferenceServer
from naiad.domain.errors import ServerError, internal
from naiad.domain.tensors import InferenceResponse
from naiad.frontend_processes import messages as fm
from naiad.frontends.grpc.forwarded import ForwardedCalls
from naiad.frontends.grpc.h2_server import service_methods
from naiad.frontends.grpc.health import HealthService
from naiad.frontends.grpc.service import InferenceService
from naiad.frontends.http.app import HttpApp
from naiad.frontends.http.protocol import HttpReply, HttpRequest
from naiad.processes.arena import WriteArena
from naiad.processes.exits import ExitWatch, how_it_ended
from naiad.processes.frames import Message, pack, send_blocking
from naiad.processes.link import Link
from naiad.processes.messages import error_of
from naiad.processes.packing import decode_requests, encode_response

logger = logging.getLogger("naiad.frontend")

ARENA_BYTES = 8 * 1024 * 1024  # the first segment for response tensors, and each further one (or a tensor's size)
START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 8.0  # a front end's own close: HTTP connections 1 s, gRPC 5 s, and some slack
_BACKOFF_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
_YOUNG_S = 5.0  # a front end that dies before this age is started again after a longer wait
_WHERE = "from a front-end process"


class FrontendProcesses:
    """The front-end processes serving HTTP and gRPC for one `InferenceServer`."""

    def __init__(self, server: InferenceServer, settings: ServerSettings) -> None:
        self.server = server
        self.settings = settings
        self.count = settings.frontend_process_count
        self.http_app = HttpApp(server, settings.http_max_input_size)
        self.health = HealthService(server)
        self.grpc_calls = ForwardedCalls(service_methods(InferenceService(server), self.health))
        self.http_sockets: list[socket.socket] = []
        self.grpc_sockets: list[socket.socket] = []
        self.stopping = False
        self._frontends: dict[int, Frontend] = {}
        self._restarts: set[asyncio.Task[None]] = set()
        self._log_settings = server.log_settings()

    def bind(self) -> None:
        """Bind and listen on the ports the front ends share; raises OSError (the message names the service)."""
        settings = self.settings
        if settings.allow_http:
            try:
                self.http_sockets = listening_sockets(settings.http_address, settings.http_port, reuse_port=False)
            except OSError as exc:
                where = f"{settings.http_address}:{settings.http_port}"
                raise OSError(f"failed to start the HTTP service on {where}: {exc.strerror or exc}") from None
        if settings.allow_grpc:
            grpc = settings.grpc
            try:
                self.grpc_sockets = listening_sockets(grpc.address, settings.grpc_port, reuse_port=grpc.reuse_port)
            except OSError as exc:
                self.close_sockets()
                where = f"{grpc.address}:{settings.grpc_port}"
                raise OSError(
                    f"failed to start the GRPC service: failed to bind {where}: {exc.strerror or exc}"
                ) from None

    def port(self, sockets: list[socket.socket]) -> int:
        """The port a service listens on."""
        return int(sockets[0].getsockname()[1])

    async def start(self) -> str:
        """Start every front end and wait until each listens; "" then, else why one could not."""
        loop = asyncio.get_running_loop()
        for index in range(1, self.count + 1):
            self._frontends[index] = Frontend(index, self, loop)
        errors = await asyncio.gather(*(frontend.start() for frontend in self._frontends.values()))
        return next((error for error in errors if error), "")

    def stop_accepting(self, grace: float) -> None:
        """Shutdown has begun: health watchers end, and no front end accepts connections any more."""
        self.stopping = True
        for task in self._restarts:
            task.cancel()
        self.health.begin_exit()
        for frontend in self._frontends.values():
            frontend.send((fm.STOP_ACCEPTING, (), grace))
        self.close_sockets()

    async def close(self) -> None:
        """Have every front end close its connections and exit; kill those that take too long."""
        self.stopping = True
        self.close_sockets()
        frontends = list(self._frontends.values())
        for frontend in frontends:
            frontend.send((fm.CLOSE, ()))
        await asyncio.gather(*(frontend.ended(CLOSE_TIMEOUT_S) for frontend in frontends))

    def close_sockets(self) -> None:
        """Close the server's own copies of the listening sockets."""
        for sock in (*self.http_sockets, *self.grpc_sockets):
            sock.close()
        self.http_sockets, self.grpc_sockets = [], []

    def answered(self) -> None:
        """A request other than inference was answered: if it changed the log settings, every front end applies
        them (they filter their records as the server's log does)."""
        settings = self.server.log_settings()
        if settings != self._log_settings:
            self._log_settings = settings
            for frontend in self._frontends.values():
                frontend.send((fm.LOG_SETTINGS, (), settings))

    def died(self, frontend: Frontend, how: str, young: bool) -> None:
        """A front end died on its own: start it again, after a wait when it keeps dying young."""
        if self.stopping:
            return
        frontend.failures = frontend.failures + 1 if young else 0
        delay = _BACKOFF_S[min(frontend.failures, len(_BACKOFF_S) - 1)]
        logger.error(
            "front-end process %d (pid %d) %s; its connections are lost; starting it again in %.2f s",
            frontend.index,
            frontend.pid,
            how,
            delay,
        )
        task = asyncio.get_running_loop().create_task(self._restart(frontend, delay))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(self, old: Frontend, delay: float) -> None:
        """Start the front end again, and again with back-off for as long as it cannot start (the others serve)."""
        failures = old.failures
        while True:
            await asyncio.sleep(delay)
            if self.stopping:
                return
            frontend = Frontend(old.index, self, asyncio.get_running_loop())
            frontend.failures = failures
            self._frontends[old.index] = frontend
            error = await frontend.start()
            if not error:
                logger.info("front-end process %d (pid %d) serves again", frontend.index, frontend.pid)
                return
            failures += 1
            delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
            logger.error(
                "front-end process %d could not start again: %s; trying again in %.2f s", old.index, error, delay
            )

    @property
    def pids(self) -> list[int]:
        """The front ends' process ids."""
        return [frontend.pid for frontend in self._frontends.values() if frontend.pid]


class Frontend:
    """One front-end process: its link, and what it asked that is not answered yet."""

    def __init__(self, index: int, owner: FrontendProcesses, loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.pid = 0
        self.failures = 0
        self._owner = owner
        self._loop = loop
        self._process: subprocess.Popen[bytes] | None = None
        self._link: Link | None = None
        self._watch: ExitWatch | None = None
        self._listening: asyncio.Future[str] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()
        self._calls: dict[int, asyncio.Task[tuple[int, str]]] = {}
        self._started_at = 0.0

    async def start(self) -> str:
        """Start the process and wait until it listens; "" then, else why it does not."""
        owner = self._owner
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        http = [sock.fileno() for sock in owner.http_sockets]
        grpc = [sock.fileno() for sock in owner.grpc_sockets]
        command = [
            sys.executable, "-m", "naiad.frontend_processes.child", str(self.index), str(theirs.fileno()),
            ",".join(map(str, http)) or "-", ",".join(map(str, grpc)) or "-",
        ]  # fmt: skip
        try:
            send_blocking(ours, pack((fm.START, (), owner.settings.picklable(), owner.server.log_settings())))
            self._process = subprocess.Popen(
                command, pass_fds=(theirs.fileno(), *http, *grpc), stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            ours.close()
            return f"cannot start front-end process {self.index}: {exc.strerror or exc}"
        finally:
            theirs.close()
        self.pid = self._process.pid
        self._started_at = self._loop.time()
        writer = WriteArena(f"naiad_frontend_{self.index}_out", ARENA_BYTES, ARENA_BYTES)
        self._link = Link(
            ours, self._loop, writer, plain=True, on_message=self._take, on_lost=self._lost, on_bad=self._unreadable
        )
        self._watch = ExitWatch(self._process, self._loop, self._exit_seen)
        try:
            return await asyncio.wait_for(asyncio.shield(self._listening), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.kill()
            return f"front-end process {self.index} (pid {self.pid}) did not listen within {START_TIMEOUT_S:.0f} s"

    def send(self, message: Message) -> None:
        """Send a command, if the process is still there to read it."""
        if self._link is not None:
            self._link.send(message)

    async def ended(self, timeout: float) -> None:
        """Wait until the process has exited, killing it after `timeout` seconds."""
        if self._process is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), timeout)
        except asyncio.TimeoutError:
            logger.warning("front-end process %d (pid %d) did not exit in time; killing it", self.index, self.pid)
            self.kill()
            await self._ended

    def kill(self) -> None:
        """End the process at once."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    # What the process sends

    def _take(self, message: Message) -> None:
        kind = message[0]
        if kind == fm.INFER:
            self._infer(message)
        elif kind == fm.HTTP:
            self._http(message)
        elif kind == fm.GRPC:
            self._grpc(message)
        elif kind == fm.GRPC_CANCEL:
            task = self._calls.pop(message[2], None)
            if task is not None:
                task.cancel()
        elif kind == fm.LOG:
            _, _, name, level, text = message
            record = logging.makeLogRecord(
                {
                    "name": str(name), "levelno": int(level), "levelname": logging.getLevelName(int(level)),
                    "msg": str(text), "process": self.pid,
                }
            )  # fmt: skip
            logging.getLogger(str(name)).handle(record)
        elif kind == fm.LISTENING and not self._listening.done():
            error = str(message[2])
            self._listening.set_result(error)

    def _infer(self, message: Message) -> None:
        _, _, call, name, version, block, encoded = message
        link = self._link
        assert link is not None
        try:
            request = decode_requests(link.reader, block, (encoded,), _WHERE)[0]
        except ServerError as exc:
            link.send((fm.RESULT, (), call, None, (False, error_of(exc), True)))
            return

        def done(outcome: InferenceResponse | ServerError) -> None:
            if not link.open:
                return
            if isinstance(outcome, ServerError):
                link.send((fm.RESULT, (), call, None, (False, error_of(outcome), False)))
                return
            try:
                out, answer = encode_response(link.writer, outcome)
            except (OSError, TypeError) as exc:
                error = internal(f"cannot pass the response of model '{outcome.model_name}' to the front end: {exc}")
                link.send((fm.RESULT, (), call, None, (False, error_of(error), False)))
                return
            link.send((fm.RESULT, (), call, out, (True, answer)))

        try:
            self._owner.server.submit(str(name), str(version), request, done)
        except ServerError as exc:
            link.send((fm.RESULT, (), call, None, (False, error_of(exc), True)))

    def _http(self, message: Message) -> None:
        _, _, call, method, path, headers, body, body_size, keep_alive = message
        link = self._link
        assert link is not None
        owner = self._owner

        def respond(reply: HttpReply) -> None:
            link.send((fm.HTTP_REPLY, (), call, reply.status, reply.body, reply.content_type, reply.headers))
            owner.answered()

        owner.http_app.handle(HttpRequest(method, path, headers, body, body_size, keep_alive), respond)

    def _grpc(self, message: Message) -> None:
        _, _, call, path, body, metadata = message
        link = self._link
        assert link is not None

        def send(response: bytes) -> None:
            link.send((fm.GRPC_MESSAGE, (), call, response))

        pairs = [(bytes(name), bytes(value)) for name, value in metadata]
        task = self._loop.create_task(self._owner.grpc_calls.run(str(path), bytes(body), pairs, send))
        self._calls[call] = task

        def over(task: asyncio.Task[tuple[int, str]]) -> None:
            if self._calls.pop(call, None) is None or task.cancelled():
                return
            code, text = task.result()
            link.send((fm.GRPC_END, (), call, code, text))
            self._owner.answered()

        task.add_done_callback(over)

    def _unreadable(self, exc: Exception) -> None:
        logger.error("front-end process %d sent a message naiad cannot read (%s); ending it", self.index, exc)
        self.kill()

    # Its end

    def _lost(self) -> None:
        """The link closed: the process is exiting (or must)."""
        if self._process is not None and self._process.poll() is None:
            self._loop.call_later(1.0, self.kill)

    def _exit_seen(self) -> None:
        process = self._process
        if process is None or process.poll() is None or self._ended.done():
            return
        if self._watch is not None:
            self._watch.close()
        if self._link is not None:
            self._link.close()
        for task in self._calls.values():
            task.cancel()
        self._calls.clear()
        how = how_it_ended(process.returncode)
        if not self._listening.done():
            self._listening.set_result(f"front-end process {self.index} (pid {self.pid}) {how} while starting")
        else:
            young = self._loop.time() - self._started_at < _YOUNG_S
            self._owner.died(self, how, young)
        self._ended.set_result(None)


def listening_sockets(host: str, port: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets on every address `host` names (as asyncio binds them), all on one port even when `port`
    is 0; blocking, to be passed to the front ends."""
    infos: list[Any] = list(
        dict.fromkeys(socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(2048)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
