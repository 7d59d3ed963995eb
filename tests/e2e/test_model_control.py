"""Model control end to end: explicit load and unload over HTTP and gRPC, poll mode following the repository, and
reloads under a steady stream of requests that must never see a failure."""

from __future__ import annotations

import json
import shutil
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, ServerFactory
from tests.models import IDENTITY, add_sub_config, identity_config, write_model

# Adds the constant OFFSET to its input: rewriting OFFSET is a change a reload must pick up. Each execution takes a
# few milliseconds so that requests are queued and executing when a reload swaps the versions.
OFFSET_MODEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

OFFSET = {offset}


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.005)
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + OFFSET).astype(np.float32))]))
        return out
"""

BROKEN = "this is not python\n"

PIPE = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "identity" model_version: -1
  input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
"""


def offset_model(repository: Path, name: str, offset: float, versions: tuple[int, ...] = (1,)) -> Path:
    return write_model(
        repository, name, identity_config(name, "TYPE_FP32", batch=8, extra="dynamic_batching { }"),
        OFFSET_MODEL.format(offset=offset), versions,
    )  # fmt: skip


def set_offset(folder: Path, version: int, offset: float) -> None:
    (folder / str(version) / "model.py").write_text(textwrap.dedent(OFFSET_MODEL.format(offset=offset)))


def infer(server: RunningServer, model: str, value: float = 1.0, version: str = "") -> requests.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
    return requests.post(server.url + path, json=body, timeout=30)


def output(reply: requests.Response) -> float:
    assert reply.status_code == 200, reply.text
    return float(reply.json()["outputs"][0]["data"][0])


def index(server: RunningServer) -> list[dict[str, Any]]:
    reply = requests.post(server.url + "/v2/repository/index", timeout=5)
    assert reply.status_code == 200, reply.text
    return list(reply.json())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Stream:
    """Clients sending requests to one model without pause; every answer is kept."""

    def __init__(self, server: RunningServer, model: str, clients: int = 4) -> None:
        self.server = server
        self.model = model
        self.failures: list[str] = []
        self.outputs: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with requests.Session() as session:
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
            while not self._stop.is_set():
                reply = session.post(f"{self.server.url}/v2/models/{self.model}/infer", json=body, timeout=30)
                if reply.status_code != 200:
                    self.failures.append(f"{reply.status_code} {reply.text}")
                else:
                    self.outputs.append(float(reply.json()["outputs"][0]["data"][0]))

    @contextmanager
    def running(self) -> Iterator[Stream]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()

    def seen(self, value: float) -> bool:
        return value in self.outputs[-20:]


