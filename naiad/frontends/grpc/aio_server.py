"""`AioServer`: grpcio's `grpc.aio` server with tritonserver's options (TLS, keep-alive, compression, port reuse)
serving the inference and health services (`--grpc-stack=grpcio`)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from naiad.config.settings import GrpcSettings
from naiad.core.server import InferenceServer
from naiad.frontends.grpc.health import HealthService
from naiad.frontends.grpc.restrictions import RestrictionInterceptor
from naiad.frontends.grpc.service import InferenceService
from naiad.frontends.grpc.tls import GrpcSetupError, tls_files

# Triton takes messages up to 2 GiB both ways.
MAX_MESSAGE_SIZE = 2**31 - 1
COMPRESSION_LEVELS = {"none": 0, "low": 1, "medium": 2, "high": 3}


class AioServer:
    """Starts, stops accepting, and closes the gRPC service."""

    def __init__(self, server: InferenceServer, settings: GrpcSettings) -> None:
        self._settings = settings
        interceptors = [RestrictionInterceptor(settings.restricted)] if settings.restricted else []
        self._server = grpc.aio.server(options=channel_options(settings), interceptors=interceptors)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(server), self._server)
        self._health = HealthService(server)
        self._server.add_generic_rpc_handlers((self._health.handler(),))
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, port: int) -> int:
        """Bind and start serving; the port bound (useful when `port` is 0)."""
        settings = self._settings
        target = f"{settings.address}:{port}"
        try:
            if settings.use_ssl:
                bound = self._server.add_secure_port(target, _credentials(settings))
            else:
                bound = self._server.add_insecure_port(target)
        except RuntimeError as exc:
            raise GrpcSetupError(f"failed to bind {target}: {exc}") from None
        if bound == 0:
            raise GrpcSetupError(f"failed to bind {target}")
        await self._server.start()
        return int(bound)

    def stop_accepting(self, grace: float) -> None:
        """Refuse new calls from now on; calls in flight get up to `grace` seconds."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace))

    async def _stop(self, grace: float) -> None:
        # health watchers first: each writes NOT_SERVING and ends while the server still sends messages (2 s at
        # most, so that a watcher that stopped reading cannot hold shutdown up)
        self._health.begin_exit()
        await self._health.watchers_done(timeout=min(grace, 2.0))
        await self._server.stop(grace)

    async def close(self, timeout: float) -> None:
        """Give calls still writing their answers up to `timeout` seconds, cancel what is left (idle streams), and
        wait until the server is down."""
        if self._stopping is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError itself from 3.11 on
                await asyncio.wait_for(asyncio.shield(self._stopping), timeout)
        await self._server.stop(0)
        if self._stopping is not None:
            await self._stopping


def channel_options(settings: GrpcSettings) -> list[tuple[str, int]]:
    """grpc core options for tritonserver's `--grpc-*` flags."""
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        ("grpc.so_reuseport", int(settings.reuse_port)),
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", settings.http2_max_pings_without_data),
        ("grpc.http2.min_ping_interval_without_data_ms", settings.http2_min_recv_ping_interval_without_data_ms),
        ("grpc.http2.max_ping_strikes", settings.http2_max_ping_strikes),
    ]
    if settings.max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", settings.max_connection_age_ms))
    if settings.max_connection_age_grace_ms:
        options.append(("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_ms))
    level = COMPRESSION_LEVELS[settings.compression_level]
    if level:
        options.append(("grpc.default_compression_level", level))
    return options


def _credentials(settings: GrpcSettings) -> grpc.ServerCredentials:
    files = tls_files(settings)
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.root, require_client_auth=settings.use_ssl_mutual
    )
