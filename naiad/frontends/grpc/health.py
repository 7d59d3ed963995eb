"""`HealthService`: the standard `grpc.health.v1.Health` service, SERVING while the server (or the model named)
is ready."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from naiad.core.server import InferenceServer

Context = Any  # grpc.aio.ServicerContext; grpcio ships no type stubs

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService:
    """Check, List and Watch; Watch sends the status when the stream opens and again each time it changes, and
    ends once shutdown has begun (after sending NOT_SERVING)."""

    def __init__(self, server: InferenceServer, watch_interval: float = 1.0) -> None:
        self.server = server
        self.watch_interval = watch_interval
        self._exiting = asyncio.Event()
        self._watchers = 0
        self._no_watchers = asyncio.Event()
        self._no_watchers.set()

    def begin_exit(self) -> None:
        """Wake every Watch now, so that each sends NOT_SERVING and ends before the gRPC server stops."""
        self._exiting.set()

    async def watchers_done(self, timeout: float) -> None:
        """Wait (up to `timeout` seconds) until no Watch stream is open."""
        with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from 3.11 on
            await asyncio.wait_for(self._no_watchers.wait(), timeout)

    def status(self, service: str) -> int:
        """A model's name asks for that model's readiness; any other name, "" included, for the server's, as Triton
        answers (so probes written for Triton with any service name keep working)."""
        if service and self.server.has_model(service):
            ready = self.server.model_ready(service, "")
        else:
            ready = self.server.ready
        return _SERVING if ready else _NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def List(self, request: bytes, context: Context) -> dict[str, int]:
        names = ["", *(entry["name"] for entry in self.server.repository_index(ready_only=False))]
        return {name: self.status(name) for name in dict.fromkeys(names)}

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = -1
        # counted until the call is over on the wire (status sent), not merely until this generator returns: the
        # server must not stop while the last message and the status are still on their way
        self._watchers += 1
        self._no_watchers.clear()
        context.add_done_callback(self._watch_over)
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
                continue  # the status may have changed while the message was written: look again before ending
            if self.server.exiting or self._exiting.is_set():  # NOT_SERVING is written; end the stream
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exiting.wait(), self.watch_interval)

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's three methods. List's messages are encoded here: grpcio-health-checking has them only from
        1.85 on, which needs protobuf 7, and tritonclient pins protobuf below 7."""
        check = health_pb2.HealthCheckRequest.FromString
        reply = health_pb2.HealthCheckResponse.SerializeToString
        methods = {
            "Check": grpc.unary_unary_rpc_method_handler(self.Check, check, reply),
            "List": grpc.unary_unary_rpc_method_handler(self.List, bytes, encode_list_response),
            "Watch": grpc.unary_stream_rpc_method_handler(self.Watch, check, reply),
        }
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", methods)

    def _watch_over(self, call: Any) -> None:
        self._watchers -= 1
        if not self._watchers:
            self._no_watchers.set()


def encode_list_response(statuses: dict[str, int]) -> bytes:
    """`HealthListResponse{map<string, HealthCheckResponse> statuses = 1}` in protobuf's wire format: each entry is a
    length-delimited field 1 holding key (field 1) and value (field 2)."""
    encoded = bytearray()
    for name, status in statuses.items():
        value = health_pb2.HealthCheckResponse(status=status).SerializeToString()
        encoded += _delimited(1, _delimited(1, name.encode()) + _delimited(2, value))
    return bytes(encoded)


def _delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)
