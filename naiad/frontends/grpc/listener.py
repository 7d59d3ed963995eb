"""`GrpcListener`: the gRPC service on the stack `--grpc-stack` names: naiad's own HTTP/2, or grpcio's grpc.aio."""

from __future__ import annotations

import logging
from typing import Protocol

from naiad.config.settings import GrpcSettings
from naiad.core.server import InferenceServer
from naiad.frontends.grpc.tls import GrpcSetupError

__all__ = ["GrpcListener", "GrpcSetupError"]
logger = logging.getLogger("naiad.grpc")


class GrpcListener(Protocol):
    """Starts, stops accepting, and closes the gRPC service."""

    async def start(self, port: int) -> int: ...

    def stop_accepting(self, grace: float) -> None: ...

    async def close(self, timeout: float) -> None: ...


def warn_of_ineffective(settings: GrpcSettings) -> None:
    """Log the flags that are accepted, as tritonserver accepts them, but change nothing on a server."""
    if settings.http2_max_pings_without_data != 2:  # tritonserver's default
        logger.warning(
            "--grpc-http2-max-pings-without-data has no effect on a server: grpc servers (Triton's too) do not limit "
            "their own keep-alive pings"
        )


def grpc_listener(server: InferenceServer, settings: GrpcSettings) -> GrpcListener:
    """The gRPC service on the stack the settings name."""
    warn_of_ineffective(settings)
    if settings.stack == "grpcio":
        from naiad.frontends.grpc.aio_server import AioServer

        return AioServer(server, settings)
    from naiad.frontends.grpc.h2_server import Http2Server

    return Http2Server.for_server(server, settings)
