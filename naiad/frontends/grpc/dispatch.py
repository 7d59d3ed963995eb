"""`GrpcApplication`: what each new HTTP/2 stream is: a call of a known method (with its metadata, deadline and
compression), a call refused by `--grpc-restricted-protocol`, or not a gRPC request at all."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from naiad.config.restrictions import GRPC_HEADER_PREFIX, Restrictions
from naiad.frontends.grpc.calls import (
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    WBITS,
    Call,
    Method,
    Refused,
    parse_timeout,
    refuse,
)
from naiad.frontends.grpc.restrictions import rpc_categories
from naiad.frontends.http2.frames import ErrorCode
from naiad.frontends.http2.headers import Fields
from naiad.frontends.http2.streams import Stream, StreamHandler

# grpc core's response compression for each level, among the algorithms the client accepts: from least to most
# compression, "low" takes the first, "medium" the middle one, "high" the last.
RANKED_ALGORITHMS = (b"gzip", b"deflate")
PICK: dict[str, Callable[[int], int]] = {"low": lambda n: 0, "medium": lambda n: n // 2, "high": lambda n: n - 1}
MAX_METADATA_SIZE = 64 * 1024  # a request's headers, counted as HTTP/2 does (grpc's own hard limit is 16 KiB)
# Headers that are HTTP/2 or gRPC's own, not the call's metadata.
_RESERVED = frozenset(
    (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"user-agent", b"host")
)


class GrpcApplication:
    """Routes streams to methods by `:path`."""

    def __init__(self, methods: Mapping[str, Method], compression_level: str, restricted: Restrictions) -> None:
        self._methods = {path.encode(): method for path, method in methods.items()}
        self._level = compression_level
        self._encodings: dict[bytes, bytes] = {}  # grpc-accept-encoding -> the response's grpc-encoding
        self._restricted = {
            category: ((GRPC_HEADER_PREFIX + r.key).encode(), r.value.encode()) for category, r in restricted.items()
        }

    def stream_opened(self, stream: Stream, fields: Fields, end_stream: bool) -> StreamHandler:
        path = b""
        content_type = b""
        timeout = encoding = accept = b""
        metadata: list[tuple[bytes, bytes]] = []
        size = 0
        for name, value in fields:
            size += len(name) + len(value) + 32  # as HTTP/2 counts a header list
            if name[:1] == b":":
                if name == b":path":
                    path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-accept-encoding":
                accept = value
            elif name not in _RESERVED:
                metadata.append((name, value))
        if size > MAX_METADATA_SIZE:
            return refuse(
                stream,
                RESOURCE_EXHAUSTED,
                f"received metadata size exceeds hard limit ({size} vs. {MAX_METADATA_SIZE})",
            )
        if not content_type.startswith(b"application/grpc"):
            stream.reset(ErrorCode.INTERNAL_ERROR)  # as grpc's C++ servers (Triton) answer what is not gRPC
            return Refused()
        method = self._methods.get(path)
        if method is None:
            return refuse(stream, UNIMPLEMENTED, "")  # Triton's status, with no message
        if self._restricted:
            refused = self._check_restrictions(stream, path, metadata)
            if refused is not None:
                return refused
        if encoding not in (b"", b"identity") and encoding not in WBITS:
            algorithm = encoding.decode("latin-1")
            return refuse(stream, UNIMPLEMENTED, f"Compression algorithm '{algorithm}' is not supported")
        call = Call(
            stream,
            method,
            metadata,
            encoding,
            self._response_encoding(accept),
            parse_timeout(timeout) if timeout else None,
        )
        if end_stream:  # a request of headers alone: no message
            call.data_received(b"", True)
        return call

    def _response_encoding(self, accept: bytes) -> bytes:
        if self._level == "none":
            return b""
        found = self._encodings.get(accept)
        if found is None:
            offered = {item.strip() for item in accept.split(b",")}
            usable = [algorithm for algorithm in RANKED_ALGORITHMS if algorithm in offered]
            found = usable[PICK[self._level](len(usable))] if usable else b""
            if len(self._encodings) < 64:
                self._encodings[accept] = found
        return found

    def _check_restrictions(self, stream: Stream, path: bytes, metadata: list[tuple[bytes, bytes]]) -> Refused | None:
        for category in rpc_categories(path.decode()):
            needed = self._restricted.get(category)
            if needed is not None and needed not in metadata:
                header = needed[0].decode()
                return refuse(stream, UNAVAILABLE, f"This protocol is restricted, expecting header '{header}'")
        return None
