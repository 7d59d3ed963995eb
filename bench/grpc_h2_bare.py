"""A bare unary gRPC server on a lean HTTP/2 layer written for it (asyncio protocol on uvloop, hpack for headers),
doing only add_sub's arithmetic: the prototype of "another stack" measured against the bare grpc.aio servicer.

Usage: grpc_h2_bare.py PORT
"""

from __future__ import annotations

import asyncio
import struct
import sys

import hpack
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
BIG_WINDOW = 2**31 - 1
FRAME = struct.Struct(">I B B I")  # length (24 bits, packed with type below), type, flags, stream id


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags)) + stream.to_bytes(4, "big") + payload


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman (both lengths under 127)."""
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


# :status 200 (static index 8), content-type: application/grpc (literal, name index 31 = 0x0f 0x10)
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes((16,)) + b"application/grpc"
OK_TRAILERS = literal(b"grpc-status", b"0")

CFG = mc.ModelConfig(
    name="add_sub",
    backend="python",
    max_batch_size=64,
    input=[
        mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[16]),
        mc.ModelInput(name="INPUT1", data_type=mc.TYPE_FP32, dims=[16]),
    ],
    output=[
        mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[16]),
        mc.ModelOutput(name="OUTPUT1", data_type=mc.TYPE_FP32, dims=[16]),
    ],
)
T = pb.ModelMetadataResponse.TensorMetadata
METADATA = pb.ModelMetadataResponse(
    name="add_sub",
    versions=["1"],
    platform="python",
    inputs=[T(name="INPUT0", datatype="FP32", shape=[-1, 16]), T(name="INPUT1", datatype="FP32", shape=[-1, 16])],
    outputs=[T(name="OUTPUT0", datatype="FP32", shape=[-1, 16]), T(name="OUTPUT1", datatype="FP32", shape=[-1, 16])],
)


def model_infer(body: bytes) -> bytes:
    r = pb.ModelInferRequest.FromString(body)
    a = np.frombuffer(r.raw_input_contents[0], dtype=np.float32)
    b = np.frombuffer(r.raw_input_contents[1], dtype=np.float32)
    shape = list(r.inputs[0].shape)
    resp = pb.ModelInferResponse(model_name="add_sub", model_version="1", id=r.id)
    for n in ("OUTPUT0", "OUTPUT1"):
        o = resp.outputs.add()
        o.name = n
        o.datatype = "FP32"
        o.shape.extend(shape)
    resp.raw_output_contents.extend([(a + b).tobytes(), (a - b).tobytes()])
    return resp.SerializeToString()


CONSTANT = {
    "ServerLive": pb.ServerLiveResponse(live=True).SerializeToString(),
    "ServerReady": pb.ServerReadyResponse(ready=True).SerializeToString(),
    "ModelReady": pb.ModelReadyResponse(ready=True).SerializeToString(),
    "ServerMetadata": pb.ServerMetadataResponse(name="x", version="1", extensions=[]).SerializeToString(),
    "ModelMetadata": METADATA.SerializeToString(),
    "ModelConfig": pb.ModelConfigResponse(config=CFG).SerializeToString(),
    "ModelStatistics": pb.ModelStatisticsResponse().SerializeToString(),
}


class HeaderBlocks:
    """HPACK decoding with a cache: a block that leaves the dynamic table alone decodes the same way next time."""

    def __init__(self) -> None:
        self.decoder = hpack.Decoder()
        self.epoch = 0
        self.cache: dict[tuple[int, bytes], dict[bytes, bytes]] = {}

    def decode(self, block: bytes) -> dict[bytes, bytes]:
        key = (self.epoch, block)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        table = self.decoder.header_table
        before = (table.maxsize, tuple(table.dynamic_entries))
        fields = dict(self.decoder.decode(block, raw=True))
        if (table.maxsize, tuple(table.dynamic_entries)) != before:
            self.epoch += 1
            self.cache.clear()
        elif len(self.cache) < 256:
            self.cache[(self.epoch, block)] = fields
        return fields


class Stream:
    __slots__ = ("body", "headers", "method")

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        self.headers = headers
        path = headers.get(b":path", b"")
        self.method = path.rsplit(b"/", 1)[-1].decode()
        self.body = bytearray()


class Connection(asyncio.Protocol):
    """One HTTP/2 connection: frames in, gRPC unary calls answered inline."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.preface = False
        self.blocks = HeaderBlocks()
        self.streams: dict[int, Stream] = {}
        self.pending_headers: tuple[int, int, bytearray] | None = None
        self.received = 0  # connection-level bytes since our last WINDOW_UPDATE
        self.send_window = 65535
        self.peer_initial_window = 65535
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HI", 0x4, BIG_WINDOW) + struct.pack(">HI", 0x3, 1024)
        transport.write(
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, (BIG_WINDOW - 65535).to_bytes(4, "big"))
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.preface:
            if len(buf) < 24:
                return
            if bytes(buf[:24]) != PREFACE:
                self.transport.close()
                return
            del buf[:24]
            self.preface = True
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            n = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if end - pos < 9 + n:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + n])
            pos += 9 + n
            self.on_frame(kind, flags, sid, payload, out)
        del buf[:pos]
        if self.received > BIG_WINDOW // 2:
            out.append(frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
            self.received = 0
        if out:
            self.transport.write(b"".join(out))

    def on_frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[bytes]) -> None:
        if kind == DATA:
            self.received += len(payload)
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            stream = self.streams.get(sid)
            if stream is None:
                return
            stream.body += payload
            if flags & END_STREAM:
                self.finish(sid, stream, out)
        elif kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self.on_headers(sid, flags, payload, out)
            else:
                self.pending_headers = (sid, flags, bytearray(payload))
        elif kind == CONTINUATION:
            assert self.pending_headers is not None
            psid, pflags, block = self.pending_headers
            block += payload
            if flags & END_HEADERS:
                self.pending_headers = None
                self.on_headers(psid, pflags, bytes(block), out)
        elif kind == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(payload), 6):
                    ident, value = struct.unpack_from(">HI", payload, i)
                    if ident == 0x4:
                        self.peer_initial_window = value
                out.append(frame(SETTINGS, ACK, 0, b""))
        elif kind == PING:
            if not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if sid == 0:
                self.send_window += int.from_bytes(payload, "big") & 0x7FFFFFFF
        elif kind == RST_STREAM:
            self.streams.pop(sid, None)
        elif kind == GOAWAY:
            self.transport.close()

    def on_headers(self, sid: int, flags: int, block: bytes, out: list[bytes]) -> None:
        fields = self.blocks.decode(block)
        stream = self.streams.get(sid)
        if stream is None:
            stream = self.streams[sid] = Stream(fields)
        if flags & END_STREAM:
            self.finish(sid, stream, out)

    def finish(self, sid: int, stream: Stream, out: list[bytes]) -> None:
        del self.streams[sid]
        body = bytes(stream.body[5:])
        method = stream.method
        answer = model_infer(body) if method == "ModelInfer" else CONSTANT.get(method)
        if answer is None:
            out.append(frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS))
            out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, literal(b"grpc-status", b"12")))
            return
        message = b"\x00" + len(answer).to_bytes(4, "big") + answer
        self.send_window -= len(message)  # tiny answers: the prototype does not queue on the window
        out.append(frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS))
        out.append(frame(DATA, 0, sid, message))
        out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, OK_TRAILERS))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
