"""The composition root: settings → server → listeners; start-up order (models, then ready) and shutdown order
(not ready, stop accepting, drain, unload)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from naiad.config.settings import ServerSettings
from naiad.core.repository import RepositoryError
from naiad.core.server import InferenceServer
from naiad.frontends.grpc.listener import GrpcListener, GrpcSetupError
from naiad.frontends.http.app import HttpApp
from naiad.frontends.http.protocol import HttpListener

logger = logging.getLogger("naiad.runner")


def run(settings: ServerSettings) -> int:
    """Serve until SIGINT or SIGTERM; the process's exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


async def serve(settings: ServerSettings) -> int:
    """Load the models, open the listeners, wait for a signal, shut down in order."""
    try:
        server = InferenceServer(settings)
    except RepositoryError as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failures = await server.start()
    for what, reason in failures:
        logger.error("failed to load model %s: %s", what, reason)
    if failures and settings.exit_on_error:
        await server.unload()
        what, reason = failures[0]
        print(
            f"error: failed to load model {what}: {reason}\n"
            "(start with --exit-on-error=false to serve the other models)",
            file=sys.stderr,
        )
        return 1
    if settings.allow_metrics:
        logger.warning("Prometheus metrics are not in naiad yet: nothing listens on port %d", settings.metrics_port)

    http: HttpListener | None = None
    if settings.allow_http:
        http = await _start_http(server, settings)
        if http is None:
            await server.unload()
            return 1
    grpc: GrpcListener | None = None
    if settings.allow_grpc:
        grpc = await _start_grpc(server, settings)
        if grpc is None:
            if http is not None:
                await http.close(timeout=0)
            await server.unload()
            return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("naiad is ready")
    await stop.wait()

    logger.info("shutting down: no longer ready; waiting up to %ds for requests in flight", settings.exit_timeout_secs)
    server.begin_exit()
    if http is not None:
        http.stop_accepting()
    if grpc is not None:
        grpc.stop_accepting(settings.exit_timeout_secs)
    left = await server.drain(settings.exit_timeout_secs)
    if left:
        logger.warning("exit timeout reached with %d request(s) in flight", left)
    if http is not None:
        await http.close(timeout=1)
    if grpc is not None:
        await grpc.close()
    await server.unload()
    logger.info("all models unloaded; exiting")
    return 0


async def _start_http(server: InferenceServer, settings: ServerSettings) -> HttpListener | None:
    app = HttpApp(server, settings.http_max_input_size)
    # The connection layer drops bodies past this size as they arrive; the app then answers 400.
    # Compressed bodies are smaller than what they decompress to, which the app bounds again.
    listener = HttpListener(app.handle, settings.http_max_input_size)
    try:
        port = await listener.start(settings.http_address, settings.http_port)
    except OSError as exc:
        message = f"failed to start the HTTP service on {settings.http_address}:{settings.http_port}: {exc.strerror}"
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return None
    logger.info("started HTTPService at %s:%d", settings.http_address, port)
    return listener


async def _start_grpc(server: InferenceServer, settings: ServerSettings) -> GrpcListener | None:
    try:
        listener = GrpcListener(server, settings.grpc)
        port = await listener.start(settings.grpc_port)
    except GrpcSetupError as exc:
        message = f"failed to start the GRPC service: {exc}"
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return None
    logger.info("started GRPCInferenceService at %s:%d", settings.grpc.address, port)
    return listener
