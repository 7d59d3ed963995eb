"""Triton's dynamic batcher over HTTP: queue size limits, queue timeouts, several instances, preserved order."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import pytest
import requests

from tests import models
from tests.conftest import RunningServer, ServerFactory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("scheduling")
    repo = root / "models"
    models.write_queue_limited(repo)
    models.write_model(
        repo,
        "queue_timeout",
        models.slow_batched_config(
            name="queue_timeout",
            delay=3.0,
            extra="dynamic_batching { default_queue_policy { timeout_action: REJECT "
            "default_timeout_microseconds: 300000 allow_timeout_override: true } }",
        ),
        models.SLOW,
    )
    models.write_model(
        repo,
        "parallel",
        models.slow_batched_config(
            name="parallel", delay=0.5, extra="instance_group [{ count: 4 kind: KIND_CPU }]"
        ).replace("output [", 'output [ { name: "SPAN" data_type: TYPE_FP64 dims: [ 2 ] },'),
        PARALLEL,
    )
    models.write_model(
        repo,
        "ordered",
        """
        backend: "python"
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        instance_group [ { count: 3 } ]
        dynamic_batching { preserve_ordering: true }
        """,
        models.IDENTITY,
    )
    factory = ServerFactory(root)
    yield factory.start(repo)
    factory.close()


PARALLEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        start = time.monotonic()
        time.sleep(0.5)
        span = np.array([[start, time.monotonic()]])
        return [pb_utils.InferenceResponse([
            pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()),
            pb_utils.Tensor("SPAN", span)]) for r in requests]
"""


def body(value: int, **parameters: object) -> dict[str, object]:
    request: dict[str, object] = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "INT32", "data": [value]}]}
    if parameters:
        request["parameters"] = parameters
    return request


def test_full_queue_is_rejected_with_503(server: RunningServer) -> None:
    url = server.url + "/v2/models/queue_limited/infer"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(requests.post, url, json=body(1))
        time.sleep(0.3)  # executing
        second = pool.submit(requests.post, url, json=body(2))
        time.sleep(0.3)  # queued: the queue is full
        third = requests.post(url, json=body(3))
        assert third.status_code == 503
        assert third.json() == {"error": "[request id: <id_unknown>] Exceeds maximum queue size"}
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert second.result().json()["outputs"][0]["data"] == [2]


def test_queue_timeout_rejects_with_503(server: RunningServer) -> None:
    url = server.url + "/v2/models/queue_timeout/infer"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.post, url, json=body(1))
        time.sleep(0.3)
        started = time.monotonic()
        second = requests.post(url, json=body(2))
        waited = time.monotonic() - started
        assert second.status_code == 503
        assert second.json() == {"error": "Request timeout expired"}
        assert waited < 2.0  # rejected when its 300 ms ran out, not when the instance came free (2.7 s)
        assert first.result().status_code == 200


def test_instances_run_concurrently(server: RunningServer) -> None:
    url = server.url + "/v2/models/parallel/infer"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: requests.post(url, json=body(i)), range(4)))
    outputs = [{o["name"]: o["data"] for o in reply.json()["outputs"]} for reply in replies]
    assert [o["OUTPUT0"] for o in outputs] == [[0], [1], [2], [3]]
    starts = [o["SPAN"][0] for o in outputs]
    ends = [o["SPAN"][1] for o in outputs]
    assert max(starts) < min(ends)  # all four executions overlapped in time, one per instance
    stats = requests.get(server.url + "/v2/models/parallel/stats").json()["model_stats"][0]
    assert stats["execution_count"] == 4


def test_preserve_ordering_returns_every_request_its_own_answer(server: RunningServer) -> None:
    url = server.url + "/v2/models/ordered/infer"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: requests.post(url, json=body(i)), range(200)))
    assert [reply.json()["outputs"][0]["data"] for reply in replies] == [[i] for i in range(200)]
