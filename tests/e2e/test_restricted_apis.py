"""`--http-restricted-api` and `--grpc-restricted-protocol` end to end: restricted API categories answer only calls
that carry the configured header, with tritonserver's statuses and messages; the others are untouched."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import RunningServer, ServerFactory
from tests.grpc_inputs import add_sub_inputs

ADMIN = {"admin-key": "s3cret"}
INFER = {"triton-grpc-protocol-infer-key": "infer-value"}
A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.float32)


@pytest.fixture
def server(tmp_path: Path, naiad: ServerFactory) -> Iterator[RunningServer]:
    yield naiad.start(
        models.build_inference_repository(tmp_path),
        "--http-restricted-api=model-repository,logging:admin-key=s3cret",
        "--grpc-restricted-protocol=inference:infer-key=infer-value",
        "--grpc-restricted-protocol=health:health-key=ok",
        "--grpc-restricted-protocol=model-repository:admin-key=s3cret",
        grpc=True,
    )


def test_http_restricted_categories_need_the_header(server: RunningServer) -> None:
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/logging")):
        for headers in ({}, {"admin-key": "wrong"}):
            refused = requests.request(method, server.url + path, headers=headers, timeout=10)
            assert refused.status_code == 403, path
            assert refused.json() == {"error": "This API is restricted, expecting header 'admin-key'"}
        assert requests.request(method, server.url + path, headers=ADMIN, timeout=10).status_code == 200
    load = requests.post(server.url + "/v2/repository/models/add_sub/load", timeout=10)  # any route of the category
    assert load.status_code == 403
    body = {
        "inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": A.ravel().tolist()},
            {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": B.ravel().tolist()},
        ]
    }
    assert requests.post(server.url + "/v2/models/add_sub/infer", json=body, timeout=10).status_code == 200
    assert requests.get(server.url + "/v2/health/ready", timeout=10).status_code == 200


def test_grpc_restricted_categories_need_the_metadata(server: RunningServer) -> None:
    message = "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'"
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        with pytest.raises(InferenceServerException) as refused:
            client.infer("add_sub", add_sub_inputs(A, B))
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and message in refused.value.message()
        with pytest.raises(InferenceServerException):
            client.infer("add_sub", add_sub_inputs(A, B), headers={"triton-grpc-protocol-infer-key": "wrong"})
        result = client.infer("add_sub", add_sub_inputs(A, B), headers=INFER)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
        with pytest.raises(InferenceServerException):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "s3cret"}).models
        with pytest.raises(InferenceServerException) as unhealthy:
            client.is_server_live()
        assert "triton-grpc-protocol-health-key" in unhealthy.value.message()
        assert client.is_server_live(headers={"triton-grpc-protocol-health-key": "ok"})

        answers: list[object] = []
        client.start_stream(callback=lambda result, error: answers.append(error or result))
        with contextlib.suppress(InferenceServerException):  # the stream may be refused before this is sent
            client.async_stream_infer("add_sub", add_sub_inputs(A, B))
        client.stop_stream()
        assert len(answers) == 1 and isinstance(answers[0], InferenceServerException)
        assert message in answers[0].message()
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as standard:
            health.Check(health_pb2.HealthCheckRequest())
        assert standard.value.code() == grpc.StatusCode.UNAVAILABLE
        healthy = (("triton-grpc-protocol-health-key", "ok"),)
        reply = health.Check(health_pb2.HealthCheckRequest(), metadata=healthy)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # List names every model of the repository: it needs the model-repository header too
        listing = channel.unary_unary("/grpc.health.v1.Health/List", request_serializer=lambda _: b"")
        with pytest.raises(grpc.RpcError) as unlisted:
            listing(None, metadata=healthy)
        assert "triton-grpc-protocol-admin-key" in str(unlisted.value.details())
        assert listing(None, metadata=(*healthy, ("triton-grpc-protocol-admin-key", "s3cret")))


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--http-restricted-api=logging", "expected <api>,<api>,...:<key>=<value>"),
        ("--http-restricted-api=logs:k=v", "unknown API 'logs'; the APIs are health, metadata, inference"),
        ("--grpc-restricted-protocol=inference:=v", "expected <api>,<api>,...:<key>=<value>"),
    ],
)
def test_bad_restriction_flags_are_refused(tmp_path: Path, flag: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", f"--model-repository={tmp_path}", flag],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr


def test_an_api_restricted_twice_is_refused(tmp_path: Path) -> None:
    flags = ["--http-restricted-api=logging:a=1", "--http-restricted-api=logging,health:b=2"]
    result = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", f"--model-repository={tmp_path}", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "API 'logging' is restricted twice" in result.stderr
