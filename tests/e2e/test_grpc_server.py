"""gRPC server options end to end: TLS and mutual TLS, SIGTERM drain, compression, port reuse, keep-alive."""

from __future__ import annotations

import contextlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import FRONTEND_PROCESSES, GRPC_STACKS, RunningServer, ServerFactory
from tests.grpc_inputs import add_sub_inputs

A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.full((1, 16), 2.0, dtype=np.float32)


def add_sub_repository(root: Path) -> Path:
    repo = root / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    return repo


def assert_add_sub(client: grpcclient.InferenceServerClient, **kwargs: Any) -> None:
    """One add_sub inference through `client` gives the right sum and difference."""
    result = client.infer("add_sub", add_sub_inputs(A, B), client_timeout=10, **kwargs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def assert_refused(client: grpcclient.InferenceServerClient) -> InferenceServerException:
    """An inference through `client` is refused promptly with UNAVAILABLE (no hang until the deadline)."""
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", add_sub_inputs(A, B), client_timeout=10)
    assert time.monotonic() - started < 8, "the call hung instead of being refused"
    assert caught.value.status() == "StatusCode.UNAVAILABLE", caught.value
    return caught.value


@pytest.fixture(params=GRPC_STACKS)
def naiad(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """Servers for one test, on each gRPC stack in turn."""
    factory = ServerFactory(tmp_path, (f"--grpc-stack={request.param}",))
    yield factory
    factory.close()


def naiad_exit(repo: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run `naiad serve` that is expected to exit on its own (a bad flag or setup); its result."""
    command = [sys.executable, "-m", "naiad", "serve", f"--model-repository={repo}", "--http-address=127.0.0.1"]
    command += ["--http-port=0", "--grpc-address=127.0.0.1", "--grpc-port=0", "--allow-metrics=false"]
    command += [*([f"--frontend-process-count={FRONTEND_PROCESSES}"] if FRONTEND_PROCESSES > 1 else []), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


# TLS


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost and a client certificate, both signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed:\n{result.stderr}"


def _signed(folder: Path, name: str, subject: str, extensions: str) -> None:
    """`name`.key and `name`.pem signed by ca.pem, with the given X.509 v3 extensions."""
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-sha256", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command-line tool is not installed")
    folder = tmp_path_factory.mktemp("tls")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=naiad test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder,
    )  # fmt: skip
    _signed(
        folder,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n",
    )
    _signed(
        folder,
        "client",
        "/CN=naiad test client",
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    )
    return Certificates(
        folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem", folder / "client.key"
    )


def test_tls_serves_clients_that_trust_the_ca(tmp_path: Path, naiad: ServerFactory, certificates: Certificates) -> None:
    server = naiad.start(
        add_sub_repository(tmp_path),
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={certificates.server_cert}",
        f"--grpc-server-key={certificates.server_key}",
        grpc=True,
    )
    with grpcclient.InferenceServerClient(
        server.grpc_address, ssl=True, root_certificates=str(certificates.ca)
    ) as client:
        assert client.is_server_live() and client.is_model_ready("add_sub")
        assert_add_sub(client)
    localhost = f"localhost:{server.grpc_port}"
    with grpcclient.InferenceServerClient(localhost, ssl=True, root_certificates=str(certificates.ca)) as client:
        assert_add_sub(client)  # the DNS name in the certificate works as well as the IP address
    with grpcclient.InferenceServerClient(server.grpc_address) as plaintext:
        assert_refused(plaintext)
    wrong_ca = str(certificates.client_cert)
    with grpcclient.InferenceServerClient(server.grpc_address, ssl=True, root_certificates=wrong_ca) as untrusting:
        assert_refused(untrusting)  # a client that does not trust the server's CA does not connect
    assert server.process.poll() is None


def test_mutual_tls_needs_a_client_certificate(
    tmp_path: Path, naiad: ServerFactory, certificates: Certificates
) -> None:
    server = naiad.start(
        add_sub_repository(tmp_path),
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certificates.server_cert}",
        f"--grpc-server-key={certificates.server_key}",
        f"--grpc-root-cert={certificates.ca}",
        grpc=True,
    )
    with grpcclient.InferenceServerClient(
        server.grpc_address,
        ssl=True,
        root_certificates=str(certificates.ca),
        private_key=str(certificates.client_key),
        certificate_chain=str(certificates.client_cert),
    ) as client:
        assert_add_sub(client)
    ca = str(certificates.ca)
    with grpcclient.InferenceServerClient(server.grpc_address, ssl=True, root_certificates=ca) as anonymous:
        assert_refused(anonymous)
    with grpcclient.InferenceServerClient(server.grpc_address) as plaintext:
        assert_refused(plaintext)
    assert server.process.poll() is None


def test_tls_without_certificate_or_key_exits_with_a_clear_message(tmp_path: Path) -> None:
    repo = add_sub_repository(tmp_path)
    result = naiad_exit(repo, "--grpc-use-ssl=true")
    assert result.returncode == 1, result.stderr
    assert "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key" in result.stderr
    only_cert = naiad_exit(repo, "--grpc-use-ssl=true", f"--grpc-server-cert={tmp_path}/server.pem")
    assert only_cert.returncode == 1, only_cert.stderr
    assert "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key" in only_cert.stderr


def test_mutual_tls_without_root_certificate_exits_with_a_clear_message(
    tmp_path: Path, certificates: Certificates
) -> None:
    result = naiad_exit(
        add_sub_repository(tmp_path),
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={certificates.server_cert}",
        f"--grpc-server-key={certificates.server_key}",
    )
    assert result.returncode == 1, result.stderr
    assert "--grpc-use-ssl-mutual needs --grpc-root-cert" in result.stderr


def test_unreadable_tls_file_is_named(tmp_path: Path, certificates: Certificates) -> None:
    missing = tmp_path / "missing.key"
    result = naiad_exit(
        add_sub_repository(tmp_path),
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={certificates.server_cert}",
        f"--grpc-server-key={missing}",
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot read --grpc-server-key file '{missing}'" in result.stderr


# Graceful shutdown


MARKED_SLOW = """
import json
import time
from pathlib import Path
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.delay = float(parameters["delay_s"]["string_value"])
        self.started = Path(parameters["started_marker"]["string_value"])
        self.answer = parameters["answer"]["string_value"]

    def execute(self, requests):
        self.started.write_text("executing")
        time.sleep(self.delay)
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if self.answer == "ones":  # as many ones as the input says
                value = np.ones(int(value[0]), np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]))
        return responses
"""


def write_marked_slow(repo: Path, name: str, started: Path, answer: str) -> None:
    """A model that writes `started` when it begins executing, then takes 1 s; it echoes or answers ones."""
    parameters = {"delay_s": "1.0", "started_marker": str(started), "answer": answer}
    extra = " ".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    models.write_model(repo, name, models.identity_config(name, "TYPE_INT32", extra=extra), MARKED_SLOW)


def wait_for_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.02)


def wait_until_exiting(client: grpcclient.InferenceServerClient, timeout: float = 20) -> None:
    """Until the server, signalled, stops being ready (or stops answering) on `client`'s connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not client.is_server_ready(client_timeout=5):
                return
        except InferenceServerException:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server was still ready {timeout}s after SIGTERM")


def test_sigterm_drains_a_grpc_request_in_flight_and_refuses_new_ones(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = add_sub_repository(tmp_path)
    started = tmp_path / "started"
    write_marked_slow(repo, "slow", started, "echo")
    server = naiad.start(repo, "--exit-timeout-secs=20", grpc=True)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    value = np.array([7, 8, 9], dtype=np.int32)
    tensor = grpcclient.InferInput("INPUT0", [3], "INT32")
    tensor.set_data_from_numpy(value)
    with (
        grpcclient.InferenceServerClient(server.grpc_address) as in_flight,
        grpcclient.InferenceServerClient(server.grpc_address) as later,
    ):
        assert later.is_server_ready()  # this client's connection is open before the signal
        in_flight.async_infer("slow", [tensor], lambda result, error: answers.put((result, error)), client_timeout=30)
        wait_for_file(started)  # the request is executing (it takes 1 s)
        server.process.send_signal(signal.SIGTERM)
        wait_until_exiting(later)
        assert_refused(later)  # on a connection opened before the signal
        with grpcclient.InferenceServerClient(server.grpc_address) as fresh:
            assert_refused(fresh)  # on a new connection
        result, error = answers.get(timeout=30)
    assert error is None, str(error)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), value)
    assert server.process.wait(30) == 0, server.log()


