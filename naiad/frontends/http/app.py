"""The HTTP application: Triton's route table, body decompression and response compression around the
endpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import orjson

from naiad.core.server import Inference, InferenceServer
from naiad.domain.errors import ErrorCode, ServerError, invalid, missing_extension, not_found
from naiad.domain.tensors import InferenceResponse
from naiad.frontends.http import codec
from naiad.frontends.http.compression import MIN_COMPRESSED_SIZE, choose_encoding, compress, decompress
from naiad.frontends.http.errors import status_of
from naiad.frontends.http.protocol import HttpReply, HttpRequest, Respond

logger = logging.getLogger("naiad.http")

_OCTET = b"application/octet-stream"
_TEXT = b"text/plain"
_MODEL_ACTIONS = frozenset({"ready", "config", "infer", "stats"})
# /v2/<section> of the extensions naiad does not have.
_MISSING = {
    "systemsharedmemory": "system_shared_memory",
    "cudasharedmemory": "cuda_shared_memory",
    "trace": "trace",
}


class InferenceApp:
    """What every request goes through (restrictions, body limits, compression) and Triton's inference endpoint, over
    any `Inference`; the routes are a subclass's."""

    def __init__(self, inference: Inference, max_input_size: int) -> None:
        self.inference = inference
        self.max_input_size = max_input_size
        self._restricted = {
            category: (restriction.key.encode(), restriction.value.encode())
            for category, restriction in inference.settings.http_restricted.items()
        }

    def handle(self, request: HttpRequest, respond: Respond) -> None:
        """Answer one request through `respond`, now or when its inference is done; every failure becomes
        Triton's `{"error": ...}` with its status."""
        if self._restricted:
            needed = self._restricted.get(api_category(request.path), None)
            if needed is not None and request.headers.get(needed[0]) != needed[1]:
                message = f"This API is restricted, expecting header '{needed[0].decode()}'"
                respond(HttpReply(403, codec.dumps({"error": message})))
                return
        try:
            reply = self._route(request, request.path, respond)
        except ServerError as exc:
            reply = _error(exc)
        except MethodNotAllowedError as exc:
            reply = HttpReply(405, b'{"error":"Method Not Allowed"}', headers=[(b"allow", exc.allowed)])
        if reply is not None:
            respond(_compressed(request, reply))

    def body(self, request: HttpRequest) -> bytes:
        """The request body, decompressed, refused beyond --http-max-input-size."""
        limit = self.max_input_size
        if request.body_too_large:
            raise invalid(
                f"request JSON size of {request.body_size} bytes exceeds the maximum allowed input size of "
                f"{limit} bytes. Use --http-max-input-size to increase the limit."
            )
        encoding = request.headers.get(b"content-encoding")
        if encoding is None:
            return request.body
        return decompress(request.body, encoding.decode("latin-1").strip().lower(), limit)

    def _route(self, request: HttpRequest, path: str, respond: Respond) -> HttpReply | None:
        """The reply, or None when `respond` is (or will be) called."""
        raise NotImplementedError

    def infer(self, request: HttpRequest, name: str, version: str, respond: Respond) -> None:
        """`POST .../infer`: decode, submit, and answer from the response's callback."""
        header_length = _header_length(request)
        if header_length == 0:
            self._infer_raw_binary(request, name, version, respond)
            return
        self._submit(request, name, version, codec.decode_request(self.body(request), header_length, name), respond)

    def _infer_raw_binary(self, request: HttpRequest, name: str, version: str, respond: Respond) -> None:
        """A request whose body is the tensors alone, which only the model's config tells how to read."""
        raise NotImplementedError

    def _submit(
        self, request: HttpRequest, name: str, version: str, decoded: codec.DecodedRequest, respond: Respond
    ) -> None:
        def done(outcome: InferenceResponse | ServerError) -> None:
            if isinstance(outcome, ServerError):
                reply = _error(outcome)
            else:
                try:
                    payload, json_length = codec.encode_response(outcome, decoded)
                except ServerError as exc:
                    reply = _error(exc)
                else:
                    if json_length is None:
                        reply = HttpReply(200, payload)
                    else:
                        length = str(json_length).encode()
                        reply = HttpReply(200, payload, _OCTET, [(b"inference-header-content-length", length)])
            respond(_compressed(request, reply))

        self.inference.submit(name, version, decoded.request, done)


