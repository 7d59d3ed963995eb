"""HTTP/1.1 connections on httptools: parsing, keep-alive, pipelining in order, 100-continue, body limits and
back-pressure, handing each complete request to the application and writing its reply."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from urllib.parse import unquote

import httptools
import orjson

logger = logging.getLogger("naiad.http")

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
_MAX_PIPELINED = 16


class HttpRequest:
    """One complete request: method, decoded path, headers (lower-case names) and the whole body."""

    __slots__ = ("body", "body_size", "headers", "keep_alive", "method", "path")

    def __init__(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes, body_size: int, keep_alive: bool
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.body_size = body_size
        self.keep_alive = keep_alive

    @property
    def body_too_large(self) -> bool:
        """The body went past the listener's limit and was dropped while it arrived."""
        return self.body_size > len(self.body)


class HttpReply:
    """What the application answers: status, content type, extra headers and body."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: bytes = b"application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


Respond = Callable[[HttpReply], None]
# The application answers a request by calling `respond` exactly once, at once or later on the loop.
Handler = Callable[[HttpRequest, Respond], None]


class ConnectionState:
    """What every connection of one listener shares: the handler, the body limit and the open connections."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self.handler = handler
        self.max_body = max_body
        self.connections: set[HttpProtocol] = set()
        self.closing = False


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, state: ConnectionState) -> None:
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending: deque[HttpRequest] = deque()
        self._current: HttpRequest | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._state.connections.discard(self)
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(f"invalid HTTP request: {exc}")

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._next()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        expect = self._headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._state.max_body:
            self._body = []  # dropped as it arrives; the application answers 400 with the size
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = HttpRequest(
            self._parser.get_method().decode("ascii", "replace"),
            _path(self._url),
            self._headers,
            body,
            self._body_size,
            self._parser.should_keep_alive(),
        )
        if self._current is not None or self._writing_paused:
            self._pending.append(request)
            if len(self._pending) >= _MAX_PIPELINED and self._transport is not None:
                self._transport.pause_reading()
                self._reading_paused = True
            return
        self._start(request)

    # serving

    def _start(self, request: HttpRequest) -> None:
        self._current = request
        try:
            self._state.handler(request, self._respond)
        except Exception:  # the handler maps its own errors; this is a bug, not a client's fault
            logger.exception("unexpected failure serving %s %s", request.method, request.path)
            if self._current is request:
                self._respond(HttpReply(500, b'{"error":"internal server error"}'))

    def _respond(self, reply: HttpReply) -> None:
        request = self._current
        if request is None or self._closed:
            return
        self._current = None
        keep_alive = request.keep_alive and not self._state.closing
        self._write(reply, keep_alive, request.method == "HEAD")
        if not keep_alive:
            self._close()
            return
        if self._reading_paused and len(self._pending) < _MAX_PIPELINED // 2 and self._transport is not None:
            self._transport.resume_reading()
            self._reading_paused = False
        if self._pending and not self._writing_paused:
            self._loop.call_soon(self._next)

    def _next(self) -> None:
        if self._current is None and self._pending and not self._closed:
            self._start(self._pending.popleft())

    def _write(self, reply: HttpReply, keep_alive: bool, head: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        reason = _REASONS.get(reply.status, b"Unknown")
        lines = [
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            % (reply.status, reason, reply.content_type, len(reply.body))
        ]
        if reply.headers:
            lines.extend(b"%s: %s\r\n" % pair for pair in reply.headers)
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if not head:
            lines.append(reply.body)
        transport.write(b"".join(lines))

    def _refuse(self, message: str) -> None:
        self._write(HttpReply(400, orjson.dumps({"error": message})), keep_alive=False, head=False)
        self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def close_when_idle(self) -> None:
        """Close now if no request is being served; otherwise after the current reply."""
        if self._current is None:
            self._close()


def _path(url: bytes) -> str:
    path = url.split(b"?", 1)[0]
    if path[:1] != b"/" and b"://" in path:  # absolute-form request target
        path = httptools.parse_url(url).path or b"/"
    text = path.decode("latin-1")
    return unquote(text) if "%" in text else text


class HttpListener:
    """A listening socket and its connections, with an orderly close."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self._state = ConnectionState(handler, max_body)
        self._servers: list[asyncio.Server] = []

    async def start(self, host: str, port: int, sockets: Sequence[socket.socket] = ()) -> int:
        """Listen on host:port (or on `sockets`, bound and listening already); the port actually bound (useful with
        port 0)."""
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: HttpProtocol(self._state), sock=sock, backlog=2048))
        if not sockets:
            self._servers.append(
                await loop.create_server(
                    lambda: HttpProtocol(self._state), host, port, reuse_address=True, backlog=2048
                )
            )
        bound = self._servers[0].sockets
        return int(bound[0].getsockname()[1]) if bound else port

    def stop_accepting(self) -> None:
        """Close the listening socket; open connections go on being served."""
        for server in self._servers:
            server.close()

    async def close(self, timeout: float) -> None:
        """Close idle connections now and busy ones after their reply, waiting up to `timeout` seconds."""
        self.stop_accepting()
        self._state.closing = True
        for connection in list(self._state.connections):
            connection.close_when_idle()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._state.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
