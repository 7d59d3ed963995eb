"""The gRPC service's HTTP/2, on both stacks: deadlines, cancellation, flow control, pings, keep-alive, connection age
and what is not gRPC, driven by grpcio clients and by a raw HTTP/2 client (h2)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import GRPC_STACKS, RunningServer, ServerFactory

SLOW = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(float(value.flat[0]))
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]))
        return answers
"""


@pytest.fixture(params=GRPC_STACKS)
def naiad(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path, (f"--grpc-stack={request.param}",))
    yield factory
    factory.close()


def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "slow", models.identity_config("slow", "TYPE_FP32"), SLOW)
    models.write_model(repo, "identity", models.identity_config("identity", "TYPE_FP32"), models.IDENTITY)
    return repo


def sleeping(seconds: float) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([seconds], dtype=np.float32))
    return [tensor]


def test_deadline_ends_the_call_and_the_connection_serves_on(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(repository(tmp_path), grpc=True)
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as caught:
            client.infer("slow", sleeping(1.5), client_timeout=0.3)
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", caught.value
        assert time.monotonic() - started < 1.2
        result = client.infer("slow", sleeping(0.0), client_timeout=10)
        assert result.as_numpy("OUTPUT0").tolist() == [0.0]


def test_a_cancelled_call_leaves_the_channel_serving(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(repository(tmp_path), grpc=True)
    request = pb.ModelInferRequest(model_name="slow")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(0.5)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        future = stub.ModelInfer.future(request)
        time.sleep(0.1)
        assert future.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
        request.inputs[0].contents.fp32_contents[0] = 0.0
        answer = stub.ModelInfer(request, timeout=10)
        assert answer.outputs[0].name == "OUTPUT0"


def test_unknown_method_is_unimplemented(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(repository(tmp_path), grpc=True)
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchCall")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_large_messages_both_ways(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(repository(tmp_path), grpc=True)
    value = np.arange(6_000_000, dtype=np.float32)  # 24 MB each way: many frames and window updates
    tensor = grpcclient.InferInput("INPUT0", [value.size], "FP32")
    tensor.set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        for _ in range(2):
            np.testing.assert_array_equal(
                client.infer("identity", [tensor], client_timeout=60).as_numpy("OUTPUT0"), value
            )


# A raw HTTP/2 client

SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


class RawClient:
    """An HTTP/2 connection driven by hand: what a grpcio client would never send, and what it would hide."""

    def __init__(self, server: RunningServer, window: int = 65_535) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.h2.initiate_connection()
        self.history: list[h2.events.Event] = []  # every event received
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def events(self, until: type, timeout: float = 10) -> list[h2.events.Event]:
        """Events received until one of type `until` (or the connection closes)."""
        seen: list[h2.events.Event] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            if not data:
                seen.append(h2.events.ConnectionTerminated())
                return seen
            try:
                received = self.h2.receive_data(data)
                seen += received
                self.history += received
            except h2.exceptions.ProtocolError:  # frames after a GOAWAY (grpc core pings after its first one)
                if self.h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
                    raise
                seen.append(h2.events.ConnectionTerminated())
                return seen
            self.flush()
            if any(isinstance(event, until) for event in seen):
                return seen
        return seen

    def call(
        self, path: str, message: bytes | None, extra: list[tuple[bytes, bytes]] | None = None, repeat: int = 1
    ) -> int:
        """A call's headers, then `message` (`repeat` times) and the end of the stream; None: headers alone."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, grpc_headers(path) + (extra or []), end_stream=message is None)
        if message is None:
            self.flush()
            return stream
        body = memoryview((b"\x00" + len(message).to_bytes(4, "big") + message) * repeat)
        while body:
            room = min(self.h2.local_flow_control_window(stream), self.h2.max_outbound_frame_size)
            if room == 0:
                self.events(until=h2.events.WindowUpdated, timeout=5)
                continue
            self.h2.send_data(stream, body[:room].tobytes(), end_stream=len(body) <= room)
            body = body[room:]
            self.flush()
        return stream

    def close(self) -> None:
        self.sock.close()


def grpc_headers(path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


def h2_preface() -> bytes:
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    return connection.data_to_send()


@pytest.fixture
def raw_server(tmp_path: Path, naiad: ServerFactory) -> RunningServer:
    return naiad.start(repository(tmp_path), grpc=True)


def test_response_waits_for_the_clients_flow_control_window(raw_server: RunningServer) -> None:
    client = RawClient(raw_server, window=65_535)
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[100_000])
    request.raw_input_contents.append(np.ones(100_000, dtype=np.float32).tobytes())
    stream = client.call("/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    received = 0
    ended = False
    for event in client.events(until=h2.events.StreamEnded, timeout=2):
        if isinstance(event, h2.events.DataReceived):
            received += event.flow_controlled_length
        ended = ended or isinstance(event, h2.events.StreamEnded)
    assert not ended and 0 < received <= 65_535  # the server stops at the window we gave
    body = bytearray()
    deadline = time.monotonic() + 20
    while not ended and time.monotonic() < deadline:
        client.h2.increment_flow_control_window(1 << 20)
        client.h2.increment_flow_control_window(1 << 20, stream_id=stream)
        client.flush()
        for event in client.events(until=h2.events.StreamEnded, timeout=1):
            if isinstance(event, h2.events.DataReceived):
                body += event.data
            ended = ended or isinstance(event, h2.events.StreamEnded)
    client.close()
    assert ended
    assert len(body) + received > 400_000


def test_too_many_pings_end_the_connection(raw_server: RunningServer) -> None:
    client = RawClient(raw_server)
    client.events(until=h2.events.RemoteSettingsChanged, timeout=2)
    seen: list[h2.events.Event] = []
    for n in range(5):
        if any(isinstance(event, h2.events.ConnectionTerminated) for event in seen):
            break
        client.h2.ping(n.to_bytes(8, "big"))
        client.flush()
        seen += client.events(until=h2.events.PingAckReceived, timeout=1)
    else:
        seen += client.events(until=h2.events.ConnectionTerminated, timeout=2)
    client.close()
    ended = [event for event in seen if isinstance(event, h2.events.ConnectionTerminated)]
    assert ended, seen
    goaway = ended[0]
    if goaway.error_code is not None:  # a GOAWAY came before the close
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert goaway.additional_data == b"too_many_pings"


def test_not_http2_is_closed(raw_server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", raw_server.grpc_port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return
        raise AssertionError("the connection stayed open")


@pytest.fixture
def naiad_stack(tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers on naiad's own stack only."""
    factory = ServerFactory(tmp_path, ("--grpc-stack=naiad",))
    yield factory
    factory.close()


def test_keepalive_pings_close_a_client_that_does_not_answer(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    """As grpc documents --grpc-keepalive-timeout; grpcio's server (and so Triton's) sends the ping but was seen
    to keep the connection open for good when the answer never came."""
    server = naiad_stack.start(
        repository(tmp_path),
        "--grpc-keepalive-time=300",
        "--grpc-keepalive-timeout=300",
        "--grpc-keepalive-permit-without-calls=true",
        grpc=True,
    )
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10)
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    connection = h2.connection.H2Connection(config=config)
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    started = time.monotonic()
    pinged = False
    while time.monotonic() - started < 10:
        data = sock.recv(65536)
        if not data:
            break
        for event in connection.receive_data(data):
            pinged = pinged or isinstance(event, h2.events.PingReceived)
            if isinstance(event, h2.events.RemoteSettingsChanged):
                sock.sendall(SETTINGS_ACK)  # only this: what h2 queued (the PING's ACK among it) is never sent
    sock.close()
    assert pinged
    assert time.monotonic() - started < 5


def test_connection_age_sends_goaway(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(
        repository(tmp_path), "--grpc-max-connection-age=500", "--grpc-max-connection-age-grace=500", grpc=True
    )
    client = RawClient(server)
    started = time.monotonic()
    seen = client.events(until=h2.events.ConnectionTerminated, timeout=10)
    client.close()
    assert any(isinstance(event, h2.events.ConnectionTerminated) for event in seen), seen
    assert time.monotonic() - started < 5


# What a hostile or broken client sends (naiad's stack)


def raw_naiad(tmp_path: Path, factory: ServerFactory, *flags: str) -> RawClient:
    client = RawClient(factory.start(repository(tmp_path), *flags, grpc=True))
    client.events(until=h2.events.SettingsAcknowledged, timeout=5)
    return client


def outcome(client: RawClient, stream: int, timeout: float = 10) -> dict[bytes, bytes]:
    """The trailers (or trailers-only headers) that end `stream`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found: dict[bytes, bytes] = {}
        for event in client.history:
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and event.stream_id == stream:
                found.update(dict(event.headers))
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                return found
        client.events(until=h2.events.StreamEnded, timeout=1)
    raise AssertionError(f"stream {stream} did not end")


def test_a_bad_header_fails_only_its_own_call(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack)
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1]).contents.fp32_contents.append(0.3)
    slow = client.call("/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
    bad = client.call(
        "/inference.GRPCInferenceService/ServerLive", b"", extra=[(b"x-meta", b"\xff\xfe"), (b"grpc-encoding", b"\xff")]
    )
    assert outcome(client, bad)[b"grpc-status"] == b"12"  # the encoding is refused: that call only
    assert outcome(client, slow)[b"grpc-status"] == b"0"  # the other call on the connection is answered
    client.close()


def test_metadata_over_the_limit_fails_only_that_call(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(repository(tmp_path), grpc=True)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stream = stub.ModelStreamInfer(iter([]), timeout=30)  # open on the same connection meanwhile
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerLive(pb.ServerLiveRequest(), metadata=[("x-big", "x" * 70_000)], timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert list(stream) == []


def test_headers_alone_get_an_answer(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack)
    unary = client.call("/inference.GRPCInferenceService/ServerLive", None)
    streaming = client.call("/inference.GRPCInferenceService/ModelStreamInfer", None)
    assert outcome(client, unary)[b"grpc-status"] != b"0"  # no message: an error, at once
    assert outcome(client, streaming)[b"grpc-status"] == b"0"  # an empty stream: done
    client.close()


def test_a_second_message_on_a_unary_call_fails_it(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack)
    stream = client.call("/inference.GRPCInferenceService/ServerLive", b"", repeat=3)
    assert outcome(client, stream)[b"grpc-status"] == b"13"
    client.close()


def test_a_reset_flood_ends_the_connection(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack)
    for _ in range(1_500):
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, grpc_headers("/inference.GRPCInferenceService/ServerLive"))
        client.h2.reset_stream(stream)
    client.flush()
    ended = [
        e for e in client.events(until=h2.events.ConnectionTerminated) if isinstance(e, h2.events.ConnectionTerminated)
    ]
    client.close()
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_a_client_that_floods_without_reading_is_cut_off(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    server = naiad_stack.start(repository(tmp_path), grpc=True)
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(h2_preface())
        flood = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"\x00" * 8  # PING, over and over
        deadline = time.monotonic() + 20
        with pytest.raises(OSError):  # the server closes the connection: a send fails
            while time.monotonic() < deadline:
                sock.sendall(flood * 1000)
        assert time.monotonic() < deadline


def test_server_keepalive_pings_go_on_while_a_stream_is_idle(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack, "--grpc-keepalive-time=200")
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream, grpc_headers("/inference.GRPCInferenceService/ModelStreamInfer"))
    client.flush()
    pings = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and pings < 4:
        pings += sum(isinstance(e, h2.events.PingReceived) for e in client.events(until=h2.events.PingReceived))
    client.close()
    assert pings >= 4


def test_response_compression_picks_among_what_the_client_accepts(tmp_path: Path, naiad_stack: ServerFactory) -> None:
    client = raw_naiad(tmp_path, naiad_stack, "--grpc-infer-response-compression-level=medium")
    only_gzip = client.call(
        "/inference.GRPCInferenceService/ServerLive", b"", extra=[(b"grpc-accept-encoding", b"gzip")]
    )
    assert outcome(client, only_gzip)[b"grpc-status"] == b"0"
    answered = [
        dict(event.headers)
        for event in client.history
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id == only_gzip
    ]
    assert answered[0][b"grpc-encoding"] == b"gzip"  # medium of one algorithm: that one
    client.close()
