"""The composition root: settings → server → listeners; start-up order (models, then ready) and shutdown order
(not ready, stop accepting, drain, unload)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import NamedTuple

from naiad.config.log_levels import LogLevels
from naiad.config.settings import ServerSettings
from naiad.core.server import InferenceServer, StoreError
from naiad.frontend_processes.host import FrontendProcesses
from naiad.frontends.grpc.listener import GrpcListener, GrpcSetupError, grpc_listener, warn_of_ineffective
from naiad.frontends.http.app import HttpApp
from naiad.frontends.http.metrics import MetricsApp
from naiad.frontends.http.protocol import HttpListener
from naiad.ops.exposition import CONTENT_TYPE
from naiad.ops.metrics import MetricsRegistry
from naiad.ops.system_metrics import SystemMetrics

logger = logging.getLogger("naiad.runner")


def run(settings: ServerSettings, log_levels: LogLevels | None = None) -> int:
    """Serve until SIGINT or SIGTERM; the process's exit status. `log_levels` are those the log handler reads,
    which the logging API changes."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        status = asyncio.run(serve(settings, log_levels))
    else:
        status = uvloop.run(serve(settings, log_levels))
    # The loop's handlers went with it, and the default ones would turn a repeated signal in the last moments
    # before exit (a second Ctrl-C, an impatient supervisor) into death by signal after a clean shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return status


