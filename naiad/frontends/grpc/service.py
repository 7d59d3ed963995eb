"""`InferenceService`: Triton's `inference.GRPCInferenceService` over one `InferenceServer`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from naiad.core.server import Inference, InferenceServer
from naiad.domain.errors import RefusedError, ServerError, missing_extension
from naiad.domain.tensors import InferenceResponse
from naiad.frontends.grpc import codec
from naiad.frontends.grpc.errors import status_of

# Triton marks each response of a stream as the last one for its request.
FINAL_RESPONSE = "triton_final_response"

Context = Any  # grpc.aio.ServicerContext; grpcio ships no type stubs


class Answer(Protocol):
    """How a call taken without a task is ended."""

    def answer(self, message: bytes) -> None: ...

    def fail(self, code: int, message: str) -> None: ...


def _refusing(extension: str) -> Callable[[Any, Any, Context], Awaitable[NoReturn]]:
    """An RPC of an extension naiad does not have: UNIMPLEMENTED, saying so."""

    async def rpc(self: Any, request: Any, context: Context) -> NoReturn:
        await _abort(context, missing_extension(extension))

    return rpc


def _setting(value: pb.LogSettingsRequest.SettingValue) -> bool | int | str | None:
    """A log setting's value, whichever of its kinds was sent (none: left as it is)."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _setting_value(value: bool | int | str) -> pb.LogSettingsResponse.SettingValue:
    if isinstance(value, bool):
        return pb.LogSettingsResponse.SettingValue(bool_param=value)
    if isinstance(value, int):
        return pb.LogSettingsResponse.SettingValue(uint32_param=value)
    return pb.LogSettingsResponse.SettingValue(string_param=value)


class InferenceCalls:
    """ModelInfer and ModelStreamInfer over any `Inference`: decode, submit, encode; a `ServerError` becomes the gRPC
    status Triton would answer, with the same message as over HTTP."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def infer_into(self, request: pb.ModelInferRequest, call: Answer) -> None:
        """ModelInfer without a task or a future: the answer is written from the response's callback."""

        def done(outcome: InferenceResponse | ServerError) -> None:
            if not isinstance(outcome, ServerError):
                try:
                    call.answer(codec.encode_response(outcome).SerializeToString())
                    return
                except ServerError as exc:
                    outcome = exc
            call.fail(status_of(outcome.code).value[0], outcome.message)

        try:
            decoded = codec.decode_request(request)
            self.inference.submit(request.model_name, request.model_version, decoded, done)
        except ServerError as exc:
            call.fail(status_of(exc.code).value[0], exc.message)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream is served as it arrives; each answer (or error) is written as it is done,
        and an error does not end the stream, as in Triton."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        stream = _Stream(self.inference, answers)
        reader = asyncio.get_running_loop().create_task(stream.read(requests))
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
        await reader


class InferenceService(InferenceCalls):
    """Each RPC decodes its message, calls the `InferenceServer` and encodes the answer."""

    def __init__(self, server: InferenceServer) -> None:
        super().__init__(server)
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

    # Repository

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> pb.RepositoryIndexResponse:
        index = self.server.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        try:
            await self.server.load_model(request.model_name, _repository_parameters(request.parameters))
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self.server.unload_model(request.model_name, _repository_parameters(request.parameters))
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # Extensions naiad does not have: UNIMPLEMENTED, saying so

    SystemSharedMemoryStatus = _refusing("system_shared_memory")
    SystemSharedMemoryRegister = _refusing("system_shared_memory")
    SystemSharedMemoryUnregister = _refusing("system_shared_memory")
    CudaSharedMemoryStatus = _refusing("cuda_shared_memory")
    CudaSharedMemoryRegister = _refusing("cuda_shared_memory")
    CudaSharedMemoryUnregister = _refusing("cuda_shared_memory")
    TraceSetting = _refusing("trace")

    async def LogSettings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        changes = {name: _setting(value) for name, value in request.settings.items()}
        try:
            settings = self.server.update_log_settings(changes) if changes else self.server.log_settings()
        except ServerError as exc:
            await _abort(context, exc)
        return pb.LogSettingsResponse(settings={name: _setting_value(value) for name, value in settings.items()})


class _Stream:
    """One `ModelStreamInfer` call: starts each request as it arrives and writes the answers in request order, as
    Triton does; a failed request is answered in the stream, which goes on."""

    def __init__(self, inference: Inference, answers: asyncio.Queue[pb.ModelStreamInferResponse | None]) -> None:
        self._inference = inference
        self._answers = answers
        self._waiting: deque[list[pb.ModelStreamInferResponse | None]] = deque()  # one slot per request, in order
        self._reading = True

    async def read(self, requests: AsyncIterator[pb.ModelInferRequest]) -> None:
        try:
            async for request in requests:
                self._start(request)
        finally:
            self._reading = False
            self._flush()

    def _start(self, request: pb.ModelInferRequest) -> None:
        slot: list[pb.ModelStreamInferResponse | None] = [None]
        self._waiting.append(slot)
        try:
            decoded = codec.decode_request(request)
            self._inference.submit(request.model_name, request.model_version, decoded, self._done_for(request, slot))
        except ServerError as exc:
            slot[0] = _stream_error(exc.message, pb.ModelInferResponse(id=request.id))
            self._flush()

    def _done_for(self, request: pb.ModelInferRequest, slot: list[pb.ModelStreamInferResponse | None]) -> Any:
        def done(outcome: InferenceResponse | ServerError) -> None:
            if isinstance(outcome, RefusedError):  # as if `submit` had raised it
                slot[0] = _stream_error(outcome.message, pb.ModelInferResponse(id=request.id))
            elif isinstance(outcome, ServerError):
                response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                response.parameters[FINAL_RESPONSE].bool_param = True
                slot[0] = _stream_error(outcome.message, response)
            else:
                response = codec.encode_response(outcome)
                response.parameters[FINAL_RESPONSE].bool_param = True
                slot[0] = pb.ModelStreamInferResponse(infer_response=response)
            self._flush()

        return done

    def _flush(self) -> None:
        """Write the answers that are due: every finished one at the head of the line."""
        waiting = self._waiting
        while waiting and waiting[0][0] is not None:
            self._answers.put_nowait(waiting.popleft()[0])
        if not self._reading and not waiting:
            self._answers.put_nowait(None)


def _stream_error(message: str, response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    """A failed request inside a stream: the message, with what Triton sends to match it (the request's id)."""
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)


async def _abort(context: Context, exc: ServerError) -> NoReturn:
    await context.abort(status_of(exc.code), exc.message)
    raise AssertionError("unreachable: abort raises")


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    """A load or unload request's `ModelRepositoryParameter` map as plain values."""
    plain: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        plain[key] = getattr(parameter, kind) if kind else None
    return plain
