"""Start-up, readiness and shutdown of a real server process: failed models, exit-on-error, draining on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests import models
from tests.conftest import ServerFactory

BROKEN_SYNTAX = "import triton_python_backend_utils as pb_utils\nclass TritonPythonModel:\n    def execute(self, r)\n"
BROKEN_INIT = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("cannot open weights.bin")

    def execute(self, requests):
        return []
"""


def repository_with_broken_models(root: Path) -> Path:
    repo = root / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "bad_syntax", models.identity_config("bad_syntax", "TYPE_INT32"), BROKEN_SYNTAX)
    models.write_model(repo, "bad_init", models.identity_config("bad_init", "TYPE_INT32"), BROKEN_INIT)
    models.write_model(repo, "bad_config", 'name: "other_name"\nbackend: "python"\n', models.IDENTITY)
    models.write_model(repo, "bad_backend", 'backend: "tensorrt"\n', models.IDENTITY)
    return repo


def run_naiad(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naiad", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_default_exit_on_error_stops_startup_naming_model(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "bad_init", models.identity_config("bad_init", "TYPE_INT32"), BROKEN_INIT)
    result = run_naiad("serve", f"--model-repository={repo}", "--http-port=0", "--allow-grpc=false")
    assert result.returncode == 1
    assert "bad_init" in result.stderr
    assert "RuntimeError: cannot open weights.bin" in result.stderr


def test_failed_models_are_unavailable_with_reasons(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = repository_with_broken_models(tmp_path)
    server = naiad.start(repo, "--exit-on-error=false", until="started")
    assert requests.get(server.url + "/v2/health/live").status_code == 200
    assert requests.get(server.url + "/v2/health/ready").status_code == 400  # strict readiness: not all ready
    index = {entry["name"]: entry for entry in requests.post(server.url + "/v2/repository/index").json()}
    assert index["add_sub"]["state"] == "READY"
    assert index["bad_syntax"]["state"] == "UNAVAILABLE"
    assert "SyntaxError" in index["bad_syntax"]["reason"]
    assert "RuntimeError: cannot open weights.bin" in index["bad_init"]["reason"]
    assert "'other_name' does not match the model directory name 'bad_config'" in index["bad_config"]["reason"]
    assert "backend 'tensorrt'" in index["bad_backend"]["reason"]
    ready_only = requests.post(server.url + "/v2/repository/index", json={"ready": True}).json()
    assert [entry["name"] for entry in ready_only] == ["add_sub"]
    reply = requests.post(
        server.url + "/v2/models/bad_init/infer",
        json={"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]},
    )
    assert reply.status_code == 404
    assert reply.json()["error"] == "Request for unknown model: 'bad_init' has no available versions"
    version = requests.get(server.url + "/v2/models/bad_init/versions/1/ready")
    assert version.status_code == 400
    body = {
        "inputs": [{"name": n, "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16} for n in ("INPUT0", "INPUT1")]
    }
    assert requests.post(server.url + "/v2/models/add_sub/infer", json=body).status_code == 200
    assert "bad_init" in server.log() and "cannot open weights.bin" in server.log()


def test_version_not_ready_is_503(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    folder = models.write_model(
        repo,
        "two_versions",
        models.identity_config("two_versions", "TYPE_INT32", extra="version_policy: { all: { } }"),
        models.IDENTITY,
        versions=(1, 2),
    )
    (folder / "2" / "model.py").write_text(BROKEN_INIT)
    server = naiad.start(repo, "--exit-on-error=false", "--strict-readiness=false")
    assert requests.get(server.url + "/v2/health/ready").status_code == 200  # not strict: ready anyway
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [5]}]}
    two = requests.post(server.url + "/v2/models/two_versions/versions/2/infer", json=body)
    assert two.status_code == 503
    assert two.json()["error"] == "Request for unknown model: 'two_versions' version 2 is not at ready state"
    latest = requests.post(server.url + "/v2/models/two_versions/infer", json=body)
    assert latest.status_code == 200 and latest.json()["model_version"] == "1"


def test_sigterm_drains_in_flight_requests_then_finalizes(
    tmp_path: Path, naiad: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "finalized.txt"
    monkeypatch.setenv("NAIAD_TEST_FINALIZE_MARKER", str(marker))
    repo = tmp_path / "models"
    models.write_model(
        repo,
        "slow",
        models.identity_config("slow", "TYPE_INT32", extra="instance_group [{ count: 4 }]"),
        models.FINALIZE_MARKER,
    )
    server = naiad.start(repo, "--exit-timeout-secs=20")
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [9]}]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(requests.post, server.url + "/v2/models/slow/infer", json=body) for _ in range(4)]
        time.sleep(0.4)  # the four requests are executing (each takes 1 s)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        replies = [future.result(timeout=30) for future in futures]
    assert [reply.status_code for reply in replies] == [200] * 4
    assert all(reply.json()["outputs"][0]["data"] == [9] for reply in replies)
    assert server.process.wait(30) == 0
    assert marker.read_text() == "finalized"
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/v2/health/live", timeout=2)


def test_not_ready_during_shutdown(tmp_path: Path, naiad: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAIAD_TEST_FINALIZE_MARKER", str(tmp_path / "marker"))
    repo = tmp_path / "models"
    models.write_model(repo, "slow", models.identity_config("slow", "TYPE_INT32"), models.FINALIZE_MARKER)
    server = naiad.start(repo)
    session = requests.Session()  # a keep-alive connection opened before the signal
    assert session.get(server.url + "/v2/health/ready").status_code == 200
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(requests.post, server.url + "/v2/models/slow/infer", json=body)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert session.get(server.url + "/v2/health/ready").status_code == 400
        assert session.get(server.url + "/v2/health/live").status_code == 200
        assert in_flight.result(timeout=30).status_code == 200
    assert server.process.wait(30) == 0


def test_repeated_sigterm_still_ends_in_a_clean_exit(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "echo", models.identity_config("echo", "TYPE_INT32"), models.IDENTITY)
    server = naiad.start(repo)
    while server.process.poll() is None:  # a signal every 5 ms until the very end, as an impatient supervisor
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert server.process.returncode == 0, server.log()
    assert "all models unloaded; exiting" in server.log()


# Its initialize waits until the file the test names exists: the model loads exactly as long as the test wants.
WAITS_FOR_RELEASE = """
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        while not os.path.exists(os.environ["NAIAD_TEST_RELEASE"]):
            time.sleep(0.02)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0")
                                        .as_numpy())])
            for r in requests
        ]
"""


def test_live_and_not_ready_while_the_models_load(
    tmp_path: Path, naiad: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = tmp_path / "release"
    monkeypatch.setenv("NAIAD_TEST_RELEASE", str(release))
    repo = tmp_path / "models"
    models.write_model(repo, "slow_start", models.identity_config("slow_start", "TYPE_INT32"), WAITS_FOR_RELEASE)
    server = naiad.start(repo, grpc=True, metrics=True, until="live")
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 400
    assert requests.get(server.url + "/v2/models/slow_start/ready", timeout=5).status_code == 400
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [5]}]}
    early = requests.post(server.url + "/v2/models/slow_start/infer", json=body, timeout=5)
    assert early.status_code in (400, 404, 503) and "slow_start" in early.json()["error"]
    assert requests.get(server.metrics_url, timeout=5).status_code == 200
    assert "naiad is ready" not in server.log()
    release.touch()
    deadline = time.monotonic() + 30
    while requests.get(server.url + "/v2/health/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    reply = requests.post(server.url + "/v2/models/slow_start/infer", json=body, timeout=5)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [5]


# Waits for NAIAD_TEST_RELEASE in initialize; notes "wait", "init" and "fini" in NAIAD_TEST_NOTES.
GATED = """
import os
import time
import triton_python_backend_utils as pb_utils


def note(word):
    with open(os.environ["NAIAD_TEST_NOTES"], "a") as notes:
        notes.write(word + "\\n")


class TritonPythonModel:
    def initialize(self, args):
        note("wait")
        while not os.path.exists(os.environ["NAIAD_TEST_RELEASE"]):
            time.sleep(0.02)
        note("init")

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0")
                                        .as_numpy())])
            for r in requests
        ]

    def finalize(self):
        note("fini")
"""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_while_loading_lets_the_loads_finish_then_unloads_cleanly(
    tmp_path: Path, naiad: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, notes, finalized = tmp_path / "release", tmp_path / "notes", tmp_path / "finalized"
    monkeypatch.setenv("NAIAD_TEST_RELEASE", str(release))
    monkeypatch.setenv("NAIAD_TEST_NOTES", str(notes))
    monkeypatch.setenv("NAIAD_TEST_FINALIZE_MARKER", str(finalized))
    repo = tmp_path / "models"
    models.write_model(repo, "fast", models.identity_config("fast", "TYPE_INT32"), models.FINALIZE_MARKER)
    models.write_model(repo, "gated", models.identity_config("gated", "TYPE_INT32"), GATED)
    server = naiad.start(repo, until="live")
    index = server.url + "/v2/repository/index"
    wait_until(lambda: {"name": "fast", "version": "1", "state": "READY"} in requests.post(index).json(), "fast")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.process.poll() is None, "a signal during loading killed the server"
    release.touch()  # the load under way finishes, then every model unloads
    assert server.process.wait(30) == 0, server.log()
    assert notes.read_text().split() == ["wait", "init", "fini"]
    assert finalized.read_text() == "finalized"
    assert "naiad is ready" not in server.log()


def test_sigterm_during_a_poll_reload_lets_the_reload_finish(
    tmp_path: Path, naiad: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, notes = tmp_path / "release", tmp_path / "notes"
    monkeypatch.setenv("NAIAD_TEST_RELEASE", str(release))
    monkeypatch.setenv("NAIAD_TEST_NOTES", str(notes))
    release.touch()
    repo = tmp_path / "models"
    folder = models.write_model(repo, "gated", models.identity_config("gated", "TYPE_INT32"), GATED)
    server = naiad.start(repo, "--model-control-mode=poll", "--repository-poll-secs=0.1")
    release.unlink()
    (folder / "1" / "model.py").write_text(textwrap.dedent(GATED) + "\n# changed\n")  # a reload, held in initialize
    wait_until(lambda: notes.read_text().split().count("wait") == 2, "the reload to be held in initialize")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    release.touch()
    assert server.process.wait(30) == 0, server.log()
    words = notes.read_text().split()
    assert words.count("init") == 2 and words.count("fini") == 2, f"an instance was left half loaded: {words}"


def test_a_port_in_use_fails_before_any_model_loads(tmp_path: Path, naiad: ServerFactory) -> None:
    (tmp_path / "empty").mkdir()
    busy = naiad.start(tmp_path / "empty")
    repo = tmp_path / "models"
    marker = tmp_path / "loaded"
    models.write_model(
        repo,
        "marks",
        models.identity_config("marks", "TYPE_INT32"),
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n" + models.IDENTITY,
    )
    result = run_naiad(
        "serve",
        f"--model-repository={repo}",
        f"--http-port={busy.port}",
        "--http-address=127.0.0.1",
        "--allow-grpc=false",
        "--allow-metrics=false",
    )
    assert result.returncode == 1
    assert f"failed to start the HTTP service on 127.0.0.1:{busy.port}" in result.stderr
    assert not marker.exists(), "the models were loaded before the port was tried"


def test_unsupported_triton_flag_is_refused() -> None:
    result = run_naiad("serve", "--model-repository=/tmp", "--model-namespacing=true")
    assert result.returncode == 2
    assert "--model-namespacing is not supported by naiad yet" in result.stderr


def test_bad_flag_values_are_refused() -> None:
    result = run_naiad("serve", "--model-repository=/tmp", "--http-port=99999")
    assert result.returncode == 2 and "out of range" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--exit-on-error=maybe")
    assert result.returncode == 2 and "expected true or false" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--http-max-input-size=0")
    assert result.returncode == 2 and "must be greater than 0" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--load-model=a")
    assert result.returncode == 2 and "--load-model needs --model-control-mode=explicit" in result.stderr
    result = run_naiad(
        "serve", "--model-repository=/tmp", "--model-control-mode=explicit", "--load-model=*", "--load-model=a"
    )
    assert result.returncode == 2 and "must be the only --load-model" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--model-control-mode=sometimes")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=python,shm-default-byte-size=1000")
    assert result.returncode == 2 and "shm-default-byte-size can't be smaller than 1 MiB (1048576)" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=python,stub-timeout-seconds=0")
    assert result.returncode == 2 and "stub-timeout-seconds can't be smaller than or equal to zero." in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=pytorch,shm-growth-byte-size=4096")
    assert result.returncode == 2
    assert "'shm-growth-byte-size' is a setting of the python backend, not of 'pytorch'" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=python,thread-pool-size=4")
    assert result.returncode == 2 and "backend setting 'thread-pool-size' is refused: naiad has no such pool" in (
        result.stderr
    )
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=python,shm-rings=4")
    assert result.returncode == 2 and "backend setting 'shm-rings' is not supported by naiad" in result.stderr
    result = run_naiad("serve", "--model-repository=/tmp", "--backend-config=default-max-batch-size=many")
    assert result.returncode == 2 and "default-max-batch-size must be a non-negative integer" in result.stderr


def test_help_lists_tritonserver_flags() -> None:
    result = run_naiad("serve", "--help")
    assert result.returncode == 0
    for flag in ("--model-repository", "--http-port", "--exit-on-error", "--strict-readiness", "--log-verbose"):
        assert flag in result.stdout


def test_several_repositories_and_a_name_found_twice(tmp_path: Path, naiad: ServerFactory) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    models.write_model(first, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(first, "twice", models.identity_config("twice", "TYPE_INT32"), models.IDENTITY)
    models.write_model(second, "echo", models.identity_config("echo", "TYPE_INT32"), models.IDENTITY)
    models.write_model(second, "twice", models.identity_config("twice", "TYPE_INT32"), models.IDENTITY)
    log_file = tmp_path / "naiad.log"
    server = naiad.start(
        first, f"--model-repository={second}", "--exit-on-error=false", f"--log-file={log_file}", until="started"
    )
    index = {entry["name"]: entry for entry in requests.post(server.url + "/v2/repository/index").json()}
    assert index["add_sub"]["state"] == "READY" and index["echo"]["state"] == "READY"
    assert index["twice"] == {
        "name": "twice",
        "state": "UNAVAILABLE",
        "reason": "model appears in two or more repositories",
    }
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [3]}]}
    assert requests.post(server.url + "/v2/models/echo/infer", json=body).json()["outputs"][0]["data"] == [3]
    text = log_file.read_text()
    assert "naiad is ready" in text and "model appears in two or more repositories" in text