def test_sigterm_drains_a_large_grpc_response_still_being_sent(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    started = tmp_path / "started"
    write_marked_slow(repo, "slow_large", started, "ones")
    server = naiad.start(repo, "--exit-timeout-secs=20", grpc=True)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    size = 16 * 1024 * 1024  # a 64 MiB answer: it takes a while to encode and send once the model is done
    tensor = grpcclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([size], dtype=np.int32))
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        client.async_infer(
            "slow_large", [tensor], lambda result, error: answers.put((result, error)), client_timeout=60
        )
        wait_for_file(started)
        server.process.send_signal(signal.SIGTERM)
        result, error = answers.get(timeout=60)
    assert server.process.wait(30) == 0, server.log()
    assert error is None, str(error)
    assert result.as_numpy("OUTPUT0").shape == (size,)


# Compression


class CountingProxy:
    """A TCP relay to `port` that counts the bytes flowing back from the server to the client."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.downstream = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
                threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError), source, sink:
            while data := source.recv(65536):
                if count:
                    with self._lock:
                        self.downstream += len(data)
                sink.sendall(data)

    def close(self) -> None:
        self._listener.close()


def test_high_response_compression_level_still_answers(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = add_sub_repository(tmp_path)
    models.write_model(repo, "identity", models.identity_config("identity", "TYPE_FP32"), models.IDENTITY)
    server = naiad.start(repo, "--grpc-infer-response-compression-level=high", grpc=True)
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        for algorithm in ("gzip", "deflate", None):
            assert_add_sub(client, compression_algorithm=algorithm)
        stats = client.get_inference_statistics("add_sub").model_stats[0]
        assert stats.inference_count == 3
    # The answers really are compressed: 4 MB of zeros cross the wire in a few kB.
    proxy = CountingProxy(server.grpc_port)
    zeros = np.zeros(1_000_000, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [zeros.size], "FP32")
    tensor.set_data_from_numpy(zeros)
    try:
        with grpcclient.InferenceServerClient(proxy.address) as client:
            result = client.infer("identity", [tensor], client_timeout=30)
    finally:
        proxy.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), zeros)
    assert proxy.downstream < zeros.nbytes // 10, proxy.downstream


def test_invalid_compression_level_is_refused_at_start(tmp_path: Path) -> None:
    result = naiad_exit(add_sub_repository(tmp_path), "--grpc-infer-response-compression-level=maximum")
    assert result.returncode == 2, result.stderr
    assert "--grpc-infer-response-compression-level" in result.stderr
    assert "invalid choice: 'maximum'" in result.stderr


# Port reuse


def inference_count(server: RunningServer) -> int:
    stats = requests.get(server.url + "/v2/models/add_sub/stats", timeout=10).json()
    return int(stats["model_stats"][0]["inference_count"])


def test_reuse_grpc_port_lets_two_servers_share_it(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = add_sub_repository(tmp_path)
    first = naiad.start(repo, "--reuse-grpc-port=true", grpc=True)
    # the flag given last wins over the port conftest chose
    second = naiad.start(repo, "--reuse-grpc-port=true", f"--grpc-port={first.grpc_port}", grpc=True)
    shared = first.grpc_address
    for _ in range(6):  # each client opens its own connection, which the kernel gives to either server
        with grpcclient.InferenceServerClient(shared) as client:
            assert_add_sub(client)
    assert inference_count(first) + inference_count(second) == 6
    assert first.stop() == 0
    with grpcclient.InferenceServerClient(shared) as client:
        assert_add_sub(client)  # the second server still listens on the shared port
    assert inference_count(second) >= 1


# Keep-alive and connection age


def test_keepalive_and_connection_age_flags_are_accepted(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(
        add_sub_repository(tmp_path),
        "--grpc-keepalive-time=10000",
        "--grpc-keepalive-timeout=5000",
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-max-pings-without-data=0",
        "--grpc-max-connection-age=60000",
        "--grpc-max-connection-age-grace=5000",
        grpc=True,
    )
    options = grpcclient.KeepAliveOptions(
        keepalive_time_ms=10000,
        keepalive_timeout_ms=5000,
        keepalive_permit_without_calls=True,
        http2_max_pings_without_data=0,
    )
    with grpcclient.InferenceServerClient(server.grpc_address, keepalive_options=options) as client:
        assert client.is_server_live()
        for _ in range(3):
            assert_add_sub(client)
    assert server.process.poll() is None


def test_health_watch_sees_shutdown_and_does_not_hold_it_up(tmp_path: Path, naiad: ServerFactory) -> None:
    server = naiad.start(add_sub_repository(tmp_path), grpc=True)
    with grpc.insecure_channel(server.grpc_address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(StopIteration):  # the server ends the stream itself
            next(watch)
        assert server.process.wait(30) == 0, server.log()
    # an open Watch stream must not make shutdown wait for the gRPC grace period (5 s)
    assert time.monotonic() - started < 4, server.log()
