"""`Connection`: the server side of one HTTP/2 connection as an asyncio protocol: settings, flow control both ways,
pings, keep-alive and connection age, GOAWAY; each request reaches the `Application` as a `Stream`."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

from naiad.frontends.http2.frames import (
    ACK,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER_SIZE,
    MAX_WINDOW,
    PADDED,
    PREFACE,
    PRIORITY,
    ErrorCode,
    FrameType,
    ProtocolError,
    Setting,
    frame,
    goaway,
    rst_stream,
    settings_payload,
    window_update,
)
from naiad.frontends.http2.headers import Fields, HeaderDecoder
from naiad.frontends.http2.limits import (
    CONNECTION_WINDOW,
    LINGER_SECONDS,
    MAX_FRAME_SIZE,
    MAX_HEADER_BLOCK,
    MAX_QUEUED_CONTROL,
    MAX_STREAMS,
    RESETS_PER_SECOND,
    STREAM_WINDOW,
    ConnectionPolicy,
)
from naiad.frontends.http2.streams import Stream, StreamHandler

log = logging.getLogger("naiad.grpc")

_DATA = FrameType.DATA
_HEADERS = FrameType.HEADERS


class Application(Protocol):
    def stream_opened(self, stream: Stream, fields: Fields, end_stream: bool) -> StreamHandler: ...


class Connection(asyncio.Protocol):
    """Frames in, frames out. What is written while a read is handled goes out in one write at its end; what is
    written from elsewhere goes out once per loop iteration."""

    def __init__(
        self,
        application: Application,
        policy: ConnectionPolicy,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self._app = application
        self._policy = policy
        self._on_close = on_close
        self._loop = asyncio.get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = HeaderDecoder(4 * MAX_HEADER_BLOCK)  # in step whatever the size: limits are the app's
        self._streams: dict[int, Stream] = {}
        self._last_stream = 0
        self._continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._out: list[bytes] = []
        self._deferred: list[Callable[[], None]] = []  # run once the frames of a read are all taken
        self._queued_control = 0
        self._resets = 0.0  # a leaky bucket of the peer's resets
        self._resets_at = 0.0
        self._reading = False
        self._flush_scheduled = False
        self._paused = False
        self._blocked: dict[int, Stream] = {}  # streams with DATA waiting for a window or the socket
        self._credit_due: list[Stream] = []  # streams whose window is to be credited at the end of this read
        # flow control
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._received = 0
        # pings, keep-alive, age
        self._ping_ids = itertools.count(1)
        self._keepalive_ping: bytes | None = None
        self._ping_strikes = 0
        self._last_ping_received = float("-inf")  # the first ping is never early
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._going_away = False
        self._lingering: asyncio.TimerHandle | None = None
        self.closed = False  # no more reading or writing: GOAWAY is sent, or the peer is gone

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        settings = {
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            Setting.MAX_HEADER_LIST_SIZE: self._policy.max_header_list_size,
        }
        self._write(frame(FrameType.SETTINGS, 0, 0, settings_payload(settings)))
        self._write(window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW))
        self._flush()
        policy = self._policy
        self._arm("keepalive", policy.keepalive_time_ms, self._keepalive)
        if policy.max_connection_age_ms:
            self._arm("age", policy.max_connection_age_ms, self._too_old)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # read and dropped while the connection lingers
        self._reading = True
        try:
            self._read(data)
            deferred, self._deferred = self._deferred, []
            for start in deferred:
                start()
        except ProtocolError as fault:
            self._fail(fault.code, fault.reason)
        except Exception:  # a bug must cost this connection at most, never the loop
            log.exception("HTTP/2 connection failed")
            self._fail(ErrorCode.INTERNAL_ERROR, "internal error")
        finally:
            self._reading = False
        self._replenish()
        self._flush()

    def defer(self, start: Callable[[], None]) -> None:
        """Run `start` once every frame of the current read is taken: a stream the same read resets is then over
        before its work begins."""
        if self._reading:
            self._deferred.append(start)
        else:
            start()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._queued_control = 0
        for stream in list(self._blocked.values()):
            self.pump(stream)
        self._flush()

    def eof_received(self) -> bool:
        return False  # the peer's FIN: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
        self._close()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.local_closed = True
            stream._wake()
            if stream.handler is not None:
                stream.handler.stream_reset()
        if self._on_close is not None:
            self._on_close(self)

    # What the server asks of a connection

    def shut_down(self) -> None:
        """Graceful GOAWAY: streams already open run to their end, newer ones are refused; closed once idle."""
        if self._going_away or self.closed:
            return
        self._going_away = True
        self._write(goaway(self._last_stream, ErrorCode.NO_ERROR))
        self._flush()
        if not self._streams:
            self._close()

    def abort(self) -> None:
        """End now, whatever is still unsent: open streams are reset."""
        if not self.closed:
            self._write(goaway(self._last_stream, ErrorCode.NO_ERROR))
        self._close(hard=True)

    # Reading

    def _read(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        pos = 0
        if not self._preface_seen:
            if len(view) < len(PREFACE):
                if PREFACE.startswith(bytes(view)):
                    self._keep(view, 0)
                    return
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            if bytes(view[: len(PREFACE)]) != PREFACE:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface_seen = True
            pos = len(PREFACE)
        end = len(view)
        while end - pos >= FRAME_HEADER_SIZE and not self.closed:
            n = (view[pos] << 16) | (view[pos + 1] << 8) | view[pos + 2]
            if n > MAX_FRAME_SIZE:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {n} bytes")
            if end - pos < FRAME_HEADER_SIZE + n:
                break
            kind = view[pos + 3]
            flags = view[pos + 4]
            stream_id = int.from_bytes(view[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(view[pos + 9 : pos + 9 + n])
            pos += FRAME_HEADER_SIZE + n
            self._frame(kind, flags, stream_id, payload)
        self._keep(view, pos)

    def _keep(self, view: bytes | bytearray, pos: int) -> None:
        if view is self._buffer:
            del self._buffer[:pos]
        elif pos < len(view):
            self._buffer += view[pos:]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None and kind != FrameType.CONTINUATION:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == FrameType.CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == FrameType.SETTINGS:
            self._on_settings(flags, payload)
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == FrameType.PING:
            self._on_ping(flags, payload)
        elif kind == FrameType.RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == FrameType.GOAWAY:
            self._going_away = True
            if not self._streams:
                self._close()
        elif kind == FrameType.PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received > CONNECTION_WINDOW:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "data beyond the connection's window")
        if stream_id == 0 or stream_id > self._last_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # a stream we reset or finished: its last frames may still be on their way
        stream.received += len(payload)
        if stream.credit_on_receipt and stream.received >= STREAM_WINDOW // 2:
            self._credit_due.append(stream)
        if not stream.credit_on_receipt and stream.received - stream.consumed > STREAM_WINDOW:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, f"data beyond stream {stream_id}'s window")
        if flags & PADDED:
            payload = _unpadded(payload)
        end = bool(flags & END_STREAM)
        if end:
            stream.remote_closed = True
        assert stream.handler is not None
        stream.handler.data_received(payload, end)
        if end:
            self._maybe_forget(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & PADDED:
            payload = _unpadded(payload)
        if flags & PRIORITY:
            payload = payload[5:]
        if len(payload) > MAX_HEADER_BLOCK:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._continuing = (stream_id, flags, bytearray(payload))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without a header block")
        block = self._continuing[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            first_flags = self._continuing[1]
            self._continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        fields = self._decoder.decode(block)  # always, to keep the decoding context in step
        end = bool(flags & END_STREAM)
        known = self._streams.get(stream_id)
        if known is not None:  # trailers from the client end its half
            if not known.remote_closed:
                known.remote_closed = True
                assert known.handler is not None
                known.handler.data_received(b"", True)
                self._maybe_forget(known)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream:
            if stream_id <= self._last_stream and stream_id % 2:
                return  # a stream already over
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"bad stream id {stream_id}")
        if self._going_away or len(self._streams) >= MAX_STREAMS:
            self._control(rst_stream(stream_id, ErrorCode.REFUSED_STREAM))
            return
        self._last_stream = stream_id
        stream = Stream(self, stream_id, self._peer_stream_window)
        stream.remote_closed = end
        self._streams[stream_id] = stream
        stream.handler = self._app.stream_opened(stream, fields, end)

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a length not a multiple of 6")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._peer_stream_window
                self._peer_stream_window = value
                for stream in self._streams.values():
                    stream.window += delta
                    if stream.window > MAX_WINDOW:
                        raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window beyond 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= 2**24 - 1:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
        self._control(frame(FrameType.SETTINGS, ACK, 0))
        for stream in list(self._blocked.values()):
            self.pump(stream)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a length other than 4")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if increment == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window beyond 2^31-1")
            for blocked in list(self._blocked.values()):
                self.pump(blocked)
            return
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.window += increment
            if stream.window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, f"stream {stream_id}'s window beyond 2^31-1")
            self.pump(stream)

    def _on_ping(self, flags: int, payload: bytes) -> None:
        if len(payload) != 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING of a length other than 8")
        if flags & ACK:
            if payload == self._keepalive_ping:
                self._keepalive_ping = None
                self._disarm("keepalive-timeout")
            return
        self._control(frame(FrameType.PING, ACK, 0, payload))
        # grpc's ping policing: pings closer together than allowed, with no data sent by us in between, are
        # strikes; past the limit the connection ends with ENHANCE_YOUR_CALM, as grpc servers do
        policy = self._policy
        now = self._loop.time()
        if self._streams or policy.keepalive_permit_without_calls:
            interval = policy.min_recv_ping_interval_without_data_ms / 1000
        else:
            interval = 7200.0
        early = now < self._last_ping_received + interval
        self._last_ping_received = now
        if early:
            self._ping_strikes += 1
            if policy.max_ping_strikes and self._ping_strikes > policy.max_ping_strikes:
                self._write(goaway(self._last_stream, ErrorCode.ENHANCE_YOUR_CALM, b"too_many_pings"))
                self._close()

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a length other than 4")
        if stream_id == 0 or stream_id > self._last_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        now = self._loop.time()
        self._resets = max(0.0, self._resets - (now - self._resets_at) * RESETS_PER_SECOND) + 1
        self._resets_at = now
        if self._resets > RESETS_PER_SECOND:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "too many streams reset")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._blocked.pop(stream_id, None)
        stream.local_closed = stream.remote_closed = True
        stream._wake()
        if stream.handler is not None:
            stream.handler.stream_reset()
        self._after_stream()

    # Writing

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self._out.append(data)
        if not self._reading and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _control(self, data: bytes) -> None:
        """A reply the peer's own frames call for; a peer that sends them without reading ours is cut off."""
        if self._paused:
            self._queued_control += 1
            if self._queued_control > MAX_QUEUED_CONTROL:
                raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "too many control frames unread")
        self._write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self.closed:
            out, self._out = self._out, []
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._write(frame(_HEADERS, flags, stream.id, block))
        else:
            self._write(frame(_HEADERS, flags & ~END_HEADERS, stream.id, block[:limit]))
            for at in range(limit, len(block), limit):
                last = at + limit >= len(block)
                piece = block[at : at + limit]
                self._write(frame(FrameType.CONTINUATION, END_HEADERS if last else 0, stream.id, piece))
        self._sent_data()

    def pump(self, stream: Stream) -> None:
        """Send what the windows and the socket allow of the stream's queued DATA."""
        while stream._pending:
            room = min(stream.window, self._send_window, self._peer_max_frame)
            if self._paused or self.closed or (room <= 0 and len(stream._pending[0][0]) > 0):
                self._blocked[stream.id] = stream
                return
            taken = stream._take(max(room, 0))
            assert taken is not None
            chunk, end = taken
            stream.window -= len(chunk)
            self._send_window -= len(chunk)
            self._write(frame(_DATA, END_STREAM if end else 0, stream.id, chunk))
            self._sent_data()
            if end:
                self._blocked.pop(stream.id, None)
                stream._pending.clear()
                stream._close_local()
                return
        self._blocked.pop(stream.id, None)
        stream._sent_all()

    def _sent_data(self) -> None:
        self._ping_strikes = 0
        self._last_ping_received = float("-inf")  # as grpc: sending data forgives earlier pings

    def _replenish(self) -> None:
        if self._received >= CONNECTION_WINDOW // 2:
            self._write(window_update(0, self._received))
            self._received = 0
        due, self._credit_due = self._credit_due, []
        for stream in due:
            if stream.received and not stream.remote_closed:
                self._write(window_update(stream.id, stream.received))
                stream.received = 0

    def credit(self, stream: Stream) -> None:
        """Give back what the application consumed of a stream credited on consumption."""
        if stream.consumed >= STREAM_WINDOW // 2 and not stream.remote_closed:
            self._write(window_update(stream.id, stream.consumed))
            stream.received -= stream.consumed
            stream.consumed = 0

    # Stream ends

    def reset(self, stream: Stream, code: ErrorCode) -> None:
        self._write(rst_stream(stream.id, code))

    def unblock(self, stream: Stream) -> None:
        self._blocked.pop(stream.id, None)

    def stream_done(self, stream: Stream, reset: bool) -> None:
        if not reset and not stream.remote_closed and stream.id in self._streams:
            # the answer is complete while the client still sends: as grpc servers do, tell it to stop
            self._write(rst_stream(stream.id, ErrorCode.NO_ERROR))
            reset = True
        if reset:
            stream.remote_closed = True
        self._maybe_forget(stream)

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed and self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
            self._blocked.pop(stream.id, None)
            self._after_stream()

    def _after_stream(self) -> None:
        if self._going_away and not self._streams:
            self._flush()
            self._close()

    # Timers

    def _arm(self, name: str, ms: int, callback: Callable[[], None]) -> None:
        self._disarm(name)
        if ms > 0 and not self.closed:
            self._timers[name] = self._loop.call_later(ms / 1000, callback)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _keepalive(self) -> None:
        policy = self._policy
        self._arm("keepalive", policy.keepalive_time_ms, self._keepalive)
        if self._keepalive_ping is not None or not (self._streams or policy.keepalive_permit_without_calls):
            return
        self._keepalive_ping = next(self._ping_ids).to_bytes(8, "big")
        self._write(frame(FrameType.PING, 0, 0, self._keepalive_ping))
        self._arm("keepalive-timeout", policy.keepalive_timeout_ms, self._unanswered)

    def _too_old(self) -> None:
        self.shut_down()
        grace = self._policy.max_connection_age_grace_ms
        if grace and not self.closed:
            self._arm("age-grace", grace, self.abort)

    # Ending

    def _fail(self, code: ErrorCode, reason: str) -> None:
        self._write(goaway(self._last_stream, code, reason.encode()[:200]))
        self._close()

    def _unanswered(self) -> None:
        """The keep-alive ping had no answer in time: the peer is gone (or stuck), so nothing waits for it."""
        self._close(hard=True)

    def _close(self, hard: bool = False) -> None:
        """Close after what is written (or at once, `hard`); reading stops here."""
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        transport = self._transport
        if transport is None:
            return
        if self._out and not transport.is_closing():
            out, self._out = self._out, []
            transport.write(b"".join(out))
        if hard:
            transport.abort()
        elif self._lingering is None and not transport.is_closing():
            if transport.can_write_eof():
                # FIN after what is written, then wait for the peer's own close while reading what it still sends:
                # closing with unread bytes in the socket would send an RST, and the peer would lose the end of
                # the answers still on their way to it
                transport.write_eof()
                self._lingering = self._loop.call_later(LINGER_SECONDS, transport.abort)
            else:
                transport.close()  # TLS: close_notify, then the close


def _unpadded(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - payload[0]]