class HttpApp(InferenceApp):
    """KServe V2 and Triton's HTTP endpoints over one `InferenceServer`."""

    def __init__(self, server: InferenceServer, max_input_size: int) -> None:
        super().__init__(server, max_input_size)
        self.server = server
        self._control: set[asyncio.Task[None]] = set()  # load and unload requests being carried out

    def _route(self, request: HttpRequest, path: str, respond: Respond) -> HttpReply | None:
        parts = path.rstrip("/").split("/")
        if len(parts) < 2 or parts[0] or parts[1] != "v2":
            raise not_found("Not Found")
        if len(parts) == 2:
            _allow(request, "GET")
            return HttpReply(200, codec.dumps(self.server.metadata()))
        section = parts[2]
        if section == "models":
            return self._model_route(request, parts[3:], respond)
        if section == "health" and len(parts) == 4 and parts[3] in ("live", "ready"):
            _allow(request, "GET")
            ok = self.server.live if parts[3] == "live" else self.server.ready
            return HttpReply(200 if ok else 400, content_type=_TEXT)
        if section == "repository":
            return self._repository_route(request, parts[3:], respond)
        if section == "logging" and len(parts) == 3:
            return self._logging(request)
        if section in _MISSING:
            raise missing_extension(_MISSING[section])
        raise not_found("Not Found")

    def _model_route(self, request: HttpRequest, rest: list[str], respond: Respond) -> HttpReply | None:
        if rest == ["stats"]:
            _allow(request, "GET")
            return HttpReply(200, codec.dumps(self.server.statistics("", "")))
        if not rest or not rest[0]:
            raise not_found("Not Found")
        name = rest[0]
        version = ""
        action = rest[1:]
        if action[:1] == ["versions"]:
            if len(action) < 2:
                raise not_found("Not Found")
            version = action[1]
            action = action[2:]
        if not action:
            _allow(request, "GET")
            return HttpReply(200, codec.dumps(self.server.model_metadata(name, version)))
        if len(action) != 1 or action[0] not in _MODEL_ACTIONS:
            if action[0] in ("generate", "generate_stream", "trace"):
                raise ServerError(ErrorCode.UNSUPPORTED, f"'{action[0]}' is not supported by naiad yet")
            raise not_found("Not Found")
        verb = action[0]
        if verb == "infer":
            _allow(request, "POST")
            self.infer(request, name, version, respond)
            return None
        _allow(request, "GET")
        if verb == "ready":
            if self.server.model_ready(name, version):
                return HttpReply(200, content_type=_TEXT)
            return HttpReply(400, b'{"error":"Model version not ready"}')  # Triton's, unknown models included
        if verb == "config":
            return HttpReply(200, codec.dumps(self.server.model_config(name, version)))
        return HttpReply(200, codec.dumps(self.server.statistics(name, version)))

    def _infer_raw_binary(self, request: HttpRequest, name: str, version: str, respond: Respond) -> None:
        body = self.body(request)
        self._submit(
            request, name, version, codec.decode_raw_binary(body, self.server.model_settings(name, version)), respond
        )

    def _repository_route(self, request: HttpRequest, rest: list[str], respond: Respond) -> HttpReply | None:
        if rest and rest[0] not in ("index", "models"):
            rest = rest[1:]  # /v2/repository/{repository}/...: naiad serves one namespace of models
        if rest == ["index"]:
            _allow(request, "POST")
            body = self.body(request)
            ready_only = False
            if body.strip():
                ready = codec.parse_object(body).get("ready", False)
                if not isinstance(ready, bool):
                    raise invalid("Invalid value for 'ready': expected a boolean")
                ready_only = ready
            return HttpReply(200, codec.dumps(self.server.repository_index(ready_only)))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            _allow(request, "POST")
            body = self.body(request)
            parameters = codec.parse_object(body).get("parameters", {}) if body.strip() else {}
            if not isinstance(parameters, dict):
                raise invalid("Unable to parse 'parameters': expected a JSON object")
            action = self.server.load_model if rest[2] == "load" else self.server.unload_model
            self._answer_when_done(request, respond, action(rest[1], parameters))
            return None
        raise not_found("Not Found")

    def _logging(self, request: HttpRequest) -> HttpReply:
        """GET the log settings, or POST a JSON object of those to change; either way answer them all."""
        if request.method == "GET":
            return HttpReply(200, codec.dumps(self.server.log_settings()))
        if request.method != "POST":
            raise MethodNotAllowedError("GET, POST")
        return HttpReply(200, codec.dumps(self.server.update_log_settings(codec.parse_object(self.body(request)))))

    def _answer_when_done(self, request: HttpRequest, respond: Respond, operation: Coroutine[Any, Any, None]) -> None:
        """Carry out a load or unload and answer 200, or the error, when it is done."""
        task = asyncio.get_running_loop().create_task(operation)
        self._control.add(task)

        def answer(task: asyncio.Task[None]) -> None:
            self._control.discard(task)
            error = task.exception()
            if error is None:
                respond(HttpReply(200, b""))
            elif isinstance(error, ServerError):
                respond(_compressed(request, _error(error)))
            else:
                logger.error("%s failed", request.path, exc_info=error)
                respond(HttpReply(500, orjson.dumps({"error": f"{request.path} failed: {error}"})))

        task.add_done_callback(answer)


