"""`Stream`: one request and its response on an HTTP/2 connection, with the DATA it still has to send, and the
`StreamHandler` that the application gives each stream."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from naiad.frontends.http2.frames import ErrorCode


class StreamHandler(Protocol):
    """What the application does with one stream's request."""

    def data_received(self, data: bytes, end_stream: bool) -> None: ...

    def stream_reset(self) -> None:
        """The peer reset the stream, or the connection ended, before the response was complete."""


class StreamOwner(Protocol):
    """What a stream needs of its connection (the connection is the one owner)."""

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool) -> None: ...

    def pump(self, stream: Stream) -> None: ...

    def reset(self, stream: Stream, code: ErrorCode) -> None: ...

    def credit(self, stream: Stream) -> None: ...

    def unblock(self, stream: Stream) -> None: ...

    def stream_done(self, stream: Stream, reset: bool) -> None: ...

    def defer(self, start: Callable[[], None]) -> None: ...


class Stream:
    """One request and its response. Writes are queued in order; DATA waits for the peer's flow-control windows."""

    __slots__ = (
        "_pending",
        "_trailers",
        "_waiters",
        "connection",
        "consumed",
        "credit_on_receipt",
        "handler",
        "id",
        "local_closed",
        "received",
        "remote_closed",
        "window",
    )

    def __init__(self, connection: StreamOwner, stream_id: int, window: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.handler: StreamHandler | None = None
        self.window = window  # what we may still send
        self.received = 0  # bytes taken since our last WINDOW_UPDATE for it
        # A stream's window is credited back as its DATA arrives (a unary call: its one message is bounded by the
        # size limit), or only as the application reports it consumed (a stream of messages: what it has not read
        # yet then bounds what the peer may send).
        self.credit_on_receipt = True
        self.consumed = 0  # bytes the application consumed since our last WINDOW_UPDATE
        self.remote_closed = False
        self.local_closed = False
        self._pending: deque[tuple[memoryview, bool]] = deque()
        self._trailers: bytes | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def buffered(self) -> int:
        """Bytes of DATA written but not yet sent (waiting for a window or the socket)."""
        return sum(len(chunk) for chunk, _ in self._pending)

    def send_headers(self, block: bytes, end_stream: bool = False) -> None:
        if self.local_closed:
            return
        self.connection.send_headers(self, block, end_stream)
        if end_stream:
            self._close_local()

    def send_data(self, data: bytes | memoryview, end_stream: bool = False) -> None:
        if self.local_closed:
            return
        self._pending.append((memoryview(data), end_stream))
        self.connection.pump(self)

    def send_trailers(self, block: bytes) -> None:
        """The trailing header block, which ends the stream once every DATA before it is sent."""
        if self.local_closed:
            return
        if self._pending:
            self._trailers = block
        else:
            self.send_headers(block, end_stream=True)

    def reset(self, code: ErrorCode = ErrorCode.CANCEL) -> None:
        if self.local_closed:
            return
        self._pending.clear()
        self._trailers = None
        self.connection.reset(self, code)
        self._close_local(reset=True)

    def consume(self, size: int) -> None:
        """The application is done with `size` bytes of this stream's DATA (when not credited on receipt)."""
        self.consumed += size
        self.connection.credit(self)

    def drop_unsent(self) -> None:
        """Forget the DATA still waiting for a window (the call ended without it: its deadline passed)."""
        self._pending.clear()
        self.connection.unblock(self)

    async def drained(self) -> None:
        """Wait until every DATA written is sent (or the stream ended)."""
        if not self._pending or self.local_closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _take(self, limit: int) -> tuple[memoryview, bool] | None:
        """The next DATA frame's payload of at most `limit` bytes, and whether it ends the stream."""
        chunk, end = self._pending[0]
        if len(chunk) <= limit:
            self._pending.popleft()
            return chunk, end
        self._pending[0] = (chunk[limit:], end)
        return chunk[:limit], False

    def _sent_all(self) -> None:
        if self._trailers is not None:
            block, self._trailers = self._trailers, None
            self.send_headers(block, end_stream=True)
        self._wake()

    def _close_local(self, reset: bool = False) -> None:
        self.local_closed = True
        self._wake()
        self.connection.stream_done(self, reset)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
