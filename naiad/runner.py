"""The composition root: settings → server → listeners; start-up order (models, then ready) and shutdown order
(not ready, stop accepting, drain, unload)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvicorn

from naiad.config.settings import ServerSettings
from naiad.core.repository import RepositoryError
from naiad.core.server import InferenceServer
from naiad.frontends.http.app import HttpApp

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
    if settings.allow_grpc:
        logger.warning("the gRPC front end is not in naiad yet: nothing listens on port %d", settings.grpc_port)
    if settings.allow_metrics:
        logger.warning("Prometheus metrics are not in naiad yet: nothing listens on port %d", settings.metrics_port)

    http: uvicorn.Server | None = None
    if settings.allow_http:
        http = await _start_http(server, settings)
        if http is None:
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
        for listener in http.servers:
            listener.close()
    left = await server.drain(settings.exit_timeout_secs)
    if left:
        logger.warning("exit timeout reached with %d request(s) in flight", left)
    if http is not None:
        http.config.timeout_graceful_shutdown = 1
        await http.shutdown()
    await server.unload()
    logger.info("all models unloaded; exiting")
    return 0


async def _start_http(server: InferenceServer, settings: ServerSettings) -> uvicorn.Server | None:
    config = uvicorn.Config(
        HttpApp(server, settings.http_max_input_size),
        host=settings.http_address,
        port=settings.http_port,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
    )
    config.load()
    http = uvicorn.Server(config)
    http.lifespan = config.lifespan_class(config)
    try:
        await http.startup()
    except SystemExit:
        http.started = False
    if not http.started:
        message = f"failed to start the HTTP service on {settings.http_address}:{settings.http_port}"
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return None
    logger.info("started HTTPService at %s:%d", settings.http_address, settings.http_port)
    return http