_MODEL_CATEGORIES = {
    "": "metadata",
    "ready": "health",
    "config": "model-config",
    "infer": "inference",
    "generate": "inference",
    "generate_stream": "inference",
    "stats": "statistics",
    "trace": "trace",
}
_SECTION_CATEGORIES = {
    "health": "health",
    "repository": "model-repository",
    "logging": "logging",
    "trace": "trace",
    "systemsharedmemory": "shared-memory",
    "cudasharedmemory": "shared-memory",
}


def infer_target(path: str) -> tuple[str, str] | None:
    """The model and version (\"\" for the default one) an inference path names; None for any other path."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 5 or parts[:3] != ["", "v2", "models"] or parts[-1] != "infer" or not parts[3]:
        return None
    if len(parts) == 5:
        return parts[3], ""
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


def api_category(path: str) -> str:
    """Which of Triton's API categories a path belongs to, for --http-restricted-api ("" for none)."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 2 or parts[0] or parts[1] != "v2":
        return ""
    if len(parts) == 2:
        return "metadata"
    if parts[2] != "models":
        return _SECTION_CATEGORIES.get(parts[2], "")
    rest = parts[3:]
    if rest == ["stats"]:
        return "statistics"
    action = rest[1:]
    if action[:1] == ["versions"]:
        action = action[2:]
    return _MODEL_CATEGORIES.get(action[0] if action else "", "")


class MethodNotAllowedError(Exception):
    """A known route asked with the wrong method (405)."""

    def __init__(self, allowed: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed.encode()


def _error(exc: ServerError) -> HttpReply:
    return HttpReply(status_of(exc.code), orjson.dumps({"error": exc.message}))


def _compressed(request: HttpRequest, reply: HttpReply) -> HttpReply:
    """The reply gzip- or deflate-encoded when the client accepts it and the body is worth it."""
    accept = request.headers.get(b"accept-encoding")
    if accept is not None and len(reply.body) >= MIN_COMPRESSED_SIZE:
        encoding = choose_encoding(accept.decode("latin-1"))
        if encoding:
            reply.body = compress(reply.body, encoding)
            reply.headers = [*(reply.headers or ()), (b"content-encoding", encoding.encode())]
    return reply


def _header_length(request: HttpRequest) -> int | None:
    """`Inference-Header-Content-Length`, checked."""
    value = request.headers.get(b"inference-header-content-length")
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if not text.isdigit() or len(text) > 18:
        raise invalid(f"Unable to parse Inference-Header-Content-Length: '{text}' is not a valid length")
    return int(text)


def _allow(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowedError(method)
