"""Triton's logging extension end to end: `/v2/logging` and the gRPC `LogSettings` change what a real server logs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, ServerFactory

# Logs one line at each level for every request, so that what the log holds shows which levels are on.
CHATTY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        logger = pb_utils.Logger
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            logger.log_info(f"info {value[0]}")
            logger.log_warn(f"warning {value[0]}")
            logger.log_verbose(f"verbose {value[0]}")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]))
        return responses
"""
DEFAULTS = {
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}


@pytest.fixture
def server(tmp_path: Path, naiad: ServerFactory) -> Iterator[RunningServer]:
    repo = tmp_path / "models"
    models.write_model(repo, "chatty", models.identity_config("chatty", "TYPE_INT32"), CHATTY)
    yield naiad.start(repo, f"--log-file={tmp_path / 'naiad.log'}", grpc=True)


def log_lines(server: RunningServer, value: int) -> list[str]:
    """The log lines the model wrote for the request that sent `value`."""
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [value]}]}
    assert requests.post(server.url + "/v2/models/chatty/infer", json=body, timeout=10).status_code == 200
    log = Path(next(arg for arg in server.process.args if str(arg).startswith("--log-file=")).split("=", 1)[1])
    pattern = re.compile(rf"\] (info|warning|verbose) {value}$")
    return [line for line in log.read_text().splitlines() if pattern.search(line)]


def settings(server: RunningServer, method: str = "GET", body: Any = None) -> requests.Response:
    return requests.request(method, server.url + "/v2/logging", json=body, timeout=10)


def test_http_logging_settings_change_what_is_logged(server: RunningServer, tmp_path: Path) -> None:
    assert settings(server).json() == {**DEFAULTS, "log_file": str(tmp_path / "naiad.log")}
    assert [line.split("] ")[1] for line in log_lines(server, 1)] == ["info 1", "warning 1"]

    changed = settings(server, "POST", {"log_verbose_level": 1, "log_info": False, "log_format": "ISO8601"})
    assert changed.status_code == 200
    assert changed.json() == {
        **DEFAULTS,
        "log_file": str(tmp_path / "naiad.log"),
        "log_info": False,
        "log_verbose_level": 1,
        "log_format": "ISO8601",
    }
    lines = log_lines(server, 2)
    assert [line.split("] ")[1] for line in lines] == ["warning 2", "verbose 2"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [WD] ", line) for line in lines), lines

    restored = settings(server, "POST", {"log_verbose_level": 0, "log_info": True, "log_format": "default"})
    assert restored.json()["log_verbose_level"] == 0
    assert [line.split("] ")[1] for line in log_lines(server, 3)] == ["info 3", "warning 3"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"log_file": "/root/.bashrc"}, 501, "log file location can not be updated through network protocol"),
        ({"log_info": "yes"}, 400, "expect boolean for 'log_info'"),
        ({"log_info": False, "log_verbose_level": -1}, 400, "expect unsigned integer for 'log_verbose_level'"),
        ({"log_verbose_level": True}, 400, "expect unsigned integer for 'log_verbose_level'"),
        ({"log_format": "json"}, 400, "invalid argument for --log_format, got: json"),
        ({"log_infos": False}, 400, "unknown logging setting 'log_infos'"),
        ([1], 400, "the request must be a JSON object"),
    ],
)
def test_bad_logging_settings_are_refused_and_change_nothing(
    server: RunningServer, body: Any, status: int, message: str
) -> None:
    reply = settings(server, "POST", body)
    assert reply.status_code == status and message in reply.json()["error"]
    assert {key: value for key, value in settings(server).json().items() if key != "log_file"} == DEFAULTS


def test_logging_accepts_get_and_post_only(server: RunningServer) -> None:
    reply = settings(server, "PUT", {})
    assert reply.status_code == 405 and reply.headers["allow"] == "GET, POST"
    assert "logging" in requests.get(server.url + "/v2", timeout=10).json()["extensions"]


def test_tritonclient_reads_and_changes_the_settings_over_http_and_grpc(server: RunningServer) -> None:
    http = httpclient.InferenceServerClient(server.address)
    assert http.get_log_settings()["log_verbose_level"] == 0
    assert http.update_log_settings({"log_verbose_level": 2})["log_verbose_level"] == 2
    with grpcclient.InferenceServerClient(server.grpc_address) as grpc:
        current = grpc.get_log_settings(as_json=True)["settings"]
        assert current["log_verbose_level"] == {"uint32_param": 2}
        assert current["log_info"] == {"bool_param": True} and current["log_format"] == {"string_param": "default"}
        updated = grpc.update_log_settings({"log_verbose_level": 0, "log_warning": False}, as_json=True)["settings"]
        assert updated["log_verbose_level"] == {"uint32_param": 0} and updated["log_warning"] == {"bool_param": False}
        with pytest.raises(InferenceServerException) as refused:
            grpc.update_log_settings({"log_file": "/tmp/elsewhere.log"})
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "log file location can not be updated" in refused.value.message()
    assert [line.split("] ")[1] for line in log_lines(server, 4)] == ["info 4"]
    http.close()
