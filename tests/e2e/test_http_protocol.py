"""The HTTP/1.1 connection layer over raw sockets: keep-alive, pipelining, 100-continue, chunked bodies, HEAD,
`Connection: close` and malformed requests."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests import models
from tests.conftest import RunningServer, ServerFactory

BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "INT32", "data": [1, 2, 3]}]}, separators=(",", ":")
).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("protocol")
    repo = root / "models"
    models.write_model(repo, "identity", models.identity_config("identity", "TYPE_INT32"), models.IDENTITY)
    factory = ServerFactory(root)
    yield factory.start(repo, "--http-max-input-size=4096")
    factory.close()


def connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket; what follows it stays in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a full response")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a body")
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body
    )


def test_keep_alive_serves_many_requests_on_one_connection(server: RunningServer) -> None:
    with connect(server) as sock:
        buffer = bytearray()
        for _ in range(5):
            sock.sendall(post(b"/v2/models/identity/infer", BODY))
            status, headers, body = read_response(sock, buffer)
            assert status == 200 and "connection" not in headers
            assert json.loads(body)["outputs"][0]["data"] == [1, 2, 3]


def test_pipelined_requests_are_answered_in_order(server: RunningServer) -> None:
    requests_ = [
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        post(b"/v2/models/identity/infer", BODY),
        b"GET /v2/models/nope HTTP/1.1\r\nHost: x\r\n\r\n",
        post(b"/v2/models/identity/infer", BODY.replace(b"[1,2,3]", b"[7,8,9]")),
    ]
    with connect(server) as sock:
        sock.sendall(b"".join(requests_))
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in requests_]
    assert [status for status, _, _ in answers] == [200, 200, 404, 200]
    assert json.loads(answers[1][2])["outputs"][0]["data"] == [1, 2, 3]
    assert json.loads(answers[3][2])["outputs"][0]["data"] == [7, 8, 9]


def test_expect_100_continue(server: RunningServer) -> None:
    with connect(server) as sock:
        head = post(b"/v2/models/identity/infer", b"", b"Expect: 100-continue\r\n").replace(
            b"Content-Length: 0", b"Content-Length: %d" % len(BODY)
        )
        sock.sendall(head)
        buffer = bytearray()
        status, _, _ = read_response(sock, buffer)
        assert status == 100
        sock.sendall(BODY)
        status, _, body = read_response(sock, buffer)
        assert status == 200 and json.loads(body)["outputs"][0]["data"] == [1, 2, 3]


def test_chunked_request_body(server: RunningServer) -> None:
    chunks = [BODY[:10], BODY[10:40], BODY[40:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    request = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded
    with connect(server) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [1, 2, 3]


def test_connection_close_is_honoured(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buffer = bytearray()
        status, headers, _ = read_response(sock, buffer)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(10) == b""


def test_http_1_0_closes_after_the_response(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        status, _, _ = read_response(sock, bytearray())
        assert status == 200
        assert sock.recv(10) == b""


def test_malformed_request_gets_400_and_close(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, headers, body = read_response(sock, bytearray())
        assert status == 400 and headers["connection"] == "close"
        assert "invalid HTTP request" in json.loads(body)["error"]
        assert sock.recv(10) == b""


def test_body_over_the_limit_is_refused_and_the_connection_survives(server: RunningServer) -> None:
    big = b'{"inputs": [], "pad": "' + b"x" * 10000 + b'"}'
    with connect(server) as sock:
        buffer = bytearray()
        sock.sendall(post(b"/v2/models/identity/infer", big))
        status, _, body = read_response(sock, buffer)
        assert status == 400
        expected = f"request JSON size of {len(big)} bytes exceeds the maximum allowed input size of 4096"
        assert expected in json.loads(body)["error"]
        sock.sendall(post(b"/v2/models/identity/infer", BODY))
        assert read_response(sock, buffer)[0] == 200


def test_percent_encoded_path_and_query_string(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/models/%69dentity?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
    assert status == 200 and json.loads(body)["name"] == "identity"
