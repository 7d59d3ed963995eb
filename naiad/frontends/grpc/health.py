"""`HealthService`: the standard `grpc.health.v1.Health` service, SERVING while the server is ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from naiad.core.server import InferenceServer

Context = Any  # grpc.aio.ServicerContext; grpcio ships no type stubs

# The names a client may check: the whole server, or its inference service.
SERVER_NAMES = frozenset({"", "inference.GRPCInferenceService"})
_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN_SERVICE = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """Check, List and Watch; Watch sends the status when the stream opens and again each time it changes."""

    def __init__(self, server: InferenceServer, watch_interval: float = 1.0) -> None:
        self.server = server
        self.watch_interval = watch_interval

    def status(self, service: str) -> int | None:
        """The status of `service`, or None when naiad has no service of that name."""
        if service in SERVER_NAMES:
            return _SERVING if self.server.ready else _NOT_SERVING
        return None

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest, context: Context) -> health_pb2.HealthListResponse:
        statuses = {name: health_pb2.HealthCheckResponse(status=self.status(name)) for name in sorted(SERVER_NAMES)}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = -1
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=_UNKNOWN_SERVICE if status is None else status)
                last = status
            await asyncio.sleep(self.watch_interval)
