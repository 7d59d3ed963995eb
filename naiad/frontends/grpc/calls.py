"""gRPC calls on HTTP/2 streams: metadata, deadlines, length-prefixed and compressed messages, the handler's run, and
the status that ends each call."""

from __future__ import annotations

import asyncio
import gzip
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc

from naiad.frontends.http2 import headers
from naiad.frontends.http2.streams import Stream

OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
RESOURCE_EXHAUSTED = 8

log = logging.getLogger("naiad.grpc")
MAX_MESSAGE_SIZE = 2**31 - 1  # Triton takes messages up to 2 GiB both ways
ACCEPTED = (b"grpc-accept-encoding", b"identity,deflate,gzip")
RESPONSE_HEADERS = headers.encode([(b":status", b"200"), (b"content-type", b"application/grpc"), ACCEPTED])
OK_TRAILERS = headers.encode([(b"grpc-status", b"0")])
OK_ONLY = headers.encode([(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"0")])
TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}  # zlib's framing of each grpc-encoding
COMPRESSION_LEVEL = -1  # zlib's default, as grpc compresses
COMPRESS: dict[bytes, Callable[[bytes, int], bytes]] = {
    b"gzip": lambda data, level: gzip.compress(data, level),
    b"deflate": lambda data, level: zlib.compress(data, level),
}


class CallError(Exception):
    """Ends a call with a status other than OK."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: how its messages are read and written, and which of the handler shapes it has.

    kind: "unary" (`async handler(request, context) -> response`), "unary_stream" (an async generator of
    responses), "stream_stream" (an async iterator of requests in, an async generator out), or "call" (a plain
    `handler(request, call)` that ends the call itself: the inference fast path, no task per call)."""

    kind: str
    handler: Callable[..., Any]
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]


class CallState(Protocol):
    """What a context reads of its call."""

    metadata: list[tuple[bytes, bytes]]
    done_callbacks: list[Callable[[Any], None]]


class CallContext:
    """What handlers written for `grpc.aio.ServicerContext` use of it."""

    __slots__ = ("_call",)

    def __init__(self, call: CallState) -> None:
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise CallError(code.value[0], details)

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Decoded when asked for: no handler of naiad's reads it, so no call pays for it."""
        return tuple(
            (name.decode("latin-1"), value if name.endswith(b"-bin") else value.decode("latin-1"))
            for name, value in self._call.metadata
        )

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._call.done_callbacks.append(callback)


