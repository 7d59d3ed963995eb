"""`Http2Server`: the inference and health services on naiad's own HTTP/2 (`--grpc-stack=naiad`, the default), with
tritonserver's options: TLS, keep-alive and ping limits, connection age, response compression, port reuse."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb

from naiad.config.settings import GrpcSettings
from naiad.core.server import InferenceServer
from naiad.frontends.grpc.calls import Method
from naiad.frontends.grpc.dispatch import GrpcApplication
from naiad.frontends.grpc.health import HealthService, encode_list_response
from naiad.frontends.grpc.service import InferenceService
from naiad.frontends.grpc.tls import GrpcSetupError, ssl_context
from naiad.frontends.http2.connection import Connection
from naiad.frontends.http2.limits import ConnectionPolicy

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"


class Http2Server:
    """Starts, stops accepting (GOAWAY on every connection), and closes the gRPC service."""

    def __init__(self, methods: Mapping[str, Method], settings: GrpcSettings, health: HealthService | None) -> None:
        """`health` is the one among `methods`, if any: its watchers end first at shutdown."""
        self._settings = settings
        self._health = health
        self._app = GrpcApplication(methods, settings.compression_level, settings.restricted)
        self._policy = ConnectionPolicy(
            keepalive_time_ms=settings.keepalive_time_ms,
            keepalive_timeout_ms=settings.keepalive_timeout_ms,
            keepalive_permit_without_calls=settings.keepalive_permit_without_calls,
            min_recv_ping_interval_without_data_ms=settings.http2_min_recv_ping_interval_without_data_ms,
            max_ping_strikes=settings.http2_max_ping_strikes,
            max_connection_age_ms=settings.max_connection_age_ms,
            max_connection_age_grace_ms=settings.max_connection_age_grace_ms,
        )
        self._connections: set[Connection] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._listening: list[asyncio.Server] = []
        self._stopping: asyncio.Task[None] | None = None

    @classmethod
    def for_server(cls, server: InferenceServer, settings: GrpcSettings) -> Http2Server:
        """Both services over the server itself."""
        health = HealthService(server)
        return cls(service_methods(InferenceService(server), health), settings, health)

    async def start(self, port: int, sockets: Sequence[socket.socket] = ()) -> int:
        """Bind (or serve on `sockets`, bound and listening already) and start serving; the port bound (useful when
        `port` is 0)."""
        settings = self._settings
        context = ssl_context(settings) if settings.use_ssl else None
        loop = asyncio.get_running_loop()
        try:
            for sock in sockets:
                self._listening.append(await loop.create_server(self._connect, sock=sock, ssl=context, backlog=1024))
            if not sockets:
                server = await loop.create_server(
                    self._connect,
                    settings.address,
                    port,
                    ssl=context,
                    reuse_port=settings.reuse_port or None,
                    backlog=1024,
                )
                self._listening.append(server)
        except OSError as exc:
            raise GrpcSetupError(f"failed to bind {settings.address}:{port}: {exc.strerror or exc}") from None
        return int(self._listening[0].sockets[0].getsockname()[1])

    def stop_accepting(self, grace: float) -> None:
        """Refuse new calls from now on; calls in flight get up to `grace` seconds."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        for listening in self._listening:
            listening.close()
        # health watchers first: each writes NOT_SERVING and ends while the connection still sends (2 s at most)
        if self._health is not None:
            self._health.begin_exit()
            await self._health.watchers_done(timeout=min(grace, 2.0))
        for connection in list(self._connections):
            connection.shut_down()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    async def close(self, timeout: float) -> None:
        """Give calls still writing their answers up to `timeout` seconds, end what is left, and stop."""
        stopping = self._stopping
        if stopping is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), timeout)
        for listening in self._listening:
            listening.close()
        for connection in list(self._connections):
            connection.abort()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 1.0)
        if stopping is not None and not stopping.done():
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    def _connect(self) -> Connection:
        connection = Connection(self._app, self._policy, on_close=self._closed)
        self._connections.add(connection)
        self._idle.clear()
        return connection

    def _closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._idle.set()


def service_methods(service: InferenceService, health: HealthService) -> dict[str, Method]:
    """Every RPC of the two services by path, with its messages; ModelInfer runs without a task."""
    methods: dict[str, Method] = {}
    for descriptor in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request = getattr(pb, descriptor.input_type.name)
        if descriptor.name == "ModelInfer":
            kind, handler = "call", service.infer_into
        elif descriptor.client_streaming:
            kind, handler = "stream_stream", getattr(service, descriptor.name)
        else:
            kind, handler = "unary", getattr(service, descriptor.name)
        methods[f"/{INFERENCE_SERVICE}/{descriptor.name}"] = Method(kind, handler, request.FromString, _serialized)
    check = health_pb2.HealthCheckRequest.FromString
    methods[f"/{HEALTH_SERVICE}/Check"] = Method("unary", health.Check, check, _serialized)
    methods[f"/{HEALTH_SERVICE}/Watch"] = Method("unary_stream", health.Watch, check, _serialized)
    methods[f"/{HEALTH_SERVICE}/List"] = Method("unary", health.List, bytes, encode_list_response)
    return methods


def _serialized(message: Any) -> bytes:
    return bytes(message.SerializeToString())
