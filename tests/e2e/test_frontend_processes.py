"""Front-end processes (`--frontend-process-count`): they share the ports, their requests batch together in the one
server process, one that dies is started again while the others serve, and none outlives the server."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.conftest import RunningServer, ServerFactory
from tests.models import ADD_SUB, add_sub_config, write_model

BATCHING = "dynamic_batching { preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 5000000 }"


def _body(value: float) -> bytes:
    data = [value] * 16
    inputs = [{"name": name, "datatype": "FP32", "shape": [1, 16], "data": data} for name in ("INPUT0", "INPUT1")]
    return json.dumps({"inputs": inputs}).encode()


def _frontend_pids(server: RunningServer) -> list[int]:
    """The server's front-end processes."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.process.pid and b"naiad.frontend_processes.child" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def _connections(pid: int, port: int) -> int:
    """Established TCP connections on `port` that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


def _start(naiad: ServerFactory, tmp_path: Path, *flags: str, grpc: bool = False) -> RunningServer:
    repository = tmp_path / "models"
    write_model(repository, "add_sub", add_sub_config(batching=BATCHING), ADD_SUB)
    return naiad.start(repository, "--frontend-process-count=2", *flags, grpc=grpc)


def _wait_for(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("the condition did not come true in time")


def test_every_front_end_serves_and_their_requests_batch_together(naiad: ServerFactory, tmp_path: Path) -> None:
    server = _start(naiad, tmp_path)
    pids = _frontend_pids(server)
    assert len(pids) == 2, pids
    assert f"2 front-end processes serve HTTP and gRPC (pids {pids})" in server.log()
    # Connections until both front ends hold some (the kernel hands each to whichever process accepts first).
    connections: list[http.client.HTTPConnection] = []
    while len(connections) < 8 or not all(_connections(pid, server.port) for pid in pids):
        assert len(connections) < 64, "every connection went to one front end"
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.connect()
        connections.append(connection)
        time.sleep(0.02)
    held = {pid: _connections(pid, server.port) for pid in pids}
    assert all(held.values()), held

    def infer(connection: http.client.HTTPConnection) -> int:
        connection.request("POST", "/v2/models/add_sub/infer", _body(2.0))
        response = connection.getresponse()
        assert json.loads(response.read())["outputs"][0]["data"] == [4.0] * 16
        return response.status

    first = connections[:4] + connections[-4:]  # the last one opened is the front end that had none before
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(infer, first)) == [200] * 8
    stats = requests.get(f"{server.url}/v2/models/add_sub/stats", timeout=5).json()["model_stats"][0]
    assert stats["inference_count"] == 8
    assert stats["execution_count"] == 1  # one batch, of requests from both processes
    for connection in connections:
        connection.close()


def test_grpc_is_served_by_the_front_ends_too(naiad: ServerFactory, tmp_path: Path) -> None:
    server = _start(naiad, tmp_path, grpc=True)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_server_ready()
    assert client.get_model_metadata("add_sub").name == "add_sub"
    inputs = [grpcclient.InferInput(name, [1, 16], "FP32") for name in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(np.full((1, 16), 3.0, dtype=np.float32))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: client.infer("add_sub", inputs).as_numpy("OUTPUT0"), range(8)))
    assert all((result == 6.0).all() for result in results)
    with pytest.raises(Exception, match="Request for unknown model: 'nope' is not found"):
        client.infer("nope", inputs)


def test_a_front_end_that_dies_is_started_again_while_the_other_serves(naiad: ServerFactory, tmp_path: Path) -> None:
    server = _start(naiad, tmp_path)
    victim, survivor = _frontend_pids(server)
    os.kill(victim, signal.SIGKILL)
    # new connections meanwhile: the one left (or the listening socket's backlog, until the new one accepts)
    for _ in range(20):
        with requests.Session() as session:
            response = session.post(f"{server.url}/v2/models/add_sub/infer", data=_body(1.0), timeout=30)
        assert response.status_code == 200, response.text
    _wait_for(lambda: len(_frontend_pids(server)) == 2)
    restarted = [pid for pid in _frontend_pids(server) if pid != survivor]
    assert restarted and victim not in restarted
    log = server.log()
    assert f"(pid {victim}) was killed by SIGKILL; its connections are lost; starting it again" in log
    _wait_for(lambda: f"(pid {restarted[0]}) serves again" in server.log())
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    assert server.stop() == 0


def test_front_ends_stop_with_the_server_and_never_outlive_it(naiad: ServerFactory, tmp_path: Path) -> None:
    server = _start(naiad, tmp_path)
    pids = _frontend_pids(server)
    assert server.stop(signal.SIGTERM) == 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    killed = _start(naiad, tmp_path / "second")
    pids = _frontend_pids(killed)
    killed.process.kill()
    killed.process.wait()
    _wait_for(lambda: not [pid for pid in pids if _alive(pid)], timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_log_lines_of_a_front_end_reach_the_server_log(naiad: ServerFactory, tmp_path: Path) -> None:
    server = _start(naiad, tmp_path, "--log-verbose=1")
    log = server.log()
    for pid in _frontend_pids(server):  # each one's verbose line, under its own pid
        assert any(
            f" {pid} naiad.frontend] front-end process {i} serves (HTTP: True, gRPC: False)" in log for i in (1, 2)
        )


def test_grpcio_stack_cannot_serve_from_front_end_processes(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "naiad", "serve", f"--model-repository={tmp_path}", "--frontend-process-count=2",
            "--grpc-stack=grpcio",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--grpc-stack=grpcio serves from the server process only" in result.stderr
