"""The ASGI application: Triton's HTTP route table, body reading and compression around the endpoints."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from naiad.core.server import InferenceServer
from naiad.domain.errors import ErrorCode, ServerError, invalid, not_found
from naiad.frontends.http import codec
from naiad.frontends.http.compression import MIN_COMPRESSED_SIZE, choose_encoding, compress, decompress
from naiad.frontends.http.errors import status_of

logger = logging.getLogger("naiad.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"
_OCTET = b"application/octet-stream"
_MODEL_ACTIONS = frozenset({"ready", "config", "infer", "stats"})
_UNSUPPORTED = {
    "systemsharedmemory": "system shared memory is not supported by naiad",
    "cudasharedmemory": "CUDA shared memory is not supported by naiad",
    "trace": "tracing is not supported by naiad yet",
    "logging": "the logging API is not supported by naiad yet",
}


class Reply:
    """A response: status, body, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: bytes = _JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class Request:
    """What the endpoints need of an HTTP request: its headers and a way to read its body."""

    __slots__ = ("_limit", "_receive", "accept_encoding", "content_encoding", "header_length", "method")

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        self.method: str = scope["method"]
        self._receive = receive
        self._limit = limit
        self.accept_encoding = ""
        self.content_encoding = ""
        self.header_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"inference-header-content-length":
                self.header_length = value
            elif name == b"accept-encoding":
                self.accept_encoding = value.decode("latin-1")
            elif name == b"content-encoding":
                self.content_encoding = value.decode("latin-1").strip().lower()

    async def body(self) -> bytes:
        """The whole request body, decompressed, refused beyond --http-max-input-size."""
        message = await self._receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            parts = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await self._receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self._limit:
                    raise self._too_large(size)
                parts.append(chunk)
            body = b"".join(parts)
        if len(body) > self._limit:
            raise self._too_large(len(body))
        if self.content_encoding:
            body = decompress(body, self.content_encoding, self._limit)
        return body

    def _too_large(self, size: int) -> ServerError:
        return invalid(
            f"request JSON size of {size} bytes exceeds the maximum allowed input size of {self._limit} bytes. "
            "Use --http-max-input-size to increase the limit."
        )

    def inference_header_length(self) -> int | None:
        """`Inference-Header-Content-Length`, checked."""
        if self.header_length is None:
            return None
        text = self.header_length.decode("latin-1").strip()
        if not text.isdigit() or len(text) > 18:
            raise invalid(f"Unable to parse Inference-Header-Content-Length: '{text}' is not a valid length")
        return int(text)


class HttpApp:
    """KServe V2 and Triton's HTTP endpoints over one `InferenceServer`."""

    def __init__(self, server: InferenceServer, max_input_size: int) -> None:
        self.server = server
        self.max_input_size = max_input_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive, self.max_input_size)
        try:
            reply = await self._route(request, scope["path"])
        except ServerError as exc:
            reply = Reply(status_of(exc.code), orjson.dumps({"error": exc.message}))
        except MethodNotAllowedError as exc:
            reply = Reply(405, b'{"error":"Method Not Allowed"}', headers=[(b"allow", exc.allowed)])
        except Exception as exc:
            logger.exception("unexpected failure on %s %s", scope["method"], scope["path"])
            reply = Reply(500, orjson.dumps({"error": f"internal server error: {type(exc).__name__}"}))
        body = reply.body
        headers = [(b"content-type", reply.content_type)]
        if reply.headers:
            headers.extend(reply.headers)
        if request.accept_encoding and len(body) >= MIN_COMPRESSED_SIZE:
            encoding = choose_encoding(request.accept_encoding)
            if encoding:
                body = compress(body, encoding)
                headers.append((b"content-encoding", encoding.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, request: Request, path: str) -> Reply:
        parts = path.rstrip("/").split("/")
        if len(parts) < 2 or parts[0] or parts[1] != "v2":
            raise not_found("Not Found")
        if len(parts) == 2:
            _allow(request, "GET")
            return Reply(200, codec.dumps(self.server.metadata()))
        section = parts[2]
        if section == "models":
            return await self._model_route(request, parts[3:])
        if section == "health" and len(parts) == 4 and parts[3] in ("live", "ready"):
            _allow(request, "GET")
            ok = self.server.live if parts[3] == "live" else self.server.ready
            return Reply(200 if ok else 400)
        if section == "repository":
            return await self._repository_route(request, parts[3:])
        if section in _UNSUPPORTED:
            raise ServerError(ErrorCode.UNSUPPORTED, _UNSUPPORTED[section])
        raise not_found("Not Found")

    async def _model_route(self, request: Request, rest: list[str]) -> Reply:
        if rest == ["stats"]:
            _allow(request, "GET")
            return Reply(200, codec.dumps(self.server.statistics("", "")))
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
            return Reply(200, codec.dumps(self.server.model_metadata(name, version)))
        if len(action) != 1 or action[0] not in _MODEL_ACTIONS:
            if action[0] in ("generate", "generate_stream", "trace"):
                raise ServerError(ErrorCode.UNSUPPORTED, f"'{action[0]}' is not supported by naiad yet")
            raise not_found("Not Found")
        verb = action[0]
        if verb == "infer":
            _allow(request, "POST")
            return await self._infer(request, name, version)
        _allow(request, "GET")
        if verb == "ready":
            return Reply(200 if self.server.model_ready(name, version) else 400)
        if verb == "config":
            return Reply(200, codec.dumps(self.server.model_config(name, version)))
        return Reply(200, codec.dumps(self.server.statistics(name, version)))

    async def _infer(self, request: Request, name: str, version: str) -> Reply:
        header_length = request.inference_header_length()
        body = await request.body()
        if header_length == 0:
            decoded = codec.decode_raw_binary(body, self.server.model_settings(name, version))
        else:
            decoded = codec.decode_request(body, header_length, name)
        response = await self.server.infer(name, version, decoded.request)
        payload, json_length = codec.encode_response(response, decoded)
        if json_length is None:
            return Reply(200, payload)
        return Reply(200, payload, _OCTET, [(b"inference-header-content-length", str(json_length).encode())])

    async def _repository_route(self, request: Request, rest: list[str]) -> Reply:
        if rest and rest[0] not in ("index", "models"):
            rest = rest[1:]  # /v2/repository/{repository}/...: naiad serves one namespace of models
        if rest == ["index"]:
            _allow(request, "POST")
            body = await request.body()
            ready_only = False
            if body.strip():
                ready = codec.parse_object(body).get("ready", False)
                if not isinstance(ready, bool):
                    raise invalid("Invalid value for 'ready': expected a boolean")
                ready_only = ready
            return Reply(200, codec.dumps(self.server.repository_index(ready_only)))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            _allow(request, "POST")
            raise ServerError(
                ErrorCode.UNSUPPORTED,
                f"explicit model {rest[2]} needs --model-control-mode=explicit, which naiad does not support yet",
            )
        raise not_found("Not Found")


class MethodNotAllowedError(Exception):
    """A known route asked with the wrong method (405)."""

    def __init__(self, allowed: str) -> None:
        super().__init__(allowed)
        self.allowed = allowed.encode()


def _allow(request: Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowedError(method)