class Call:
    """One call: reads its messages from the stream, runs the method's handler, writes its answer and status."""

    __slots__ = (
        "_buffer",
        "_encoding",
        "_messages",
        "_queue",
        "_response_encoding",
        "_started",
        "_task",
        "_timer",
        "done_callbacks",
        "metadata",
        "method",
        "over",
        "stream",
    )

    def __init__(
        self,
        stream: Stream,
        method: Method,
        metadata: list[tuple[bytes, bytes]],
        encoding: bytes,
        response_encoding: bytes,
        timeout: float | None,
    ) -> None:
        self.stream = stream
        self.method = method
        self.metadata = metadata
        self._encoding = encoding
        self._response_encoding = response_encoding
        self._buffer = bytearray()
        self._messages: list[Any] = []
        self._queue: asyncio.Queue[Any] | None = None
        self._started = False  # response headers sent
        self._task: asyncio.Task[None] | None = None
        self.done_callbacks: list[Callable[[Any], None]] = []
        self.over = False
        self._timer: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._deadline_passed)
        if method.kind == "stream_stream":
            self._queue = asyncio.Queue()
            stream.credit_on_receipt = False  # what the handler has not read yet bounds what the peer may send
            self._run(self._streamed(method.handler(self._requests(), CallContext(self))))

    # Reading (StreamHandler)

    def data_received(self, data: bytes, end_stream: bool) -> None:
        if self.over:
            return
        try:
            self._split(data)
        except CallError as exc:
            self.fail(exc.code, exc.message)
            return
        if self._queue is not None:
            for message in self._messages:
                self._queue.put_nowait(message)
            self._messages.clear()
            if end_stream:
                self._queue.put_nowait(_END)
            return
        if len(self._messages) > 1:  # as grpc: at once, not after reading (and keeping) the rest
            self.fail(INTERNAL, "Received more than one request message for a unary call")
        elif end_stream:
            if self._buffer:
                self.fail(INTERNAL, "Incomplete message at the end of the stream")
            elif not self._messages:
                self.fail(UNIMPLEMENTED, "No request message received")
            else:
                self.stream.connection.defer(self._start)

    def stream_reset(self) -> None:
        if not self.over:
            self._end()

    def _start(self) -> None:
        if not self.over:  # not reset by the read that brought its message
            self._dispatch(self._messages.pop()[0])

    def _split(self, data: bytes) -> None:
        """Length-prefixed messages out of the DATA received; a partial one waits in the buffer."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        pos, end = 0, len(view)
        method = self.method
        while end - pos >= 5:
            size = int.from_bytes(view[pos + 1 : pos + 5], "big")
            if size > MAX_MESSAGE_SIZE:
                raise CallError(RESOURCE_EXHAUSTED, f"Received message larger than max ({size} vs. {MAX_MESSAGE_SIZE})")
            if end - pos < 5 + size:
                break
            payload = bytes(view[pos + 5 : pos + 5 + size])
            if view[pos]:
                payload = self._decompress(payload)
            pos += 5 + size
            try:
                self._messages.append((method.decode(payload), 5 + size))
            except Exception:  # protobuf's DecodeError and friends
                raise CallError(INTERNAL, "Unable to parse request") from None  # Triton's words
        if view is buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += view[pos:]

    def _decompress(self, payload: bytes) -> bytes:
        wbits = WBITS.get(self._encoding)
        if wbits is None:
            encoding = self._encoding.decode("latin-1")
            raise CallError(INTERNAL, f"Unexpected compressed message (grpc-encoding '{encoding}')")
        inflater = zlib.decompressobj(wbits)
        try:
            message = inflater.decompress(payload, MAX_MESSAGE_SIZE + 1)
        except zlib.error as exc:
            raise CallError(INTERNAL, f"Failed to decompress the message: {exc}") from None
        if len(message) > MAX_MESSAGE_SIZE or inflater.unconsumed_tail:
            raise CallError(RESOURCE_EXHAUSTED, f"Received message larger than max (more than {MAX_MESSAGE_SIZE})")
        return message

    async def _requests(self) -> AsyncIterator[Any]:
        assert self._queue is not None
        while (item := await self._queue.get()) is not _END:
            message, size = item
            self.stream.consume(size)  # the peer may send more once the handler took this
            yield message

    # Running

    def _dispatch(self, request: Any) -> None:
        method = self.method
        kind = method.kind
        if kind == "call":
            try:
                method.handler(request, self)
            except CallError as exc:
                self.fail(exc.code, exc.message)
            except Exception as exc:
                log.exception("gRPC call failed")
                self.fail(UNKNOWN, f"Unexpected error in the handler: {exc!r}")
        elif kind == "unary":
            self._run(self._unary(request))
        else:
            self._run(self._streamed(method.handler(request, CallContext(self))))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._task = asyncio.get_running_loop().create_task(self._running(work))
        _running.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(_running.discard)

    async def _running(self, work: Coroutine[Any, Any, None]) -> None:
        """The handler's run, ended with OK, its own status, or UNKNOWN for what it let escape."""
        try:
            await work
        except CallError as exc:
            self.fail(exc.code, exc.message)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.exception("gRPC call failed")
            self.fail(UNKNOWN, f"Unexpected error in the handler: {exc!r}")
        else:
            self.finish()

    async def _unary(self, request: Any) -> None:
        self.send(self.method.encode(await self.method.handler(request, CallContext(self))))

    async def _streamed(self, responses: AsyncIterator[Any]) -> None:
        encode = self.method.encode
        async for response in responses:
            if self.over:
                break
            self.send(encode(response))
            if self.stream.buffered > 1 << 20:
                await self.stream.drained()

    # Writing

    def send(self, message: bytes) -> None:
        """One response message (the response headers go first)."""
        if self.over:
            return
        stream = self.stream
        if not self._started:
            self._started = True
            if self._response_encoding:
                block = headers.encode(
                    [
                        (b":status", b"200"),
                        (b"content-type", b"application/grpc"),
                        (b"grpc-encoding", self._response_encoding),
                        ACCEPTED,
                    ]
                )
                stream.send_headers(block)
            else:
                stream.send_headers(RESPONSE_HEADERS)
        flag = b"\x00"
        if self._response_encoding:
            packed = COMPRESS[self._response_encoding](message, COMPRESSION_LEVEL)
            if len(packed) < len(message):
                message, flag = packed, b"\x01"
        stream.send_data(flag + len(message).to_bytes(4, "big") + message)

    def answer(self, message: bytes) -> None:
        """A unary call's response and status OK."""
        self.send(message)
        self.finish()

    def finish(self) -> None:
        """Status OK (trailers only, when no message was sent: a stream that answered nothing)."""
        if self.over:
            return
        if self._started:
            self.stream.send_trailers(OK_TRAILERS)
        else:
            self.stream.send_headers(OK_ONLY, end_stream=True)
        self._end()

    def fail(self, code: int, message: str) -> None:
        """End the call with `code` and `message` (trailers only, when nothing was sent yet)."""
        if self.over:
            return
        status = [(b"grpc-status", str(code).encode())]
        if message:
            status.append((b"grpc-message", _percent_encoded(message)))
        if self._started:
            self.stream.send_trailers(headers.encode(status))
        else:
            block = headers.encode([(b":status", b"200"), (b"content-type", b"application/grpc"), *status])
            self.stream.send_headers(block, end_stream=True)
        self._end()

    def _deadline_passed(self) -> None:
        self._timer = None
        if not self.over:
            self.stream.drop_unsent()  # the status must not wait behind data the peer no longer reads
            self.fail(DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _end(self) -> None:
        self.over = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # the handler's answer can no longer be sent: stop its work
        callbacks, self.done_callbacks = self.done_callbacks, []
        for callback in callbacks:
            callback(self)


class Refused:
    """A stream answered before its messages arrived (an unknown method, a restricted API): the rest is ignored."""

    def data_received(self, data: bytes, end_stream: bool) -> None:
        pass

    def stream_reset(self) -> None:
        pass


def refuse(stream: Stream, code: int, message: str) -> Refused:
    """Answer a stream with a status and nothing else."""
    block = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", str(code).encode())]
    if message:
        block.append((b"grpc-message", _percent_encoded(message)))
    stream.send_headers(headers.encode(block), end_stream=True)
    return Refused()


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout ("100m", "5S"): seconds, or None when it cannot be read (then the call has no deadline)."""
    unit = TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


_END = object()
_running: set[asyncio.Task[None]] = set()
_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _percent_encoded(message: str) -> bytes:
    """grpc-message: printable ASCII but '%' as it is, every other byte of the UTF-8 as %XX."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if byte in _SAFE:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
