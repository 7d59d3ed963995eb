"""`InferenceService`: Triton's `inference.GRPCInferenceService` over one `InferenceServer`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from naiad.core.server import InferenceServer
from naiad.domain.errors import ErrorCode, ServerError
from naiad.domain.tensors import InferenceResponse
from naiad.frontends.grpc import codec
from naiad.frontends.grpc.errors import status_of

Context = Any  # grpc.aio.ServicerContext; grpcio ships no type stubs

_UNSUPPORTED = {
    "shared memory": "system shared memory is not supported by naiad",
    "cuda shared memory": "CUDA shared memory is not supported by naiad",
    "trace": "tracing is not supported by naiad yet",
    "logging": "the logging API is not supported by naiad yet",
}


class InferenceService:
    """Each RPC decodes its message, calls the `InferenceServer` and encodes the answer; a `ServerError` becomes
    the gRPC status Triton would answer, with the same message as over HTTP."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server

    # Health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.live)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.server.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(self.server.metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        try:
            metadata = self.server.model_metadata(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        try:
            config = self.server.model_config(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> pb.ModelStatisticsResponse:
        try:
            statistics = self.server.statistics(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        # the JSON form has fields (response_stats) that the gRPC message of older protos lacks
        return json_format.ParseDict(statistics, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # Inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        try:
            decoded = codec.decode_request(request)
            response = await self.server.infer(request.model_name, request.model_version, decoded)
            return codec.encode_response(response)
        except ServerError as exc:
            await _abort(context, exc)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream is served as it arrives; each answer (or error) is written as it is done,
        and an error does not end the stream, as in Triton."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        stream = _Stream(self.server, answers)
        reader = asyncio.get_running_loop().create_task(stream.read(requests))
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
        await reader

    # Repository

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        index = self.server.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        try:
            self.server.load_model(request.model_name)
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            self.server.unload_model(request.model_name)
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # Extensions naiad does not have: UNIMPLEMENTED, saying so

    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "shared memory")

    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "shared memory")

    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "shared memory")

    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "cuda shared memory")

    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "cuda shared memory")

    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "cuda shared memory")

    async def TraceSetting(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "trace")

    async def LogSettings(self, request: Any, context: Context) -> NoReturn:
        await _refuse(context, "logging")


class _Stream:
    """One `ModelStreamInfer` call: reads requests, starts each, and queues the answers in completion order."""

    def __init__(self, server: InferenceServer, answers: asyncio.Queue[pb.ModelStreamInferResponse | None]) -> None:
        self._server = server
        self._answers = answers
        self._pending = 0
        self._reading = True

    async def read(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        try:
            async for request in requests:
                self._start(request)
        finally:
            self._reading = False
            if self._pending == 0:
                self._answers.put_nowait(None)

    def _start(self, request: pb.ModelInferRequest) -> None:
        self._pending += 1  # before submit, which may answer at once
        try:
            decoded = codec.decode_request(request)
            self._server.submit(request.model_name, request.model_version, decoded, self._done_for(request))
        except ServerError as exc:
            self._pending -= 1
            self._answers.put_nowait(_stream_error(request, exc.message))

    def _done_for(self, request: pb.ModelInferRequest) -> Any:
        def done(outcome: InferenceResponse | ServerError) -> None:
            self._pending -= 1
            if isinstance(outcome, ServerError):
                self._answers.put_nowait(_stream_error(request, outcome.message))
            else:
                self._answers.put_nowait(pb.ModelStreamInferResponse(infer_response=codec.encode_response(outcome)))
            if not self._reading and self._pending == 0:
                self._answers.put_nowait(None)

        return done


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """Triton's answer to a failed request inside a stream: the message, and the request's id to match it."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


async def _abort(context: Context, exc: ServerError) -> NoReturn:
    await context.abort(status_of(exc.code), exc.message)
    raise AssertionError("unreachable: abort raises")


async def _refuse(context: Context, what: str) -> NoReturn:
    await _abort(context, ServerError(ErrorCode.UNSUPPORTED, _UNSUPPORTED[what]))
