"""`ForwardedCalls`: the gRPC calls a front-end process passes on whole (all but inference), answered in the server
process by the method their path names, as the call would have been answered on a connection of its own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from naiad.frontends.grpc.calls import INTERNAL, OK, UNIMPLEMENTED, UNKNOWN, CallContext, CallError, Method

log = logging.getLogger("naiad.grpc")


class ForwardedCall:
    """A call's metadata, and what is to run once it is over."""

    __slots__ = ("done_callbacks", "metadata")

    def __init__(self, metadata: list[tuple[bytes, bytes]]) -> None:
        self.metadata = metadata
        self.done_callbacks: list[Callable[[Any], None]] = []


class ForwardedCalls:
    """Runs unary and server-streaming methods on a request message's bytes."""

    def __init__(self, methods: Mapping[str, Method]) -> None:
        self._methods = {path: method for path, method in methods.items() if method.kind in ("unary", "unary_stream")}

    async def run(
        self, path: str, body: bytes, metadata: list[tuple[bytes, bytes]], send: Callable[[bytes], None]
    ) -> tuple[int, str]:
        """Run the method `path` names on `body`, each response message to `send`; the status and its message."""
        method = self._methods.get(path)
        if method is None:
            return UNIMPLEMENTED, ""  # Triton's status, with no message
        try:
            request = method.decode(body)
        except Exception:  # protobuf's DecodeError and friends
            return INTERNAL, "Unable to parse request"  # Triton's words
        call = ForwardedCall(metadata)
        context = CallContext(call)
        try:
            if method.kind == "unary":
                send(method.encode(await method.handler(request, context)))
            else:
                async for response in method.handler(request, context):
                    send(method.encode(response))
        except CallError as exc:
            return exc.code, exc.message
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("gRPC call failed")
            return UNKNOWN, f"Unexpected error in the handler: {exc!r}"
        finally:
            for callback in call.done_callbacks:
                callback(call)
        return OK, ""
