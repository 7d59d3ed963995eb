"""`ForwardedCalls`: a gRPC call passed on whole by a front-end process gets the status and messages its method
gives, as on a connection of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from naiad.frontends.grpc.calls import INTERNAL, OK, UNIMPLEMENTED, UNKNOWN, CallError, Method
from naiad.frontends.grpc.forwarded import ForwardedCalls


async def _echo(request: bytes, context: Any) -> bytes:
    metadata = dict(context.invocation_metadata())
    return request + metadata.get("x-tag", "").encode()


OVER: list[Any] = []  # the calls whose done callbacks ran


async def _count(request: bytes, context: Any) -> AsyncIterator[bytes]:
    context.add_done_callback(OVER.append)
    for index in range(int(request)):
        yield str(index).encode()


async def _refuse(request: bytes, context: Any) -> bytes:
    raise CallError(5, "no such thing")


async def _break(request: bytes, context: Any) -> bytes:
    raise ValueError("broken")


def _decode(body: bytes) -> bytes:
    if body == b"garbage":
        raise ValueError("not a message")
    return body


def _calls() -> ForwardedCalls:
    def method(kind: str, handler: Any) -> Method:
        return Method(kind, handler, _decode, bytes)

    return ForwardedCalls(
        {
            "/s/Echo": method("unary", _echo),
            "/s/Count": method("unary_stream", _count),
            "/s/Refuse": method("unary", _refuse),
            "/s/Break": method("unary", _break),
            "/s/Chat": method("stream_stream", _echo),
        }
    )


def _run(path: str, body: bytes, metadata: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[tuple[int, str], list[bytes]]:
    sent: list[bytes] = []
    status = asyncio.run(_calls().run(path, body, list(metadata), sent.append))
    return status, sent


def test_a_unary_call_answers_its_message_with_the_call_metadata() -> None:
    assert _run("/s/Echo", b"hi", ((b"x-tag", b"!"),)) == ((OK, ""), [b"hi!"])


def test_a_server_streaming_call_sends_every_message_then_runs_its_done_callbacks() -> None:
    OVER.clear()
    assert _run("/s/Count", b"3") == ((OK, ""), [b"0", b"1", b"2"])
    assert len(OVER) == 1


def test_unknown_methods_and_bad_messages_get_tritons_statuses() -> None:
    assert _run("/s/Nothing", b"") == ((UNIMPLEMENTED, ""), [])
    assert _run("/s/Chat", b"x") == ((UNIMPLEMENTED, ""), [])  # streaming requests stay in the front end
    assert _run("/s/Echo", b"garbage") == ((INTERNAL, "Unable to parse request"), [])


def test_a_handler_s_status_or_failure_ends_the_call() -> None:
    assert _run("/s/Refuse", b"") == ((5, "no such thing"), [])
    status, sent = _run("/s/Break", b"")
    assert status == (UNKNOWN, "Unexpected error in the handler: ValueError('broken')") and not sent
