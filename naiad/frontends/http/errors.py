"""`ErrorCode` → HTTP status, and the `{"error": "..."}` body, as Triton answers them."""

from __future__ import annotations

from naiad.domain.errors import ErrorCode

STATUS = {
    ErrorCode.INTERNAL: 500,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.INVALID_ARG: 400,
    ErrorCode.UNKNOWN: 400,
    ErrorCode.ALREADY_EXISTS: 400,
    ErrorCode.CANCELLED: 400,
}


def status_of(code: ErrorCode) -> int:
    """The HTTP status for an error code."""
    return STATUS.get(code, 400)