async def serve(settings: ServerSettings, log_levels: LogLevels | None = None) -> int:
    """Open the listeners, load the models, wait for a signal, shut down in order.

    The listeners open first, so the server is live (and not ready) while its models load: a probe or a balancer
    tells a server that is loading from one that is down, and a port in use fails at once, not after the loading."""
    try:
        server = InferenceServer(settings, log_levels)
    except StoreError as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    server.bind()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listeners = await _open_listeners(server, settings)
    if listeners is None:
        await server.unload()
        return 1
    starting = loop.create_task(server.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while loading: the loads under way finish, then everything unloads
        logger.info("shutting down during start-up: waiting for the models being loaded, then unloading them")
        server.begin_exit()
    failures = await starting
    stopping.cancel()
    if stop.is_set():
        await _shut_down(server, listeners, settings)
        return 0
    for what, reason in failures:
        logger.error("failed to load model %s: %s", what, reason)
    if failures and settings.exit_on_error:
        await listeners.close()
        await server.unload()
        what, reason = failures[0]
        print(
            f"error: failed to load model {what}: {reason}\n"
            "(start with --exit-on-error=false to serve the other models)",
            file=sys.stderr,
        )
        return 1
    polling = loop.create_task(server.poll_repository()) if settings.model_control_mode == "poll" else None
    logger.info("naiad is ready")
    await stop.wait()
    if polling is not None:
        server.stop_polling()
        await polling
    await _shut_down(server, listeners, settings)
    return 0


async def _shut_down(server: InferenceServer, listeners: Listeners, settings: ServerSettings) -> None:
    """Not ready, stop accepting, drain what is in flight, close the listeners, unload every model."""
    logger.info("shutting down: no longer ready; waiting up to %ds for requests in flight", settings.exit_timeout_secs)
    server.begin_exit()
    http, grpc, processes = listeners.http, listeners.grpc, listeners.processes
    if http is not None:
        http.stop_accepting()
    if grpc is not None:
        grpc.stop_accepting(settings.exit_timeout_secs)
    if processes is not None:
        processes.stop_accepting(settings.exit_timeout_secs)
    left = await server.drain(settings.exit_timeout_secs)
    if left:
        logger.warning("exit timeout reached with %d request(s) in flight", left)
    if http is not None:
        await http.close(timeout=1)
    if grpc is not None:
        await grpc.close(timeout=5)  # answers being written once the core is drained
    if processes is not None:
        await processes.close()  # each closes its own the same way
    if listeners.metrics is not None:
        await listeners.metrics.close()
    await server.unload()
    logger.info("all models unloaded; exiting")


class Listeners(NamedTuple):
    """The services the flags turned on; None for one turned off."""

    metrics: MetricsService | None
    http: HttpListener | None
    grpc: GrpcListener | None
    processes: FrontendProcesses | None = None  # serving HTTP and gRPC instead of this process

    async def close(self) -> None:
        """Close them at once (start-up failed: nothing is in flight that should be waited for)."""
        if self.processes is not None:
            self.processes.stop_accepting(0)
            await self.processes.close()
        if self.grpc is not None:
            await self.grpc.close(timeout=0)
        if self.http is not None:
            await self.http.close(timeout=0)
        if self.metrics is not None:
            await self.metrics.close()


async def _open_listeners(server: InferenceServer, settings: ServerSettings) -> Listeners | None:
    """Start metrics (first: opt-in latency metrics must see every request), HTTP and gRPC; None, with the
    reason logged and printed, when one cannot start (those started are closed again)."""
    opened = Listeners(None, None, None)
    if settings.allow_metrics:
        opened = opened._replace(metrics=await _start_metrics(server, settings))
        if opened.metrics is None:
            return None
    if settings.frontend_process_count > 1 and (settings.allow_http or settings.allow_grpc):
        opened = opened._replace(processes=await _start_processes(server, settings))
        if opened.processes is None:
            await opened.close()
            return None
        return opened
    if settings.allow_http:
        opened = opened._replace(http=await _start_http(server, settings))
        if opened.http is None:
            await opened.close()
            return None
    if settings.allow_grpc:
        opened = opened._replace(grpc=await _start_grpc(server, settings))
        if opened.grpc is None:
            await opened.close()
            return None
    return opened


async def _start_processes(server: InferenceServer, settings: ServerSettings) -> FrontendProcesses | None:
    if settings.allow_grpc:
        warn_of_ineffective(settings.grpc)
    processes = FrontendProcesses(server, settings)
    try:
        processes.bind()
    except OSError as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return None
    error = await processes.start()
    if error:
        logger.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        processes.stop_accepting(0)
        await processes.close()
        return None
    if settings.allow_http:
        logger.info("Started HTTPService at %s:%d", settings.http_address, processes.port(processes.http_sockets))
    if settings.allow_grpc:
        port = processes.port(processes.grpc_sockets)
        logger.info("Started GRPCInferenceService at %s:%d", settings.grpc.address, port)
    logger.info("%d front-end processes serve HTTP and gRPC (pids %s)", processes.count, processes.pids)
    return processes


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
    logger.info("Started HTTPService at %s:%d", settings.http_address, port)
    return listener


async def _start_grpc(server: InferenceServer, settings: ServerSettings) -> GrpcListener | None:
    try:
        listener = grpc_listener(server, settings.grpc)
        port = await listener.start(settings.grpc_port)
    except GrpcSetupError as exc:
        message = f"failed to start the GRPC service: {exc}"
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return None
    logger.info("Started GRPCInferenceService at %s:%d", settings.grpc.address, port)
    return listener


class MetricsService(NamedTuple):
    """The metrics listener and the thread sampling the CPU and GPU gauges."""

    listener: HttpListener
    system: SystemMetrics

    async def close(self) -> None:
        """Stop serving metrics and sampling."""
        await self.listener.close(timeout=1)
        self.system.stop()


async def _start_metrics(server: InferenceServer, settings: ServerSettings) -> MetricsService | None:
    config = settings.metrics
    system = SystemMetrics(config.interval_ms, config.cpu, config.gpu)
    registry = MetricsRegistry(server, config, system)
    listener = HttpListener(MetricsApp(registry.render, CONTENT_TYPE).handle, 64 * 1024)
    try:
        port = await listener.start(config.address, settings.metrics_port)
    except OSError as exc:
        system.stop()
        message = f"failed to start the metrics service on {config.address}:{settings.metrics_port}: {exc.strerror}"
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        return None
    system.start()
    logger.info("Started Metrics Service at %s:%d", config.address, port)
    return MetricsService(listener, system)
