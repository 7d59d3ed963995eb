"""`RestrictionInterceptor`: `--grpc-restricted-protocol`, refusing calls of a restricted API category that lack its
header (sent as `triton-grpc-protocol-<key>` metadata), with tritonserver's status and message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from naiad.config.restrictions import GRPC_HEADER_PREFIX, Restrictions

_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
_HEALTH_SERVICE = "/grpc.health.v1.Health/"
_METHOD_CATEGORIES = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}


def rpc_categories(method: str) -> tuple[str, ...]:
    """The API categories of a full method name ("/inference.GRPCInferenceService/ModelInfer"): a call needs the
    header of each that is restricted. The standard health service's List names every model of the repository,
    so it is model-repository as well as health."""
    if method.startswith(_INFERENCE_SERVICE):
        category = _METHOD_CATEGORIES.get(method.removeprefix(_INFERENCE_SERVICE))
        return (category,) if category else ()
    if method == _HEALTH_SERVICE + "List":
        return ("health", "model-repository")
    return ("health",) if method.startswith(_HEALTH_SERVICE) else ()


class RestrictionInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers a restricted call without the right metadata UNAVAILABLE, as tritonserver does, before it runs."""

    def __init__(self, restricted: Restrictions) -> None:
        self._restricted = {
            category: (GRPC_HEADER_PREFIX + restriction.key, restriction.value)
            for category, restriction in restricted.items()
        }

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        sent = tuple(details.invocation_metadata or ())
        for category in rpc_categories(details.method):
            needed = self._restricted.get(category)
            if needed is not None and needed not in sent:
                return _refusing(handler, f"This protocol is restricted, expecting header '{needed[0]}'")
        return handler


def _refusing(handler: Any, message: str) -> Any:
    """A handler of the same kind as `handler` that ends the call UNAVAILABLE with `message`."""

    async def refuse(request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)
