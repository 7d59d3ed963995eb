"""`ServerError` and the protocol-neutral `ErrorCode` each front end maps to its own status codes."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Triton's error codes; HTTP and gRPC each map them to their own status."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class ServerError(Exception):
    """An error with a code and a message meant for the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServerError({self.code.name}, {self.message!r})"


class RefusedError(ServerError):
    """A request refused before it was queued, told through the response callback rather than raised (the server
    is in another process): a stream answers it as one it never started."""


def invalid(message: str) -> ServerError:
    """A client's mistake (HTTP 400)."""
    return ServerError(ErrorCode.INVALID_ARG, message)


def not_found(message: str) -> ServerError:
    """An unknown model, version or route (HTTP 404)."""
    return ServerError(ErrorCode.NOT_FOUND, message)


def unavailable(message: str) -> ServerError:
    """Not ready, queue full or timed out (HTTP 503)."""
    return ServerError(ErrorCode.UNAVAILABLE, message)


def internal(message: str) -> ServerError:
    """The model's own failure (HTTP 500)."""
    return ServerError(ErrorCode.INTERNAL, message)


# The protocol extensions naiad does not have, and what a client asking for one is told, over either protocol.
MISSING_EXTENSIONS = {
    "system_shared_memory": "system shared memory is not supported by naiad",
    "cuda_shared_memory": "CUDA shared memory is not supported by naiad",
    "trace": "tracing is not supported by naiad yet",
    "logging": "the logging API is not supported by naiad yet",
}


def missing_extension(extension: str) -> ServerError:
    """The refusal of an extension of `MISSING_EXTENSIONS` (HTTP 501, gRPC UNIMPLEMENTED)."""
    return ServerError(ErrorCode.UNSUPPORTED, MISSING_EXTENSIONS[extension])
