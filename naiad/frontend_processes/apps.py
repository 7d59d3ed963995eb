"""What a front-end process serves: inference decoded, submitted and encoded here, everything else passed on to the
server process (`RemoteServer`), over HTTP and over gRPC."""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from naiad.frontend_processes.remote import RemoteServer
from naiad.frontends.grpc.calls import Method
from naiad.frontends.grpc.h2_server import HEALTH_SERVICE, INFERENCE_SERVICE
from naiad.frontends.grpc.service import InferenceCalls
from naiad.frontends.http.app import InferenceApp, infer_target
from naiad.frontends.http.protocol import HttpReply, HttpRequest, Respond


class ForwardingHttpApp(InferenceApp):
    """Inference with a JSON header (or all JSON) here; raw binary inference, which needs the model's config, and
    every other route in the server process."""

    def __init__(self, server: RemoteServer, max_input_size: int) -> None:
        super().__init__(server, max_input_size)
        self._server = server

    def _route(self, request: HttpRequest, path: str, respond: Respond) -> HttpReply | None:
        target = infer_target(path)
        if target is not None and request.method == "POST":
            self.infer(request, target[0], target[1], respond)
        else:
            self._server.forward_http(request, respond)
        return None

    def _infer_raw_binary(self, request: HttpRequest, name: str, version: str, respond: Respond) -> None:
        self._server.forward_http(request, respond)


def grpc_methods(server: RemoteServer) -> dict[str, Method]:
    """Every RPC of the inference and health services by path: ModelInfer and ModelStreamInfer here, the others
    answered by the server process."""
    calls = InferenceCalls(server)
    request = pb.ModelInferRequest.FromString
    methods: dict[str, Method] = {}
    for descriptor in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        path = f"/{INFERENCE_SERVICE}/{descriptor.name}"
        if descriptor.name == "ModelInfer":
            methods[path] = Method("call", calls.infer_into, request, _serialized)
        elif descriptor.name == "ModelStreamInfer":
            methods[path] = Method("stream_stream", calls.ModelStreamInfer, request, _serialized)
        else:
            methods[path] = _forwarded(server, path)
    for name in ("Check", "Watch", "List"):
        path = f"/{HEALTH_SERVICE}/{name}"
        methods[path] = _forwarded(server, path)
    return methods


def _forwarded(server: RemoteServer, path: str) -> Method:
    def forward(message: bytes, call: Any) -> None:
        server.forward_grpc(path, message, call)

    return Method("call", forward, _unread, _unread)


def _unread(message: bytes) -> bytes:
    return message


def _serialized(message: Any) -> bytes:
    return bytes(message.SerializeToString())
