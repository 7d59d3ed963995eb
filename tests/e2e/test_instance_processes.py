"""Python instances in processes of their own: one per instance, in parallel, crashes contained and restarted, and
nothing left behind when the server stops or is killed."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.conftest import ServerFactory
from tests.models import write_model

PIDS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "SECONDS" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] },
             { name: "SPAN" data_type: TYPE_FP64 dims: [ 2 ] },
             { name: "NAME" data_type: TYPE_STRING dims: [ 1 ] } ]
    instance_group [ { count: 2 kind: KIND_CPU } ]
"""

# Busy in pure Python for the seconds asked (holding its GIL), then says which process ran it and when.
PIDS_MODEL = """
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]
        self.finalized = os.path.join(args["model_repository"], "..", "..", "finalized-" + self.name)

    def execute(self, requests):
        responses = []
        for request in requests:
            seconds = float(pb_utils.get_input_tensor_by_name(request, "SECONDS").as_numpy()[0])
            start = time.time()
            while time.time() - start < seconds:
                sum(range(1000))
            outputs = [
                pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64)),
                pb_utils.Tensor("SPAN", np.array([start, time.time()], dtype=np.float64)),
                pb_utils.Tensor("NAME", np.array([self.name.encode()], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses

    def finalize(self):
        with open(self.finalized, "w") as f:
            f.write(str(os.getpid()))
"""

CRASH_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "HOW" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] } ]
    instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# Dies on a magic input: 1 exits with code 3, 2 is killed by SIGKILL, 3 segfaults; 0 answers with its pid.
# Every initialize() leaves a line in a file beside the repository; with SLOW_RESTART there, restarts take 1.5 s.
CRASH_MODEL = """
import ctypes
import os
import signal
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        base = os.path.join(args["model_repository"], "..", "..")
        starts = os.path.join(base, "starts-" + args["model_name"])
        again = os.path.exists(starts)
        with open(starts, "a") as f:
            f.write(f"{os.getpid()}\\n")
        if again and os.path.exists(os.path.join(base, "SLOW_RESTART")):
            time.sleep(1.5)
        if again and os.path.exists(os.path.join(base, "DIE_AT_START")):
            os._exit(4)

    def execute(self, requests):
        responses = []
        for request in requests:
            how = int(pb_utils.get_input_tensor_by_name(request, "HOW").as_numpy()[0])
            if how == 1:
                os._exit(3)
            if how == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            if how == 3:
                ctypes.string_at(0)
            pid = pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64))
            responses.append(pb_utils.InferenceResponse([pid]))
        return responses
"""

INIT_EXIT_MODEL = """
import os


class TritonPythonModel:
    def initialize(self, args):
        os._exit(3)

    def execute(self, requests):
        return []
"""

# Starts a helper process of its own that would run for an hour if nothing ended it.
SPAWNING_MODEL = """
import os
import subprocess

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.helper = subprocess.Popen(["sleep", "3600"])
        with open(os.path.join(args["model_repository"], "..", "..", "helper-pid"), "w") as f:
            f.write(str(self.helper.pid))

    def execute(self, requests):
        how = pb_utils.get_input_tensor_by_name(requests[0], "HOW").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64))])]
"""


def infer_pid(url: str, model: str, seconds: float = 0.0) -> dict[str, Any]:
    body = {"inputs": [{"name": "SECONDS", "shape": [1], "datatype": "FP32", "data": [seconds]}]}
    reply = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    outputs: dict[str, Any] = {output["name"]: output["data"] for output in reply.json()["outputs"]}
    return outputs