def test_explicit_mode_loads_what_it_is_told_over_http(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    offset_model(repository, "first", 10.0)
    offset_model(repository, "second", 20.0)
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=first")
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    assert {"name": "second"} in index(server)
    assert output(infer(server, "first")) == 11.0
    assert infer(server, "second").status_code == 404

    assert requests.post(server.url + "/v2/repository/models/second/load", timeout=60).status_code == 200
    assert output(infer(server, "second")) == 21.0

    assert requests.post(server.url + "/v2/repository/models/first/unload", timeout=60).status_code == 200
    assert {"name": "first", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index(server)
    assert infer(server, "first").status_code in (400, 404, 503)
    for path in ("", "/config"):  # no metadata or config left to show, as Triton
        gone = requests.get(f"{server.url}/v2/models/first{path}", timeout=5)
        assert gone.status_code == 404 and "'first' has no available versions" in gone.json()["error"], path
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200

    missing = requests.post(server.url + "/v2/repository/models/nothing/load", timeout=60)
    assert missing.status_code == 404 and "failed to poll from model repository" in missing.json()["error"]
    files = requests.post(
        server.url + "/v2/repository/models/second/load",
        json={"parameters": {"file:1/model.py": "cHJpbnQoMSk="}},
        timeout=60,
    )
    assert files.status_code == 400 and "file override parameters" in files.json()["error"]
    assert not (repository / "second" / "1" / "model.pyc").exists()


def test_load_with_a_config_override_and_a_failed_load(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    offset_model(repository, "model", 1.0, versions=(1, 2))
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=model")
    assert [e["version"] for e in index(server) if e.get("state") == "READY"] == ["2"]
    config = {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "version_policy": {"specific": {"versions": [1]}},
    }
    import json

    reply = requests.post(
        server.url + "/v2/repository/models/model/load", json={"parameters": {"config": json.dumps(config)}}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    ready = [e["version"] for e in index(server) if e.get("state") == "READY"]
    assert ready == ["1"]
    assert output(infer(server, "model", version="1")) == 2.0

    for field, value in (("default_model_filename", "/etc/passwd"), ("default_model_filename", "../../x.py")):
        escaping = json.dumps({**config, field: value})
        refused = requests.post(
            server.url + "/v2/repository/models/model/load", json={"parameters": {"config": escaping}}, timeout=60
        )
        assert refused.status_code == 400 and "must name a file inside the model folder" in refused.text, value
    assert output(infer(server, "model", version="1")) == 2.0

    (repository / "model" / "1" / "model.py").write_text(BROKEN)
    failed = requests.post(server.url + "/v2/repository/models/model/load", timeout=60)
    assert failed.status_code == 400 and "load failed for model 'model'" in failed.json()["error"]
    assert output(infer(server, "model", version="1")) == 2.0, "the previous version must serve on"
    entry = next(e for e in index(server) if e.get("version") == "1")
    assert entry["state"] == "READY" and "reload failed" in entry["reason"]


def test_explicit_mode_over_grpc_with_names_checked_and_dependents(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "identity", identity_config("identity", "TYPE_FP32", batch=8), IDENTITY)
    (repository / "pipe" / "1").mkdir(parents=True)
    (repository / "pipe" / "config.pbtxt").write_text(PIPE)
    server = naiad.start(repository, "--model-control-mode=explicit", grpc=True)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert not client.is_model_ready("pipe")

    client.load_model("pipe")  # loads the model its step runs on first
    assert client.is_model_ready("pipe") and client.is_model_ready("identity")
    data = np.array([[1.0, 2.0]], dtype=np.float32)
    inputs = [grpcclient.InferInput("X", [1, 2], "FP32")]
    inputs[0].set_data_from_numpy(data)
    result = client.infer("pipe", inputs)
    assert np.array_equal(result.as_numpy("Y"), data)

    client.unload_model("identity", unload_dependents=True)
    assert not client.is_model_ready("identity") and not client.is_model_ready("pipe")

    for name in ("../etc", "a/../b", "/etc/passwd", "model/", "..", " .."):
        with pytest.raises(InferenceServerException, match="must not contain path traversal characters"):
            client.load_model(name)
    for name in ("", " ", "\t"):
        with pytest.raises(InferenceServerException, match="Model name cannot be empty"):
            client.load_model(name)
    with pytest.raises(InferenceServerException, match="failed to poll from model repository"):
        client.load_model("..my_model")
    client.close()


def test_explicit_reload_under_load_loses_no_request(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    folder = offset_model(repository, "steady", 100.0)
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=steady")
    stream = Stream(server, "steady")
    with stream.running():
        wait_for(lambda: stream.seen(101.0), "requests to flow")
        for offset in (200.0, 300.0, 400.0):
            set_offset(folder, 1, offset)
            reply = requests.post(server.url + "/v2/repository/models/steady/load", timeout=60)
            assert reply.status_code == 200, reply.text
            wait_for(lambda offset=offset: stream.seen(offset + 1), f"offset {offset} to be served")
    assert stream.failures == []
    assert len(stream.outputs) > 50
    assert set(stream.outputs) <= {101.0, 201.0, 301.0, 401.0}


def test_poll_mode_follows_the_repository_without_failing_a_request(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    steady = offset_model(repository, "steady", 100.0)
    server = naiad.start(repository, "--model-control-mode=poll", "--repository-poll-secs=0.3")
    stream = Stream(server, "steady")
    with stream.running():
        wait_for(lambda: stream.seen(101.0), "requests to flow")

        added = offset_model(repository, "added", 5.0)  # a new model folder is loaded
        config = (added / "config.pbtxt").read_text()  # without a name, so that the folder can be renamed
        (added / "config.pbtxt").write_text(config.replace('name: "added"', ""))
        wait_for(lambda: infer(server, "added").status_code == 200, "the added model to load")
        assert output(infer(server, "added")) == 6.0

        set_offset(steady, 1, 200.0)  # a changed model file reloads the model
        wait_for(lambda: stream.seen(201.0), "the changed model to serve")

        (steady / "config.pbtxt").write_text(  # a changed config too
            textwrap.dedent(identity_config("steady", "TYPE_FP32", batch=4, extra="dynamic_batching { }"))
        )
        wait_for(
            lambda: requests.get(server.url + "/v2/models/steady/config", timeout=5).json()["max_batch_size"] == 4,
            "the changed config to serve",
        )

        (steady / "2").mkdir()  # a new version is served; the policy (latest 1) retires version 1
        (steady / "2" / "model.py").write_text(textwrap.dedent(OFFSET_MODEL.format(offset=300.0)))
        wait_for(lambda: stream.seen(301.0), "version 2 to serve")
        wait_for(
            lambda: {"name": "steady", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index(server),
            "version 1 to unload",
        )

        (repository / "added").rename(repository / "renamed")  # a renamed folder: old name out, new name in
        wait_for(lambda: infer(server, "renamed").status_code == 200, "the renamed model to load")
        wait_for(lambda: infer(server, "added").status_code == 404, "the old name to unload")

        shutil.rmtree(repository / "renamed")  # a deleted folder is unloaded
        wait_for(lambda: infer(server, "renamed").status_code == 404, "the deleted model to unload")
        assert all(entry["name"] != "renamed" for entry in index(server))

        (steady / "2" / "model.py").write_text(BROKEN)  # a broken reload leaves the old version serving
        wait_for(
            lambda: any("reload failed" in entry.get("reason", "") for entry in index(server)), "the failed reload"
        )
        assert output(infer(server, "steady")) == 301.0
    assert stream.failures == []
    assert "reload failed" in server.log()


def test_a_name_in_two_repositories_is_reported_once_and_loads_when_one_copy_goes(
    naiad: ServerFactory, tmp_path: Path
) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    offset_model(first, "twice", 1.0)
    offset_model(second, "twice", 2.0)
    log_file = tmp_path / "naiad.log"
    server = naiad.start(
        first,
        f"--model-repository={second}",
        "--model-control-mode=poll",
        "--repository-poll-secs=0.1",
        "--exit-on-error=false",
        f"--log-file={log_file}",
        until="started",
    )
    entry = {"name": "twice", "state": "UNAVAILABLE", "reason": "model appears in two or more repositories"}
    wait_for(lambda: entry in index(server), "the name to be found ambiguous")
    time.sleep(1.5)  # fifteen polls
    lines = log_file.read_text().splitlines()
    assert [line for line in lines if "naiad.core] failed to load model 'twice'" in line] == [
        next(line for line in lines if "model appears in two or more repositories" in line)
    ], "polls that change nothing repeat no error"
    shutil.rmtree(second / "twice")
    wait_for(lambda: infer(server, "twice").status_code == 200, "the copy left to load")
    assert output(infer(server, "twice")) == 2.0


# Adds one to its input; logs each instance's initialize, first execution and finalize to NAIAD_TEST_INSTANCE_LOG.
INSTANCE_LOG_MODEL = """
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


def note(line):
    with open(os.environ["NAIAD_TEST_INSTANCE_LOG"], "a") as log:
        log.write(line + "\\n")


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_instance_name"]
        self.executed = False
        if os.path.exists(os.environ["NAIAD_TEST_INSTANCE_LOG"] + ".fail"):
            raise RuntimeError("no memory left for another instance")
        note(f"init {self.name}")
        note(f"version {args['model_version']}")

    def execute(self, requests):
        if not self.executed:
            self.executed = True
            note(f"exec {self.name}")
        time.sleep(0.005)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + np.float32(1))])
            for r in requests
        ]

    def finalize(self):
        note(f"fini {self.name}")
"""


@pytest.fixture
def instance_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file INSTANCE_LOG_MODEL writes to, empty."""
    log = tmp_path / "instances.log"
    log.touch()
    monkeypatch.setenv("NAIAD_TEST_INSTANCE_LOG", str(log))
    return log


def test_an_instance_group_change_adds_and_removes_instances_without_a_reload(
    naiad: ServerFactory, tmp_path: Path, instance_log: Path
) -> None:
    log = instance_log
    repository = tmp_path / "models"

    def config(count: int, batch: int = 8) -> str:
        extra = f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]"
        return textwrap.dedent(identity_config("scaled", "TYPE_FP32", batch=batch, extra=extra))

    folder = write_model(repository, "scaled", config(1), INSTANCE_LOG_MODEL)
    server = naiad.start(repository, "--model-control-mode=poll", "--repository-poll-secs=0.2")

    def instances() -> int:
        reply = requests.get(server.url + "/v2/models/scaled/config", timeout=5).json()
        return int(reply["instance_group"][0]["count"])

    def logged() -> list[str]:
        return log.read_text().splitlines()

    stream = Stream(server, "scaled")
    with stream.running():
        wait_for(lambda: stream.seen(2.0), "requests to flow")
        (folder / "config.pbtxt").write_text(config(3))
        wait_for(lambda: instances() == 3, "the new instance count")
        wait_for(lambda: {"exec scaled_0_1", "exec scaled_0_2"} <= set(logged()), "the new instances to serve")
        (folder / "config.pbtxt").write_text(config(1))
        wait_for(lambda: {"fini scaled_0_1", "fini scaled_0_2"} <= set(logged()), "the extra instances to unload")
        assert instances() == 1
        (tmp_path / "instances.log.fail").touch()  # an instance that fails to load leaves the others serving
        (folder / "config.pbtxt").write_text(config(2))
        wait_for(
            lambda: any("no memory left for another instance" in e.get("reason", "") for e in index(server)),
            "the failed update",
        )
        assert instances() == 1
        (tmp_path / "instances.log.fail").unlink()
        (folder / "config.pbtxt").write_text(config(1))
        time.sleep(0.5)  # requests go on to the one instance left
    assert stream.failures == []
    assert logged().count("init scaled_0_0") == 1 and "fini scaled_0_0" not in logged(), "scaled_0_0 was reloaded"
    assert "successfully updated 'scaled' version 1: 2 instance(s) added, 0 removed" in server.log()
    assert "successfully updated 'scaled' version 1: 0 instance(s) added, 2 removed" in server.log()

    (folder / "config.pbtxt").write_text(config(1, batch=4))  # any other change reloads the whole model
    wait_for(lambda: logged().count("init scaled_0_0") == 2, "the reload")
    wait_for(lambda: "fini scaled_0_0" in logged(), "the old version to unload")


def test_shutdown_waits_for_the_finalize_of_instances_an_update_dropped(
    naiad: ServerFactory, tmp_path: Path, instance_log: Path
) -> None:
    slow_finalize = INSTANCE_LOG_MODEL.replace(
        '    def finalize(self):\n        note(f"fini {self.name}")',
        '    def finalize(self):\n        time.sleep(1.5)\n        note(f"fini {self.name}")',
    )
    assert slow_finalize != INSTANCE_LOG_MODEL
    repository = tmp_path / "models"
    extra = "instance_group [ { count: 2 kind: KIND_CPU } ]"
    folder = write_model(
        repository, "scaled", identity_config("scaled", "TYPE_FP32", batch=8, extra=extra), slow_finalize
    )
    server = naiad.start(repository, "--model-control-mode=poll", "--repository-poll-secs=0.1", "--exit-timeout-secs=0")
    (folder / "config.pbtxt").write_text(textwrap.dedent(identity_config("scaled", "TYPE_FP32", batch=8)))
    wait_for(lambda: "successfully updated 'scaled' version 1" in server.log(), "the update")
    assert server.stop() == 0
    lines = instance_log.read_text().splitlines()
    assert "fini scaled_0_1" in lines and "fini scaled_0_0" in lines, lines


def test_a_load_whose_config_changes_only_the_instances_updates_them_in_place(
    naiad: ServerFactory, tmp_path: Path, instance_log: Path
) -> None:
    log = instance_log
    repository = tmp_path / "models"
    write_model(repository, "scaled", identity_config("scaled", "TYPE_FP32", batch=8), INSTANCE_LOG_MODEL)
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=scaled")
    config = requests.get(server.url + "/v2/models/scaled/config", timeout=5).json()
    config["instance_group"][0]["count"] = 2
    reply = requests.post(
        server.url + "/v2/repository/models/scaled/load",
        json={"parameters": {"config": json.dumps(config)}},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert requests.get(server.url + "/v2/models/scaled/config", timeout=5).json()["instance_group"][0]["count"] == 2
    assert log.read_text().splitlines().count("init scaled_0_0") == 1
    assert "init scaled_0_1" in log.read_text().splitlines()
    assert output(infer(server, "scaled")) == 2.0
    reload = requests.post(server.url + "/v2/repository/models/scaled/load", timeout=60)  # the same config again:
    assert reload.status_code == 200, reload.text  # an explicit load still restarts the instances
    wait_for(lambda: log.read_text().splitlines().count("init scaled_0_0") == 2, "the reload")


def test_a_new_version_leaves_the_serving_ones_alone(naiad: ServerFactory, tmp_path: Path, instance_log: Path) -> None:
    log = instance_log
    repository = tmp_path / "models"
    extra = "version_policy: { all: {} }"
    folder = write_model(
        repository, "kept", identity_config("kept", "TYPE_FP32", batch=8, extra=extra), INSTANCE_LOG_MODEL
    )
    server = naiad.start(repository, "--model-control-mode=poll", "--repository-poll-secs=0.2")
    (folder / "2").mkdir()
    (folder / "2" / "model.py").write_text(textwrap.dedent(INSTANCE_LOG_MODEL))
    wait_for(lambda: infer(server, "kept", version="2").status_code == 200, "version 2 to serve")
    assert output(infer(server, "kept", version="1")) == 2.0
    lines = log.read_text().splitlines()
    assert lines.count("version 1") == 1 and lines.count("version 2") == 1, lines


def test_a_copy_appearing_in_a_second_repository_then_going_leaves_no_stale_reason(
    naiad: ServerFactory, tmp_path: Path
) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    offset_model(first, "twice", 1.0)
    second.mkdir()
    server = naiad.start(
        first, f"--model-repository={second}", "--model-control-mode=poll", "--repository-poll-secs=0.1"
    )
    offset_model(second, "twice", 2.0)
    wait_for(lambda: any("two or more repositories" in e.get("reason", "") for e in index(server)), "the ambiguity")
    assert output(infer(server, "twice")) == 2.0  # the copy in the first repository serves on
    shutil.rmtree(second / "twice")
    wait_for(lambda: all(not e.get("reason") for e in index(server)), "the reason to clear")
    assert output(infer(server, "twice")) == 2.0


def test_load_and_unload_are_refused_outside_explicit_mode(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "add_sub", add_sub_config(), IDENTITY)
    server = naiad.start(repository, "--model-control-mode=poll", "--repository-poll-secs=30")
    reply = requests.post(server.url + "/v2/repository/models/add_sub/unload", timeout=5)
    assert reply.status_code == 503 and "model control mode 'poll'" in reply.json()["error"]


def test_file_overrides_need_the_flag_and_stay_inside_the_model_folder(naiad: ServerFactory, tmp_path: Path) -> None:
    import base64
    import json

    repository = tmp_path / "models"
    repository.mkdir()
    server = naiad.start(repository, "--model-control-mode=explicit", "--allow-model-file-override=true", grpc=True)
    config = json.dumps(
        {
            "backend": "python",
            "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        }
    )
    source = textwrap.dedent(OFFSET_MODEL.format(offset=7.0)).encode()

    def load(parameters: dict[str, str]) -> requests.Response:
        return requests.post(
            server.url + "/v2/repository/models/inline/load", json={"parameters": parameters}, timeout=60
        )

    encoded = base64.b64encode(source).decode()
    no_config = load({"file:1/model.py": encoded})
    assert no_config.status_code == 400 and "need a 'config' parameter" in no_config.json()["error"]
    target = tmp_path / "escaped.txt"
    for path in ("../../escaped.txt", f"1/../../{target.name}", str(target), "1/./model.py", "1\\model.py"):
        reply = load({"config": config, f"file:{path}": encoded})
        assert reply.status_code == 400 and "must stay inside the model folder" in reply.json()["error"], path
    assert not target.exists()
    assert not list(repository.iterdir()), "nothing may be written into the repository"

    reply = load({"config": config, "file:1/model.py": encoded})
    assert reply.status_code == 200, reply.text
    assert output(infer(server, "inline")) == 8.0

    client = grpcclient.InferenceServerClient(server.grpc_address)  # over gRPC the files are raw bytes
    client.load_model("inline", config=config, files={"file:1/model.py": OFFSET_MODEL.format(offset=9.0).encode()})
    assert output(infer(server, "inline")) == 10.0
    client.close()


CONTROLLER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        try:
            pb_utils.load_model("target")
        except pb_utils.TritonModelException as exc:
            self.refused = str(exc)

    def execute(self, requests):
        responses = []
        for request in requests:
            op = int(pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy().ravel()[0])
            if op == 1:
                pb_utils.load_model("target")
            elif op == 2:
                pb_utils.unload_model("target")
            elif op == 3:
                try:
                    pb_utils.load_model("nothing")
                except pb_utils.TritonModelException as exc:
                    return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))]
            elif op == 4:
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(self.refused))]
            elif op == 5:
                pb_utils.unload_model("controller")  # itself: must not wait for this very request
            ready = np.array([[int(pb_utils.is_model_ready("target"))]], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", ready)]))
        return responses
"""


def test_a_python_model_loads_and_unloads_others_through_pb_utils(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "controller", identity_config("controller", "TYPE_INT32", batch=1), CONTROLLER)
    offset_model(repository, "target", 1.0)
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=controller")

    def call(op: int) -> requests.Response:
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT32", "data": [op]}]}
        return requests.post(server.url + "/v2/models/controller/infer", json=body, timeout=60)

    assert call(0).json()["outputs"][0]["data"] == [0]
    assert call(1).json()["outputs"][0]["data"] == [1]
    assert output(infer(server, "target")) == 2.0
    assert call(2).json()["outputs"][0]["data"] == [0]
    assert infer(server, "target").status_code != 200
    assert "failed to poll from model repository" in call(3).json()["error"]
    assert "cannot be called from initialize()" in call(4).json()["error"]
    assert call(5).status_code == 200
    wait_for(
        lambda: {"name": "controller", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index(server),
        "the controller to unload itself",
    )


SLOW_INIT = """
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(1.5)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "INPUT0")]) for r in requests]
"""


def test_a_load_the_client_stops_waiting_for_still_completes(naiad: ServerFactory, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    write_model(repository, "slow", identity_config("slow", "TYPE_FP32", batch=8), SLOW_INIT)
    write_model(repository, "identity", identity_config("identity", "TYPE_FP32", batch=8), IDENTITY)
    (repository / "pipe" / "1").mkdir(parents=True)
    (repository / "pipe" / "config.pbtxt").write_text(PIPE)
    server = naiad.start(repository, "--model-control-mode=explicit", "--load-model=pipe", grpc=True)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert client.is_model_ready("identity"), "--load-model of an ensemble loads what its steps run on"
    with pytest.raises(InferenceServerException, match="Deadline"):
        client.load_model("slow", client_timeout=0.3)
    wait_for(lambda: client.is_model_ready("slow"), "the load to complete anyway")
    client.close()
