"""`RemoteServer`: a front-end process's end of its link to the server process; inference is submitted through it
with the tensors in shared memory, and every other HTTP request and gRPC call is passed on whole and answered there,
so that each answer is the server's own."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from naiad.config.settings import ServerSettings
from naiad.core.server import ResponseDone
from naiad.domain.errors import RefusedError, ServerError, internal, unavailable
from naiad.domain.tensors import InferenceRequest
from naiad.frontend_processes import messages as fm
from naiad.frontends.http.protocol import HttpReply, HttpRequest, Respond
from naiad.processes.arena import WriteArena
from naiad.processes.frames import Message
from naiad.processes.link import Link
from naiad.processes.messages import server_error
from naiad.processes.packing import decode_response, encode_requests

logger = logging.getLogger("naiad.frontend")

_WHERE = "from the server process"


class Streamed(Protocol):
    """A gRPC call as a forwarded call's messages reach it."""

    metadata: list[tuple[bytes, bytes]]
    done_callbacks: list[Callable[[Any], None]]

    def send(self, message: bytes) -> None: ...

    def finish(self) -> None: ...

    def fail(self, code: int, message: str) -> None: ...


class RemoteServer:
    """The server as a front-end process sees it: `submit` (the `Inference` of the front ends), `forward_http`,
    `forward_grpc`, and the commands the server sends (`on_command` gets every message not an answer)."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        settings: ServerSettings,
        writer: WriteArena,
        on_command: Callable[[Message], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._on_command = on_command
        self._calls = itertools.count()
        self._inferences: dict[int, ResponseDone] = {}
        self._replies: dict[int, Respond] = {}
        self._streams: dict[int, Streamed] = {}
        self.link = Link(
            sock, loop, writer, plain=False, on_message=self._take, on_lost=on_lost, on_bad=self._unreadable
        )
        self._on_lost = on_lost

    def submit(self, name: str, version: str, request: InferenceRequest, done: ResponseDone) -> None:
        """Send one request to the server; `done` gets its response or error (a `RefusedError` when the server
        refused it before queueing it)."""
        link = self.link
        if not link.open:
            raise unavailable("Server exiting")
        try:
            block, encoded = encode_requests(link.writer, (request,))
        except OSError as exc:
            raise internal(f"cannot pass the inputs of a request to model '{name}': no shared memory: {exc}") from None
        call = next(self._calls)
        self._inferences[call] = done
        link.send((fm.INFER, (), call, name, version, block, encoded[0]))

    def forward_http(self, request: HttpRequest, respond: Respond) -> None:
        """Have the server answer `request`."""
        call = next(self._calls)
        self._replies[call] = respond
        self.link.send(
            (
                fm.HTTP, (), call, request.method, request.path, request.headers, request.body, request.body_size,
                request.keep_alive,
            )
        )  # fmt: skip

    def forward_grpc(self, path: str, message: bytes, call: Streamed) -> None:
        """Have the server answer a gRPC call; a call that ends here first (cancelled, past its deadline) is
        cancelled there."""
        number = next(self._calls)
        self._streams[number] = call
        call.done_callbacks.append(lambda _call: self._grpc_over(number))
        self.link.send((fm.GRPC, (), number, path, message, call.metadata))

    def _grpc_over(self, number: int) -> None:
        if self._streams.pop(number, None) is not None:
            self.link.send((fm.GRPC_CANCEL, (), number))

    def _take(self, message: Message) -> None:
        kind = message[0]
        if kind == fm.RESULT:
            self._result(message)
        elif kind == fm.HTTP_REPLY:
            _, _, call, status, body, content_type, headers = message
            respond = self._replies.pop(call, None)
            if respond is not None:
                respond(HttpReply(status, body, content_type, headers))
        elif kind == fm.GRPC_MESSAGE:
            stream = self._streams.get(message[2])
            if stream is not None:
                stream.send(message[3])
        elif kind == fm.GRPC_END:
            _, _, number, code, text = message
            stream = self._streams.pop(number, None)
            if stream is not None:
                if code == 0:
                    stream.finish()
                else:
                    stream.fail(code, text)
        else:
            self._on_command(message)

    def _result(self, message: Message) -> None:
        _, _, call, block, outcome = message
        done = self._inferences.pop(call, None)
        if done is None:
            return
        if not outcome[0]:
            error = server_error(outcome[1])
            done(RefusedError(error.code, error.message) if outcome[2] else error)
            return
        try:
            response = decode_response(self.link.reader, block, outcome[1], _WHERE)
        except ServerError as exc:
            done(exc)
            return
        done(response)

    def _unreadable(self, exc: Exception) -> None:
        logger.error("the server process sent a message this front end cannot read (%s)", exc)
        self._on_lost()

    def close(self) -> None:
        """Close the link; what is still waiting for an answer gets none (its connection is about to close)."""
        self.link.close()
        self._inferences.clear()
        self._replies.clear()
        self._streams.clear()
