"""Triton's perf_analyzer load generator against a real naiad server, over gRPC and HTTP."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RunningServer, ServerFactory

pytestmark = pytest.mark.peers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
CONCURRENCIES = [1, 4]  # --concurrency-range 1:4:3


def perf_analyzer() -> Path:
    """The perf_analyzer that ../shared/peers/setup.sh installs, or a skip saying how to get it."""
    binary = Path(os.environ.get("PEERS_DIR", "/tmp/peers")) / "perf_analyzer"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"perf_analyzer not found at {binary}: run ../shared/peers/setup.sh (PEERS_DIR sets where)")
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    perf_analyzer()
    root = tmp_path_factory.mktemp("perf_analyzer")
    repo = root / "models"
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub", ignore=shutil.ignore_patterns("__pycache__"))
    factory = ServerFactory(root)
    yield factory.start(repo, grpc=True)
    factory.close()


def inference_count(server: RunningServer) -> int:
    reply = requests.get(server.url + "/v2/models/add_sub/stats", timeout=10)
    assert reply.status_code == 200, reply.text
    return int(reply.json()["model_stats"][0]["inference_count"])


@pytest.mark.parametrize("protocol", ["grpc", "grpc-streaming", "http"])
def test_perf_analyzer_measures_add_sub(server: RunningServer, protocol: str) -> None:
    address = server.grpc_address if protocol.startswith("grpc") else server.address
    before = inference_count(server)
    command = [
        str(perf_analyzer()),
        "-m", "add_sub",
        "-u", address,
        "-i", protocol.split("-")[0],
        *(["--streaming"] if protocol == "grpc-streaming" else []),
        "--concurrency-range", "1:4:3",
        "-p", "1000",
        "--input-data", "random",
        "--max-trials", "10",
        "-s", "100",  # noisy machines: three windows within 2x of each other are stable enough here
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"perf_analyzer ran past 120 s:\n{exc.stdout!r}\n{exc.stderr!r}") from None
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    problems = [line for line in output.splitlines() if "error" in line.lower() or "failed" in line.lower()]
    assert not problems, output

    measured = [int(m) for m in re.findall(r"^Request concurrency: (\d+)$", result.stdout, re.MULTILINE)]
    assert measured == CONCURRENCIES, output
    throughputs = [float(t) for t in re.findall(r"^\s+Throughput: ([\d.]+) infer/sec$", result.stdout, re.MULTILINE)]
    assert len(throughputs) == len(CONCURRENCIES), output
    assert all(throughput > 0 for throughput in throughputs), output
    summary = re.findall(r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec", result.stdout, re.MULTILINE)
    assert [int(c) for c, _ in summary] == CONCURRENCIES and all(float(t) > 0 for _, t in summary), output

    # perf_analyzer's "Server:" section, read from naiad's statistics extension over the same protocol, agrees
    # with what the client counted in each window (give or take the requests in flight at a window's edges, and
    # those finishing while perf_analyzer fetches the statistics on a busy machine).
    blocks = re.findall(
        r"^Request concurrency: (\d+)\n\s+Client:\s+Request count: (\d+).*?"
        r"Server:\s+Inference count: (\d+)\s+Execution count: (\d+)\s+Successful request count: (\d+)",
        result.stdout,
        re.MULTILINE | re.DOTALL,
    )
    assert len(blocks) == len(CONCURRENCIES), output
    for concurrency, sent, inferences, executions, successes in ((int(x) for x in block) for block in blocks):
        assert inferences == successes > 0 and 0 < executions <= inferences, output
        assert abs(inferences - sent) <= 2 * concurrency + sent // 50, output

    # naiad counted the traffic: at least every request perf_analyzer reports over its measurement windows
    # (it also sends requests outside them, while warming up and in windows it discards).
    measured_requests = sum(int(n) for n in re.findall(r"^\s+Request count: (\d+)$", result.stdout, re.MULTILINE))
    assert measured_requests > 0, output
    assert inference_count(server) - before >= measured_requests
    assert server.process.poll() is None, server.log()