def crash(url: str, how: int, model: str = "crash") -> requests.Response:
    body = {"inputs": [{"name": "HOW", "shape": [1], "datatype": "INT32", "data": [how]}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def command_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def children_of(pid: int) -> list[int]:
    """The instance processes of server `pid` (its front-end processes, when it has some, are not)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid and b"naiad.frontend_processes" not in _command(int(entry)):
                    found.append(int(entry))
            except (OSError, IndexError):
                continue
    return found


def _command(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def shared_memory_entries() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "naiad" in name} if os.path.isdir("/dev/shm") else set()


def test_each_instance_is_a_process_of_its_own_and_they_run_at_once(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "pids", PIDS_CONFIG, PIDS_MODEL)
    server = naiad.start(repo)
    children = children_of(server.process.pid)
    commands = sorted(command_of(pid) for pid in children)
    assert len(commands) == 2, commands
    assert "naiad/processes/child.py pids_0_0 " in commands[0]
    assert "naiad/processes/child.py pids_0_1 " in commands[1]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: infer_pid(server.url, "pids", 0.5), range(2)))
    pids = {answer["PID"][0] for answer in answers}
    assert pids == set(children)
    assert {answer["NAME"][0] for answer in answers} == {"pids_0_0", "pids_0_1"}
    (start0, end0), (start1, end1) = (answer["SPAN"] for answer in answers)
    assert start0 < end1 and start1 < end0, "two busy pure-Python calls ran one after the other"


def test_a_crash_fails_only_its_requests_and_the_instance_comes_back(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "crash", CRASH_CONFIG, CRASH_MODEL)
    write_model(repo, "pids", PIDS_CONFIG, PIDS_MODEL)
    server = naiad.start(repo, metrics=True)
    first = crash(server.url, 0).json()["outputs"][0]["data"][0]
    causes = {1: "exited with code 3", 2: "was killed by SIGKILL", 3: "was killed by SIGSEGV"}
    pids = [first]
    for how, cause in causes.items():
        started = time.monotonic()
        reply = crash(server.url, how)
        assert time.monotonic() - started < 3  # "within about a second"; room for a slow CI machine
        assert reply.status_code == 500
        assert reply.json()["error"] == (
            f"Stub process 'crash_0_0' is not healthy: the process of model 'crash' instance 'crash_0_0' "
            f"(pid {pids[-1]}) {cause} while executing a batch"
        )
        assert infer_pid(server.url, "pids")["PID"]  # another model goes on answering
        wait_until(lambda: requests.get(f"{server.url}/v2/models/crash/ready").status_code == 200, "crash is ready")
        answer = crash(server.url, 0)
        assert answer.status_code == 200, answer.text
        pids.append(answer.json()["outputs"][0]["data"][0])
        assert pids[-1] != pids[-2]
    starts = (tmp_path / "starts-crash").read_text().split()
    assert [int(pid) for pid in starts] == pids  # each restart ran a fresh initialize()
    log = server.log()
    assert log.count("; starting it again") == 3
    assert "model instance 'crash_0_0' serves again" in log
    metrics = requests.get(server.metrics_url).text
    assert 'naiad_model_instance_restarts{model="crash",version="1"} 3' in metrics
    assert 'naiad_model_instances_live{model="crash",version="1"} 1' in metrics
    assert 'naiad_model_instances_live{model="pids",version="1"} 2' in metrics


def test_not_ready_while_no_instance_is_live_and_requests_wait_for_the_restart(
    tmp_path: Path, naiad: ServerFactory
) -> None:
    repo = tmp_path / "models"
    write_model(repo, "crash", CRASH_CONFIG, CRASH_MODEL)
    server = naiad.start(repo)
    (tmp_path / "SLOW_RESTART").touch()
    assert crash(server.url, 1).status_code == 500
    not_ready = requests.get(f"{server.url}/v2/models/crash/ready")
    assert not_ready.status_code == 400 and not_ready.json() == {"error": "Model version not ready"}
    assert requests.get(f"{server.url}/v2/health/ready").status_code == 400
    waiting = crash(server.url, 0)  # queued until the instance is back
    assert waiting.status_code == 200, waiting.text
    assert requests.get(f"{server.url}/v2/models/crash/ready").status_code == 200


def test_a_model_that_dies_at_every_start_is_given_up(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "crash", CRASH_CONFIG, CRASH_MODEL)
    server = naiad.start(repo)
    (tmp_path / "DIE_AT_START").touch()
    assert crash(server.url, 1).status_code == 500

    def unavailable() -> bool:
        index = requests.post(f"{server.url}/v2/repository/index").json()
        return bool(index[0]["state"] == "UNAVAILABLE")

    wait_until(unavailable, "crash is UNAVAILABLE")
    reason = requests.post(f"{server.url}/v2/repository/index").json()[0]["reason"]
    assert reason.startswith("model instance 'crash_0_0' was given up after 5 failed starts in a row: ")
    assert "exited with code 4 while loading (initialize)" in reason
    assert len((tmp_path / "starts-crash").read_text().split()) == 6  # the first start and five more
    assert crash(server.url, 0).status_code != 200
    assert not children_of(server.process.pid)


def test_an_exit_in_initialize_fails_the_load_naming_the_instance(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "init_exit", CRASH_CONFIG, INIT_EXIT_MODEL)
    server = naiad.start(repo, "--exit-on-error=false", until="started")
    entry = requests.post(f"{server.url}/v2/repository/index").json()[0]
    assert entry["state"] == "UNAVAILABLE"
    assert "Stub process 'init_exit_0_0' is not healthy: the process of model 'init_exit'" in entry["reason"]
    assert "exited with code 3 while loading (initialize)" in entry["reason"]


def test_sigterm_finalizes_every_instance_and_leaves_nothing(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "pids", PIDS_CONFIG, PIDS_MODEL)
    write_model(repo, "spawning", CRASH_CONFIG, SPAWNING_MODEL)
    before = shared_memory_entries()
    server = naiad.start(repo)
    children = children_of(server.process.pid)
    helper = int((tmp_path / "helper-pid").read_text())
    assert len(children) == 3 and running(helper)
    infer_pid(server.url, "pids", 0.0)
    assert server.stop(signal.SIGTERM) == 0
    finalized = {int((tmp_path / f"finalized-pids_0_{i}").read_text()) for i in range(2)}
    assert finalized <= set(children)
    assert not [pid for pid in [*children, helper] if running(pid)]
    assert shared_memory_entries() == before


def test_instance_processes_end_when_the_server_is_killed(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "pids", PIDS_CONFIG, PIDS_MODEL)
    write_model(repo, "spawning", CRASH_CONFIG, SPAWNING_MODEL)
    server = naiad.start(repo)
    children = children_of(server.process.pid)
    helper = int((tmp_path / "helper-pid").read_text())
    busy = concurrent.futures.ThreadPoolExecutor(1).submit(infer_pid, server.url, "pids", 30.0)
    time.sleep(0.5)  # one instance is in the middle of a 30 s execute()
    server.stop(signal.SIGKILL)
    wait_until(lambda: not [pid for pid in [*children, helper] if running(pid)], "no instance process is left", 5)
    assert busy.exception() is not None


KEEPER_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "VALUES" data_type: TYPE_FP32 dims: [ -1 ] },
            { name: "WORDS" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "VALUES_OUT" data_type: TYPE_FP32 dims: [ -1 ] },
             { name: "WORDS_OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

# Keeps every input it was given (their shared memory can never be reused) and answers with copies.
KEEPER_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kept = []

    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "VALUES").as_numpy()
            words = pb_utils.get_input_tensor_by_name(request, "WORDS").as_numpy()
            self.kept.append(values)
            outputs = [
                pb_utils.Tensor("VALUES_OUT", values * 2),
                pb_utils.Tensor("WORDS_OUT", np.array([w[::-1] for w in words], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""


def test_tensors_larger_than_the_shared_memory_segments_cross_whole(tmp_path: Path, naiad: ServerFactory) -> None:
    import numpy as np
    import tritonclient.http as httpclient

    repo = tmp_path / "models"
    write_model(repo, "keeper", KEEPER_CONFIG, KEEPER_MODEL)
    server = naiad.start(
        repo,
        "--backend-config=python,shm-default-byte-size=1048576",
        "--backend-config=python,shm-growth-byte-size=1048576",
    )
    client = httpclient.InferenceServerClient(server.address)
    for round_ in range(4):
        values = np.random.default_rng(round_).standard_normal(400_000).astype(np.float32)  # 1.6 MB
        words = np.array([b"", b"\xff\x00binary", "naïve".encode(), b"x" * 100_000], dtype=np.object_)
        inputs = [httpclient.InferInput("VALUES", [values.size], "FP32"), httpclient.InferInput("WORDS", [4], "BYTES")]
        inputs[0].set_data_from_numpy(values, binary_data=True)
        inputs[1].set_data_from_numpy(words, binary_data=True)
        result = client.infer("keeper", inputs)
        assert np.array_equal(result.as_numpy("VALUES_OUT"), values * 2)
        assert list(result.as_numpy("WORDS_OUT")) == [w[::-1] for w in words]


IO_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

ECHO = """
def echo(requests, pb_utils):
    return [
        pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
        for r in requests
    ]
"""

SLOW_MODEL = (
    ECHO
    + """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)
        return echo(requests, pb_utils)
"""
)

# IN > 0: gives up on its BLS call after 50 ms and waits while the answer arrives; IN = 0: awaits it.
CANCELLING_MODEL = (
    ECHO
    + """
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            call = pb_utils.InferenceRequest(
                model_name="slow", requested_output_names=["OUT"], inputs=[pb_utils.Tensor("IN", x)]
            )
            if x[0] > 0:
                try:
                    await asyncio.wait_for(call.async_exec(), 0.05)
                except asyncio.TimeoutError:
                    pass
                await asyncio.sleep(0.4)
            else:
                response = await call.async_exec()
                assert not response.has_error(), response.error().message()
        return echo(requests, pb_utils)
"""
)

ROUTER_MODEL = (
    ECHO
    + """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        pb_utils.load_model("target")
        assert pb_utils.is_model_ready("target")
        return echo(requests, pb_utils)
"""
)

# Answers with parameters that are a numpy string and an IntEnum (both pass pb_utils' isinstance checks).
NUMPY_PARAMETERS_MODEL = """
import enum
import os

import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = np.array(["cat", "dog"])


class Rank(enum.IntEnum):
    FIRST = 1


class TritonPythonModel:
    def execute(self, requests):
        pid = pb_utils.Tensor("OUT", np.array([float(os.getpid())], dtype=np.float32))
        parameters = {"label": LABELS[0], "rank": Rank.FIRST}
        return [pb_utils.InferenceResponse([pid], parameters=parameters) for r in requests]
"""

# Instance _0_0 ends 0.3 s after its initialize() and cannot start again; _0_1 takes 1.5 s to initialize.
EARLY_DEATH_MODEL = (
    ECHO
    + """
import os
import threading
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        mark = os.path.join(args["model_repository"], "..", "..", "died-once")
        if args["model_instance_name"].endswith("_0_0"):
            if os.path.exists(mark):
                raise RuntimeError("cannot start again")
            open(mark, "w").close()
            threading.Thread(target=lambda: (time.sleep(0.3), os._exit(7)), daemon=True).start()
        else:
            time.sleep(1.5)

    def execute(self, requests):
        return echo(requests, pb_utils)
"""
)

STUCK_FINALIZE_MODEL = (
    ECHO
    + """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return echo(requests, pb_utils)

    def finalize(self):
        time.sleep(3600)
"""
)


def infer_in(url: str, model: str, value: float = 0.0, timeout: float = 30) -> requests.Response:
    body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "FP32", "data": [value]}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=timeout)


def test_a_cancelled_async_exec_loses_no_later_answer(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "slow", IO_CONFIG, SLOW_MODEL)
    write_model(repo, "cancelling", IO_CONFIG, CANCELLING_MODEL)
    server = naiad.start(repo)
    assert infer_in(server.url, "cancelling", 1.0).status_code == 200
    answer = infer_in(server.url, "cancelling", 0.0, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "Traceback" not in server.log()


def test_many_instances_loading_models_at_once_do_not_wait_for_each_other(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "router", IO_CONFIG + "instance_group [ { count: 6 kind: KIND_CPU } ]", ROUTER_MODEL)
    write_model(repo, "target", IO_CONFIG, SLOW_MODEL)
    server = naiad.start(repo, "--model-control-mode=explicit", "--load-model=router")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: infer_in(server.url, "router", timeout=60), range(6)))
    assert [answer.status_code for answer in answers] == [200] * 6, [answer.text for answer in answers]
    assert requests.get(f"{server.url}/v2/models/target/ready").status_code == 200


def test_parameters_of_numpy_and_enum_types_cross(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "labels", IO_CONFIG, NUMPY_PARAMETERS_MODEL)
    server = naiad.start(repo)
    first, second = (infer_in(server.url, "labels") for _ in range(2))
    assert first.status_code == 200 and second.status_code == 200, first.text
    assert first.json()["parameters"] == {"label": "cat", "rank": 1}
    assert first.json()["outputs"][0]["data"] == second.json()["outputs"][0]["data"]  # the same process: no restart


def test_an_instance_given_up_while_its_model_unloads_fails_the_queue(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "crash", CRASH_CONFIG, CRASH_MODEL)
    server = naiad.start(repo, "--model-control-mode=explicit", "--load-model=crash")
    (tmp_path / "DIE_AT_START").touch()
    assert crash(server.url, 1).status_code == 500
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        queued = pool.submit(crash, server.url, 0)  # waits for a restart that never succeeds
        time.sleep(0.2)
        unload = pool.submit(requests.post, f"{server.url}/v2/repository/models/crash/unload", timeout=60)
        reply = queued.result(timeout=30)
        assert unload.result(timeout=30).status_code == 200
    assert reply.status_code == 503
    assert "was given up after 5 failed starts in a row" in reply.json()["error"]
    assert requests.post(f"{server.url}/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"


def test_an_instance_that_dies_before_its_model_finishes_loading_is_not_given_work(
    tmp_path: Path, naiad: ServerFactory
) -> None:
    repo = tmp_path / "models"
    write_model(repo, "early", IO_CONFIG + "instance_group [ { count: 2 kind: KIND_CPU } ]", EARLY_DEATH_MODEL)
    server = naiad.start(repo, metrics=True)
    assert (tmp_path / "died-once").exists()
    assert [infer_in(server.url, "early").status_code for _ in range(4)] == [200] * 4
    metrics = requests.get(server.metrics_url).text
    assert 'naiad_model_instances_live{model="early",version="1"} 1' in metrics
    assert 'naiad_model_instance_restarts{model="early",version="1"} 1' in metrics


def test_sigterm_with_a_stuck_execute_exits_after_the_exit_timeout(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "pids", PIDS_CONFIG, PIDS_MODEL)
    server = naiad.start(repo, "--exit-timeout-secs=1")
    children = children_of(server.process.pid)
    stuck = concurrent.futures.ThreadPoolExecutor(1).submit(infer_pid, server.url, "pids", 3600.0)
    time.sleep(0.5)
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - started < 10
    assert not [pid for pid in children if running(pid)]
    assert stuck.exception() is not None
    assert "model instance 'pids_0_0' (pid" in server.log() and "is still executing; killing it" in server.log()


def test_a_finalize_that_never_returns_is_ended_after_the_stub_timeout(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "stuck", IO_CONFIG, STUCK_FINALIZE_MODEL)
    server = naiad.start(repo, "--backend-config=python,stub-timeout-seconds=2")
    assert infer_in(server.url, "stuck").status_code == 200
    assert server.stop(signal.SIGTERM, timeout=20) == 0
    assert "did not finish finalize() and exit within 2 s" in server.log()


def test_restarts_leave_no_descriptor_or_mapping_behind_in_the_server(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    write_model(repo, "crash", CRASH_CONFIG, CRASH_MODEL)
    server = naiad.start(repo)
    pid = server.process.pid

    def held() -> tuple[int, int, int, int]:
        """The server's pidfds, memfds, Unix sockets and shared-memory mappings (not its TCP connections)."""
        unix = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]}
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        maps = Path(f"/proc/{pid}/maps").read_text().count("naiad_python_backend_shm_region_")
        pidfds = sum(1 for target in targets if "pidfd" in target)
        memfds = sum(1 for target in targets if target.startswith("/memfd:naiad_python_backend_shm_region_"))
        sockets = sum(1 for target in targets if target.startswith("socket:[") and target[8:-1] in unix)
        return pidfds, memfds, sockets, maps

    assert crash(server.url, 0).status_code == 200
    before = held()
    for _ in range(4):
        assert crash(server.url, 2).status_code == 500
        wait_until(lambda: crash(server.url, 0).status_code == 200, "crash serves again")
    assert held() == before
