"""End to end over gRPC: a real `python -m naiad serve` process driven with `tritonclient.grpc` and raw stubs."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import GRPC_STACKS, RunningServer, ServerFactory
from tests.grpc_inputs import add_sub_inputs, one_input

Field = descriptor_pb2.FieldDescriptorProto

A = np.arange(16, dtype=np.float32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.float32)


@pytest.fixture(scope="module", params=GRPC_STACKS)
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("grpc")
    factory = ServerFactory(root, (f"--grpc-stack={request.param}",))
    yield factory.start(models.build_inference_repository(root), grpc=True)
    factory.close()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as triton:
        yield triton


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def expect_error(call: Any, code: grpc.StatusCode, *fragments: str) -> str:
    """Run `call`, which must fail with `code`; every fragment must be in the message."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    assert error.code() == code, (error.code(), error.details())
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    return str(error.details())


# Health, metadata, config, statistics, repository


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub") and client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("add_sub", "9")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "naiad" and "statistics" in metadata["extensions"]


def test_model_metadata_and_config_match_http(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("add_sub", as_json=True)
    assert metadata == requests.get(server.url + "/v2/models/add_sub").json() | {
        "inputs": [{"name": f"INPUT{i}", "datatype": "FP32", "shape": ["-1", "16"]} for i in (0, 1)],
        "outputs": [{"name": f"OUTPUT{i}", "datatype": "FP32", "shape": ["-1", "16"]} for i in (0, 1)],
    }
    config = client.get_model_config("add_sub").config
    http_config = requests.get(server.url + "/v2/models/add_sub/config").json()
    assert config.name == http_config["name"] == "add_sub"
    assert config.max_batch_size == http_config["max_batch_size"] == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert config.HasField("dynamic_batching")


def test_metadata_errors_name_the_model(client: grpcclient.InferenceServerClient) -> None:
    for call in (client.get_model_metadata, client.get_model_config, client.get_inference_statistics):
        with pytest.raises(InferenceServerException) as caught:
            call("nope")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert "'nope'" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("add_sub", "9")
    assert caught.value.status() == "StatusCode.NOT_FOUND" and "add_sub" in caught.value.message()


def test_statistics_count_inferences(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("add_sub_plain").model_stats[0]
    for _ in range(3):
        client.infer("add_sub_plain", add_sub_inputs(A, B))
    after = client.get_inference_statistics("add_sub_plain", "1").model_stats[0]
    assert after.name == "add_sub_plain" and after.version == "1"
    assert after.inference_count == before.inference_count + 3
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.compute_infer.ns > 0
    every = client.get_inference_statistics()
    assert {"add_sub", "add_sub_plain"} <= {s.name for s in every.model_stats}


def test_repository_index_and_model_control(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "add_sub", "version": "1", "state": "READY"} in index
    for call in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException) as caught:
            call("add_sub")
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "--model-control-mode=explicit" in caught.value.message()


def test_extensions_naiad_lacks_are_unimplemented(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    calls = [
        (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest(), "shared memory"),
        (stub.SystemSharedMemoryRegister, pb.SystemSharedMemoryRegisterRequest(name="r"), "shared memory"),
        (stub.CudaSharedMemoryStatus, pb.CudaSharedMemoryStatusRequest(), "CUDA shared memory"),
        (stub.TraceSetting, pb.TraceSettingRequest(), "tracing"),
    ]
    for call, request, fragment in calls:
        expect_error(partial(call, request), grpc.StatusCode.UNIMPLEMENTED, fragment, "not supported by naiad")


def health_list_response_class() -> Any:
    """`grpc.health.v1.HealthListResponse`, built here from its .proto definition: grpcio-health-checking ships it
    only from 1.85 on, which needs a protobuf that tritonclient does not allow."""
    proto = descriptor_pb2.FileDescriptorProto(name="health_list.proto", package="grpc.health.v1", syntax="proto3")
    response = proto.message_type.add(name="HealthCheckResponse")
    response.field.add(name="status", number=1, type=Field.TYPE_INT32, label=Field.LABEL_OPTIONAL)
    listing = proto.message_type.add(name="HealthListResponse")
    entry = listing.nested_type.add(name="StatusesEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=Field.TYPE_STRING, label=Field.LABEL_OPTIONAL)
    entry.field.add(
        name="value",
        number=2,
        type=Field.TYPE_MESSAGE,
        type_name=".grpc.health.v1.HealthCheckResponse",
        label=Field.LABEL_OPTIONAL,
    )
    listing.field.add(
        name="statuses",
        number=1,
        type=Field.TYPE_MESSAGE,
        type_name=".grpc.health.v1.HealthListResponse.StatusesEntry",
        label=Field.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthListResponse"))


def test_standard_health_service(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "add_sub", "anything"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        list_call = channel.unary_unary(
            "/grpc.health.v1.Health/List",
            request_serializer=lambda _: b"",
            response_deserializer=health_list_response_class().FromString,
        )
        listed = list_call(None).statuses
        assert {"", "add_sub", "identity_bytes"} <= set(listed)
        assert {entry.status for entry in listed.values()} == {health_pb2.HealthCheckResponse.SERVING}
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


# Inference


def test_infer_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("add_sub", add_sub_inputs(A, B), request_id="42")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    response = result.get_response()
    assert response.id == "42" and response.model_name == "add_sub" and response.model_version == "1"
    assert [o.datatype for o in response.outputs] == ["FP32", "FP32"]
    assert list(response.outputs[0].shape) == [1, 16]


@pytest.mark.parametrize("datatype", list(models.DATATYPES))
def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    if datatype == "BYTES":
        value = np.array([b"a", b"", "\u00e9t\u00e9".encode(), b"\x00\xff"], dtype=np.object_)
    elif datatype == "BOOL":
        value = np.array([True, False, True])
    else:
        value = np.arange(5).astype(grpcclient.triton_to_np_dtype(datatype))
    result = client.infer(f"identity_{datatype.lower()}", one_input("INPUT0", value, datatype))
    out = result.as_numpy("OUTPUT0")
    assert result.get_output("OUTPUT0").datatype == datatype
    np.testing.assert_array_equal(out, value)


def test_typed_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="add_sub")
    for name, values in (("INPUT0", A), ("INPUT1", B)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(values.reshape(-1).tolist())
    reply = stub.ModelInfer(request)
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], dtype=np.float32), (A + B).reshape(-1))
    ints = pb.ModelInferRequest(model_name="identity_int16")
    ints.inputs.add(name="INPUT0", datatype="INT16", shape=[3]).contents.int_contents.extend([-3, 0, 7])
    reply = stub.ModelInfer(ints)
    assert np.frombuffer(reply.raw_output_contents[0], dtype="<i2").tolist() == [-3, 0, 7]
    text = pb.ModelInferRequest(model_name="identity_bytes")
    text.inputs.add(name="INPUT0", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"hi", b"there"])
    reply = stub.ModelInfer(text)
    assert reply.raw_output_contents[0] == b"\x02\x00\x00\x00hi\x05\x00\x00\x00there"


def test_typed_contents_errors(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    wrong_field = pb.ModelInferRequest(model_name="identity_int16")
    wrong_field.inputs.add(name="INPUT0", datatype="INT16", shape=[1]).contents.fp32_contents.append(1.0)
    expect_error(lambda: stub.ModelInfer(wrong_field), grpc.StatusCode.INVALID_ARGUMENT, "'int_contents'", "INPUT0")
    out_of_range = pb.ModelInferRequest(model_name="identity_int8")
    out_of_range.inputs.add(name="INPUT0", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    expect_error(lambda: stub.ModelInfer(out_of_range), grpc.StatusCode.INVALID_ARGUMENT, "out of range", "INT8")
    count = pb.ModelInferRequest(model_name="identity_int16")
    count.inputs.add(name="INPUT0", datatype="INT16", shape=[3]).contents.int_contents.append(1)
    expect_error(lambda: stub.ModelInfer(count), grpc.StatusCode.INVALID_ARGUMENT, "needs 3, got 1")
    both = pb.ModelInferRequest(model_name="identity_int16")
    both.inputs.add(name="INPUT0", datatype="INT16", shape=[1]).contents.int_contents.append(1)
    both.raw_input_contents.append(b"\x01\x00")
    expect_error(lambda: stub.ModelInfer(both), grpc.StatusCode.INVALID_ARGUMENT, "contents field must not be")
    fp16 = pb.ModelInferRequest(model_name="identity_fp16")
    fp16.inputs.add(name="INPUT0", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    expect_error(lambda: stub.ModelInfer(fp16), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")
    empty = pb.ModelInferRequest(model_name="identity_int16")
    empty.inputs.add(name="INPUT0", datatype="INT16", shape=[1])
    expect_error(lambda: stub.ModelInfer(empty), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0", "no data")


def test_inference_errors_match_http(server: RunningServer, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The same bad request gets the same message over both protocols, with Triton's status for each."""

    def both(body: dict[str, Any], message: pb.ModelInferRequest, code: grpc.StatusCode, http_status: int) -> None:
        reply = requests.post(server.url + f"/v2/models/{message.model_name}/infer", json=body)
        assert reply.status_code == http_status, reply.text
        details = expect_error(lambda: stub.ModelInfer(message), code)
        assert details == reply.json()["error"]

    def request(model: str, name: str = "INPUT0", datatype: str = "FP32", shape: tuple[int, ...] = (1, 16)) -> Any:
        body = {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": [0] * 16}]}
        message = pb.ModelInferRequest(model_name=model)
        message.inputs.add(name=name, datatype=datatype, shape=list(shape))
        message.raw_input_contents.append(bytes(16 * 4))
        return body, message

    both(*request("nope"), grpc.StatusCode.NOT_FOUND, 404)
    both(*request("add_sub", name="BOGUS"), grpc.StatusCode.INVALID_ARGUMENT, 400)
    both(*request("add_sub"), grpc.StatusCode.INVALID_ARGUMENT, 400)  # INPUT1 missing
    both(*request("identity_int32", datatype="FP32", shape=(16,)), grpc.StatusCode.INVALID_ARGUMENT, 400)
    body, message = request("add_sub_plain", shape=(16,))
    both(body, message, grpc.StatusCode.INVALID_ARGUMENT, 400)
    body, message = request("failing", datatype="INT32", shape=(16,))
    both(body, message, grpc.StatusCode.INTERNAL, 500)


def test_every_parameter_kind_reaches_the_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="params_echo")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.array([1], dtype="<i4").tobytes())
    request.parameters["temperature"].double_param = 0.5
    request.parameters["big"].uint64_param = 2**64 - 1
    request.parameters["n"].int64_param = -3
    request.parameters["mode"].string_param = "fast"
    request.parameters["flag"].bool_param = False
    reply = stub.ModelInfer(request)
    length = int.from_bytes(reply.raw_output_contents[0][:4], "little")
    seen = json.loads(reply.raw_output_contents[0][4 : 4 + length])
    assert seen["parameters"] == {"temperature": 0.5, "big": 2**64 - 1, "n": -3, "mode": "fast", "flag": False}


def test_input_errors(client: grpcclient.InferenceServerClient, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    short = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        short.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        short.raw_input_contents.append(bytes(10))
    expect_error(lambda: stub.ModelInfer(short), grpc.StatusCode.INVALID_ARGUMENT, "INPUT0", "Expected 64, got 10")
    missing_raw = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        missing_raw.inputs.add(name=name, datatype="FP32", shape=[1, 16])
    missing_raw.raw_input_contents.append(bytes(64))
    expect_error(lambda: stub.ModelInfer(missing_raw), grpc.StatusCode.INVALID_ARGUMENT, "expected 2 raw input")
    big = np.zeros((9, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("add_sub", add_sub_inputs(big, big))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "batch" in caught.value.message()
    bad_type = pb.ModelInferRequest(model_name="add_sub")
    bad_type.inputs.add(name="INPUT0", datatype="FLOAT", shape=[1])
    expect_error(lambda: stub.ModelInfer(bad_type), grpc.StatusCode.INVALID_ARGUMENT, "invalid datatype 'FLOAT'")


def test_requested_outputs_parameters_and_classification(client: grpcclient.InferenceServerClient) -> None:
    only_one = client.infer("add_sub", add_sub_inputs(A, B), outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only_one.get_response().outputs] == ["OUTPUT1"]
    echo = client.infer(
        "params_echo",
        one_input("INPUT0", np.array([[1]], dtype=np.int32), "INT32"),
        request_id="abc",
        outputs=[grpcclient.InferRequestedOutput("OUTPUT0")],
        parameters={"mode": "fast", "flag": True, "n": 3},
    )
    seen = json.loads(echo.as_numpy("OUTPUT0")[0])
    assert seen == {"id": "abc", "outputs": ["OUTPUT0"], "parameters": {"flag": True, "mode": "fast", "n": 3}}
    scores = np.array([[0.1, 0.7, 0.05, 0.15]], dtype=np.float32)
    top = client.infer(
        "classifier",
        one_input("INPUT0", scores, "FP32"),
        outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)],
    )
    assert top.as_numpy("OUTPUT0").tolist() == [[b"0.700000:1:dog", b"0.150000:3:fish"]]


def test_async_infer_and_compression(client: grpcclient.InferenceServerClient) -> None:
    done: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def callback(result: Any, error: Any) -> None:
        done.put((result, error))

    for k in range(8):
        client.async_infer("add_sub", add_sub_inputs(A * k, B), callback, request_id=str(k))
    results = [done.get(timeout=10) for _ in range(8)]
    assert all(error is None for _, error in results)
    for result, _ in results:
        k = int(result.get_response().id)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A * k + B)
    for algorithm in ("gzip", "deflate"):
        zipped = client.infer("add_sub", add_sub_inputs(A, B), compression_algorithm=algorithm)
        np.testing.assert_array_equal(zipped.as_numpy("OUTPUT1"), A - B)


def test_stream_of_requests_with_an_error_in_the_middle(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        for k in range(5):
            model = "nope" if k == 2 else "add_sub"
            client.async_stream_infer(model, add_sub_inputs(A * k, B), request_id=str(k))
        bad = add_sub_inputs(A, B)[:1]
        client.async_stream_infer("add_sub", bad, request_id="missing-input")
        client.async_stream_infer("add_sub", add_sub_inputs(A * 9, B), request_id="9")
        got = [answers.get(timeout=10) for _ in range(7)]
    finally:
        client.stop_stream()
    successes = {r.get_response().id: r for r, e in got if e is None}
    errors = [str(e) for r, e in got if e is not None]
    assert sorted(successes) == ["0", "1", "3", "4", "9"]
    for key, result in successes.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A * int(key) + B)
    assert len(errors) == 2
    assert any("unknown model: 'nope'" in e for e in errors), errors
    assert any("INPUT1" in e for e in errors), errors


def test_stream_errors_carry_the_request_id(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    def requests_() -> Iterator[pb.ModelInferRequest]:
        yield pb.ModelInferRequest(model_name="nope", id="first")
        message = pb.ModelInferRequest(model_name="identity_int32", id="second")
        message.inputs.add(name="INPUT0", datatype="INT32", shape=[2])
        message.raw_input_contents.append(np.array([5, 6], dtype="<i4").tobytes())
        yield message

    replies = list(stub.ModelStreamInfer(requests_()))
    by_id = {r.infer_response.id: r for r in replies}
    assert "unknown model" in by_id["first"].error_message
    assert by_id["second"].error_message == ""
    assert np.frombuffer(by_id["second"].infer_response.raw_output_contents[0], dtype="<i4").tolist() == [5, 6]


def test_http_and_grpc_share_one_server(server: RunningServer, client: grpcclient.InferenceServerClient) -> None:
    before = requests.get(server.url + "/v2/models/identity_fp64/stats").json()["model_stats"][0]["inference_count"]
    client.infer("identity_fp64", one_input("INPUT0", np.array([1.5]), "FP64"))
    after = requests.get(server.url + "/v2/models/identity_fp64/stats").json()["model_stats"][0]["inference_count"]
    assert after == before + 1


# Server options


def test_allow_grpc_false_leaves_the_port_closed(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    server = naiad.start(repo, grpc=False)
    with grpcclient.InferenceServerClient(server.grpc_address) as client, pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=2)


def test_port_in_use_is_a_clear_error(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    first = naiad.start(repo, grpc=True)
    with pytest.raises(AssertionError) as caught:
        naiad.start(repo, f"--grpc-port={first.grpc_port}", grpc=True)
    assert "failed to start the GRPC service" in str(caught.value)
    assert f"{first.grpc_port}" in str(caught.value)


def test_stream_answers_in_request_order(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    slow = models.identity_config(
        "slow", "TYPE_INT32", extra='parameters { key: "delay_s" value: { string_value: "0.5" } }'
    )
    models.write_model(repo, "slow", slow, models.SLOW)
    models.write_model(repo, "fast", models.identity_config("fast", "TYPE_INT32"), models.IDENTITY)
    server = naiad.start(repo, grpc=True)

    def requests_() -> Iterator[pb.ModelInferRequest]:
        for key, model in (("a", "slow"), ("b", "fast"), ("c", "nope"), ("d", "fast")):
            message = pb.ModelInferRequest(model_name=model, id=key)
            message.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
            message.raw_input_contents.append(np.array([1], dtype="<i4").tobytes())
            yield message

    with grpc.insecure_channel(server.grpc_address) as channel:
        replies = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests_()))
    assert [r.infer_response.id for r in replies] == ["a", "b", "c", "d"]
    assert [bool(r.error_message) for r in replies] == [False, False, True, False]
    final = replies[0].infer_response.parameters["triton_final_response"]
    assert final.WhichOneof("parameter_choice") == "bool_param" and final.bool_param


def test_health_follows_readiness(tmp_path: Path, naiad: ServerFactory) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "broken", models.identity_config("broken", "TYPE_INT32"), "raise ImportError('no')\n")
    server = naiad.start(repo, "--exit-on-error=false", grpc=True, until="started")
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with grpc.insecure_channel(server.grpc_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        health = health_pb2_grpc.HealthStub(channel)
        # strict readiness: one model failed to load, so the server is not ready, but add_sub is
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == not_serving
        assert health.Check(health_pb2.HealthCheckRequest(service="add_sub")).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="broken")).status == not_serving


def test_messages_beyond_grpcs_4_mib_default(client: grpcclient.InferenceServerClient) -> None:
    """Triton takes messages up to 2 GiB; so does naiad (grpc's own default stops at 4 MiB)."""
    value = np.arange(3_000_000, dtype=np.int32)  # 12 MB each way
    result = client.infer("identity_int32", one_input("INPUT0", value, "INT32"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), value)


def test_core_errors_carry_the_request_id(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """As Triton's core does: '[request id: <id>] ' before what the checks of the request find."""
    message = pb.ModelInferRequest(model_name="add_sub", id="req-7")
    message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    message.raw_input_contents.append(bytes(64))
    details = expect_error(lambda: stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT)
    assert details == (
        "[request id: req-7] expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], but "
        "missing required input(s) ['INPUT1']. Please provide all required input(s)."
    )
    message.id = ""
    details = expect_error(lambda: stub.ModelInfer(message), grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("[request id: <id_unknown>] expected 2 inputs but got 1 inputs")
