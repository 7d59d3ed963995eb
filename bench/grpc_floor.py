"""The floor under naiad's unary gRPC cost: the bare grpc.aio servicer (`../shared/peers/grpc_bare.py`) plus only
what any server that keeps Triton's semantics must add to it, and none of naiad's core: naiad's gRPC codec both
ways (named tensors with datatype and shape checks, request parameters, outputs as raw contents) and one wait for
a result that arrives through the event loop, as a result from a model instance does.

perf_analyzer against this, beside the bare servicer in the same run, measures how close a Triton-compatible
server on grpc.aio can come to the bare one. With `--bare` it serves the bare servicer's own ModelInfer on the same
loop (uvloop, as naiad), which separates the loop's share from the codec's. `bench/perf_analyzer.py --servers
bare,bare-uvloop,floor,naiad` runs them all.

    .venv/bin/python bench/grpc_floor.py 19401 [--bare]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import uvloop
from add_sub_grpc import CONFIG, METADATA, bare_infer
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

from naiad.domain.tensors import InferenceResponse, Tensor
from naiad.frontends.grpc import codec


class FloorService(pbg.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The RPCs perf_analyzer calls; ModelInfer through naiad's codec and one wait on the loop."""

    def __init__(self, bare: bool) -> None:
        self.bare = bare

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="floor", version="1")

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return METADATA

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return pb.ModelConfigResponse(config=CONFIG)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        return pb.ModelStatisticsResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        if self.bare:
            return bare_infer(request)
        decoded = codec.decode_request(request)
        a, b = decoded.inputs[0].data, decoded.inputs[1].data
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[Tensor, ...]] = loop.create_future()
        outputs = (Tensor("OUTPUT0", "FP32", a.shape, a + b, {}), Tensor("OUTPUT1", "FP32", a.shape, a - b, {}))
        loop.call_soon(result.set_result, outputs)
        return codec.encode_response(InferenceResponse("add_sub", "1", decoded.id, await result))


async def serve(port: int, bare: bool) -> None:
    server = grpc.aio.server()
    pbg.add_GRPCInferenceServiceServicer_to_server(FloorService(bare), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--bare", action="store_true", help="the bare servicer's ModelInfer, without naiad's codec")
    options = parser.parse_args()
    uvloop.run(serve(options.port, options.bare))
