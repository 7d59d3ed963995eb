"""Fixtures shared by every test room: starting a real `python -m naiad serve` process on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import requests

Until = Literal["ready", "started", "live"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """A naiad server process and how to reach it."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log_path: Path, grpc_port: int, metrics_port: int
    ) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"
        self.grpc_port = grpc_port
        self.grpc_address = f"127.0.0.1:{grpc_port}"
        self.metrics_port = metrics_port
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log_path = log_path

    def log(self) -> str:
        """Everything the server has written to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server and wait for it to exit; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"naiad did not exit within {timeout}s of signal {sig}:\n{self.log()}") from None


# The suite runs again with every server's HTTP and gRPC in front-end processes (`make test` does both).
FRONTEND_PROCESSES = int(os.environ.get("NAIAD_TEST_FRONTEND_PROCESSES", "1"))


def start_server(
    repository: Path | str,
    *flags: str,
    log_dir: Path,
    until: Until = "ready",
    grpc: bool = False,
    metrics: bool = False,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start `python -m naiad serve` on `repository`; wait `until` it is ready, has finished starting (its models
    loaded or failed: it logs "naiad is ready", ready or not), or is merely live (its models may still be loading).

    gRPC and metrics are off unless asked for; their ports are chosen either way. `env` replaces the environment."""
    port = free_port()
    grpc_port = free_port()
    metrics_port = free_port()
    log_path = log_dir / f"naiad-{port}.log"
    command = [
        sys.executable,
        "-m",
        "naiad",
        "serve",
        f"--model-repository={repository}",
        f"--http-port={port}",
        "--http-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--grpc-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        *(["--metrics-address=127.0.0.1"] if metrics else []),
        f"--allow-grpc={str(grpc).lower()}",
        f"--allow-metrics={str(metrics).lower()}",
        *([f"--frontend-process-count={FRONTEND_PROCESSES}"] if FRONTEND_PROCESSES > 1 else []),
        *flags,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env if env is not None else {**os.environ}
        )
    server = RunningServer(process, port, log_path, grpc_port, metrics_port)
    log_files = [Path(flag.split("=", 1)[1]) for flag in flags if flag.startswith("--log-file=")] or [log_path]
    deadline = time.monotonic() + 60
    path = "/v2/health/ready" if until == "ready" else "/v2/health/live"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"naiad exited with {process.returncode}:\n{server.log()}")
        try:
            if requests.get(server.url + path, timeout=1).status_code == 200 and (
                until != "started" or _has_started(log_files[-1])
            ):
                return server
        except (requests.ConnectionError, requests.Timeout):  # a starting machine may be slow to answer
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"naiad was not {until} within 60s:\n{server.log()}")


def _has_started(log_file: Path) -> bool:
    return log_file.exists() and "naiad is ready" in log_file.read_text(errors="replace")


class ServerFactory:
    """Starts servers and stops whatever is still running at the end."""

    def __init__(self, log_dir: Path, flags: tuple[str, ...] = ()) -> None:
        self._log_dir = log_dir
        self._flags = flags  # before each start's own, which win
        self._started: list[RunningServer] = []

    def start(
        self,
        repository: Path | str,
        *flags: str,
        until: Until = "ready",
        grpc: bool = False,
        metrics: bool = False,
        env: dict[str, str] | None = None,
    ) -> RunningServer:
        """Start a server on `repository` with extra command-line flags (gRPC and metrics when asked)."""
        server = start_server(
            repository, *self._flags, *flags, log_dir=self._log_dir, until=until, grpc=grpc, metrics=metrics, env=env
        )
        self._started.append(server)
        return server

    def close(self) -> None:
        """Kill every server still running."""
        for server in self._started:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()


# --grpc-stack: the gRPC tests run on both, but with front-end processes, which only naiad's stack has
GRPC_STACKS = ("naiad", "grpcio") if FRONTEND_PROCESSES == 1 else ("naiad",)


@pytest.fixture
def naiad(tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers for one test: `naiad.start(repository, *flags)`."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()
