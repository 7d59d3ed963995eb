"""A bare servicer on another gRPC stack, grpclib (HTTP/2 in Python on h2, on uvloop), doing only add_sub's arithmetic
and the calls perf_analyzer makes: the ceiling of that stack, to compare with grpcio's bare servicer
(`../shared/peers/grpc_bare.py`).

    .venv/bin/pip install --target /tmp/grpclib grpclib
    PYTHONPATH=/tmp/grpclib .venv/bin/python bench/grpclib_bare.py 19301
    /tmp/peers/perf_analyzer -m add_sub -u 127.0.0.1:19301 -i grpc --concurrency-range 16 -p 3000 --input-data random
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from add_sub_grpc import CONFIG, METADATA, bare_infer
from grpclib.const import Cardinality, Handler
from grpclib.server import Server
from tritonclient.grpc import service_pb2 as pb


def unary(answer: Callable[[Any], Any]) -> Callable[[Any], Awaitable[None]]:
    async def handle(stream: Any) -> None:
        request = await stream.recv_message()
        await stream.send_message(answer(request))

    return handle


class BareService:
    """The RPCs perf_analyzer calls, as grpclib handlers over tritonclient's message classes."""

    def __mapping__(self) -> dict[str, Handler]:
        table: dict[str, tuple[Callable[[Any], Any], Any, Any]] = {
            "ServerLive": (lambda r: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (
                lambda r: pb.ServerReadyResponse(ready=True),
                pb.ServerReadyRequest,
                pb.ServerReadyResponse,
            ),
            "ModelReady": (lambda r: pb.ModelReadyResponse(ready=True), pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                lambda r: pb.ServerMetadataResponse(name="bare", version="1"),
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (lambda r: METADATA, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": (
                lambda r: pb.ModelConfigResponse(config=CONFIG),
                pb.ModelConfigRequest,
                pb.ModelConfigResponse,
            ),
            "ModelStatistics": (
                lambda r: pb.ModelStatisticsResponse(),
                pb.ModelStatisticsRequest,
                pb.ModelStatisticsResponse,
            ),
            "ModelInfer": (bare_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        prefix = "/inference.GRPCInferenceService/"
        return {
            prefix + name: Handler(unary(answer), Cardinality.UNARY_UNARY, request, response)
            for name, (answer, request, response) in table.items()
        }


async def serve(port: int) -> None:
    server = Server([BareService()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
