"""The Python backend against real model.py files written in tmp_path, and the pb_utils module itself."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from naiad.backends.base import InstanceContext
from naiad.backends.python import triton_python_backend_utils as pb_utils
from naiad.backends.python.backend import PythonBackend, PythonModelInstance
from naiad.config.model_config import build
from naiad.domain.errors import ErrorCode, ServerError
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult, RequestedOutput, Tensor

ADD_SUB = """
import json
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        config = json.loads(args["model_config"])
        self.dtype = pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, "OUTPUT0")["data_type"])
        self.model_dir = pb_utils.get_model_dir()
        self.seen = []

    def execute(self, requests):
        responses = []
        for request in requests:
            self.seen.append((request.request_id(), request.requested_output_names(), request.parameters()))
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype))
            out1 = pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        self.args["finalized"] = "yes"
"""

ADD_SUB_CONFIG: dict[str, Any] = {
    "backend": "python",
    "max_batch_size": 8,
    "input": [
        {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
        {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]},
    ],
    "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
        {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4]},
    ],
}

IO_CONFIG: dict[str, Any] = {
    "backend": "python",
    "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_STRING", "dims": [-1]}],
}


class LocalCaller:
    """A real ModelCaller: runs requests on instances loaded by the real PythonBackend."""

    def __init__(self) -> None:
        self.instances: dict[str, PythonModelInstance] = {}
        self.calls: list[tuple[str, str]] = []

    def infer(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        self.calls.append((model_name, model_version))
        instance = self.instances.get(model_name)
        if instance is None:
            raise ServerError(ErrorCode.NOT_FOUND, f"Request for unknown model: '{model_name}' is not found")
        result = instance.execute([request])[0]
        if isinstance(result, ServerError):
            raise result
        return InferenceResponse(model_name, model_version or "1", request.id, result.outputs, result.parameters)

    async def infer_async(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        await asyncio.sleep(0)
        return self.infer(model_name, model_version, request)


def write_model(root: Path, name: str, source: str, **files: str) -> Path:
    version_dir = root / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for filename, text in files.items():
        (version_dir / f"{filename}.py").write_text(textwrap.dedent(text))
    return version_dir


def load(
    root: Path,
    name: str,
    raw: dict[str, Any],
    caller: LocalCaller | None = None,
    instance_name: str | None = None,
) -> PythonModelInstance:
    context = InstanceContext(
        config=build(dict(raw), name),
        version=1,
        model_dir=root / name,
        version_dir=root / name / "1",
        instance_name=instance_name or f"{name}_0_0",
        kind="KIND_CPU",
        device_id=0,
        caller=caller or LocalCaller(),
    )
    instance = PythonBackend().load(context)
    if caller is not None:
        caller.instances[name] = instance
    return instance


def fp32_request(a: Sequence[float], b: Sequence[float], **kwargs: Any) -> InferenceRequest:
    arrays = [np.array([a], dtype=np.float32), np.array([b], dtype=np.float32)]
    inputs = tuple(Tensor(f"INPUT{i}", "FP32", arr.shape, arr) for i, arr in enumerate(arrays))
    return InferenceRequest(inputs=inputs, **kwargs)


def bytes_request(*values: bytes) -> InferenceRequest:
    array = np.empty(len(values), dtype=np.object_)
    array[:] = list(values)
    return InferenceRequest(inputs=(Tensor("IN", "BYTES", array.shape, array),))


def ok(result: InferenceResult | ServerError) -> InferenceResult:
    assert isinstance(result, InferenceResult), result
    return result


def outputs(result: InferenceResult | ServerError) -> dict[str, Tensor]:
    return {tensor.name: tensor for tensor in ok(result).outputs}


def test_add_sub_runs_each_request_and_gets_tritons_initialize_args(tmp_path: Path) -> None:
    write_model(tmp_path, "add_sub", ADD_SUB)
    instance = load(tmp_path, "add_sub", ADD_SUB_CONFIG)
    results = instance.execute([fp32_request([1, 2, 3, 4], [1, 1, 1, 1]), fp32_request([0, 0, 0, 0], [2, 2, 2, 2])])
    first, second = outputs(results[0]), outputs(results[1])
    assert first["OUTPUT0"].datatype == "FP32" and first["OUTPUT0"].shape == (1, 4)
    np.testing.assert_array_equal(first["OUTPUT0"].data, [[2, 3, 4, 5]])
    np.testing.assert_array_equal(first["OUTPUT1"].data, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(second["OUTPUT1"].data, [[-2, -2, -2, -2]])
    args = instance._model.args
    assert set(args) == {
        "model_config", "model_instance_kind", "model_instance_name", "model_instance_device_id",
        "model_repository", "model_version", "model_name",
    }  # fmt: skip
    assert all(isinstance(value, str) for value in args.values())
    assert json.loads(args["model_config"])["name"] == "add_sub"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_name"] == "add_sub_0_0"
    assert args["model_instance_device_id"] == "0" and args["model_version"] == "1"
    assert args["model_repository"] == str(tmp_path / "add_sub") and args["model_name"] == "add_sub"
    assert instance._model.model_dir == str(tmp_path / "add_sub" / "1")
    instance.unload()
    assert args["finalized"] == "yes"


def test_inputs_are_the_request_arrays_and_only_requested_outputs_return(tmp_path: Path) -> None:
    write_model(tmp_path, "add_sub", ADD_SUB)
    instance = load(tmp_path, "add_sub", ADD_SUB_CONFIG)
    request = fp32_request(
        [1, 1, 1, 1], [1, 1, 1, 1], outputs=(RequestedOutput("OUTPUT1"),), id="r1", parameters={"k": 3}
    )
    pb_request = pb_utils.InferenceRequest._incoming(request, "add_sub", frozenset({"OUTPUT0", "OUTPUT1"}))
    assert pb_request.inputs()[0].as_numpy() is request.inputs[0].data  # no copy
    result = ok(instance.execute([request])[0])
    assert [tensor.name for tensor in result.outputs] == ["OUTPUT1"]
    ok(instance.execute([fp32_request([1, 1, 1, 1], [1, 1, 1, 1])])[0])
    assert instance._model.seen == [("r1", {"OUTPUT1"}, '{"k": 3}'), ("", {"OUTPUT0", "OUTPUT1"}, "{}")]


def test_bytes_inputs_are_object_arrays_of_bytes_and_str_outputs_become_bytes(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                assert values.dtype == np.object_ and all(type(v) is bytes for v in values)
                upper = np.array([v.decode().upper() for v in values])  # a numpy str array
                out = pb_utils.Tensor("OUT", upper)
                assert out.triton_dtype() == 13
                responses.append(pb_utils.InferenceResponse([out]))
            return responses
    """
    write_model(tmp_path, "upper", source)
    instance = load(tmp_path, "upper", IO_CONFIG)
    out = outputs(instance.execute([bytes_request(b"ab", "é".encode())])[0])["OUT"]
    assert out.datatype == "BYTES" and out.data.dtype == np.object_ and out.shape == (2,)
    assert list(out.data) == [b"AB", "É".encode()]


def test_an_exception_in_execute_fails_every_request_and_the_instance_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            if len(requests) > 1:
                raise ValueError("too many")
            return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(requests[0], "IN")])]
    """
    write_model(tmp_path, "flaky", source)
    raw = {**IO_CONFIG, "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1]}]}
    instance = load(tmp_path, "flaky", {**raw, "output": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1]}]})
    with caplog.at_level(logging.ERROR, logger="naiad.backends.python"):
        results = instance.execute([bytes_request(b"a"), bytes_request(b"b")])
    assert all(isinstance(result, ServerError) for result in results)
    error = results[0]
    assert isinstance(error, ServerError) and error.code is ErrorCode.INTERNAL
    assert error.message == (
        "Failed to process the request(s) for model 'flaky_0_0', message: ValueError: too many\n\nAt:\n"
        f"  {tmp_path / 'flaky' / '1' / 'model.py'}(7): execute\n"
    )
    assert "Traceback" in caplog.text and "too many" in caplog.text
    assert list(outputs(instance.execute([bytes_request(b"x")])[0])["IN"].data) == [b"x"]


def test_the_error_of_a_nested_call_lists_the_models_frames_innermost_first(tmp_path: Path) -> None:
    source = """
    def parse(text):
        return int(text)

    class TritonPythonModel:
        def execute(self, requests):
            return parse("x")
    """
    write_model(tmp_path, "nested", source)
    raw = {**IO_CONFIG, "input": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1]}]}
    instance = load(tmp_path, "nested", {**raw, "output": [{"name": "IN", "data_type": "TYPE_STRING", "dims": [-1]}]})
    (error,) = instance.execute([bytes_request(b"a")])
    model = tmp_path / "nested" / "1" / "model.py"
    assert isinstance(error, ServerError)
    assert error.message == (
        "Failed to process the request(s) for model 'nested_0_0', message: ValueError: invalid literal for int() "
        f"with base 10: 'x'\n\nAt:\n  {model}(3): parse\n  {model}(7): execute\n"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "return [pb_utils.InferenceResponse([])]",
            "Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
            "InferenceRequest(s) size is:2, and InferenceResponse(s) size is:1",
        ),
        ("return {}", "Expected a list in the execute return, found type '<class 'dict'>'."),
        (
            "return ['no', 'no']",
            "Expected an 'InferenceResponse' object in the execute function return list, found type '<class 'str'>'.",
        ),
    ],
)
def test_a_return_that_breaks_tritons_rules_fails_the_batch(tmp_path: Path, body: str, message: str) -> None:
    source = f"""
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            {body}
    """
    write_model(tmp_path, "wrong", source)
    instance = load(tmp_path, "wrong", IO_CONFIG)
    results = instance.execute([bytes_request(b"a"), bytes_request(b"b")])
    for result in results:
        assert isinstance(result, ServerError) and result.code is ErrorCode.INTERNAL
        assert result.message == f"Failed to process the request(s) for model 'wrong_0_0', message: {message}"


@pytest.mark.parametrize(
    ("source", "code", "fragment"),
    [
        ("def broken(:\n    pass\n", ErrorCode.INTERNAL, "failed to load model 'bad': SyntaxError: "),
        (
            "class TritonPythonModel:\n    def initialize(self, args):\n        x\n    def execute(self, r):\n"
            "        return []\n",
            ErrorCode.INTERNAL,
            "failed to load model 'bad': NameError: name 'x' is not defined",
        ),
        ("import no_such_module_anywhere\n", ErrorCode.INTERNAL, "ModuleNotFoundError: No module named"),
        ("X = 1\n", ErrorCode.INVALID_ARG, "does not define class TritonPythonModel"),
        ("class TritonPythonModel:\n    pass\n", ErrorCode.INVALID_ARG, "does not implement `execute` method."),
    ],
)
def test_load_failures_name_the_model_and_the_cause(
    tmp_path: Path, source: str, code: ErrorCode, fragment: str
) -> None:
    write_model(tmp_path, "bad", source)
    with pytest.raises(ServerError) as caught:
        load(tmp_path, "bad", IO_CONFIG)
    assert caught.value.code is code
    assert "'bad'" in caught.value.message and fragment in caught.value.message


def test_a_missing_model_file_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "gone" / "1").mkdir(parents=True)
    with pytest.raises(ServerError) as caught:
        load(tmp_path, "gone", {**IO_CONFIG, "default_model_filename": "other.py"})
    assert caught.value.code is ErrorCode.INVALID_ARG
    assert caught.value.message == (
        f"failed to load model 'gone': Python model file not found in '{tmp_path / 'gone' / '1' / 'other.py'}'"
    )


def test_async_execute_runs_on_the_instances_loop(tmp_path: Path) -> None:
    source = """
    import asyncio
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.loops = set()

        async def execute(self, requests):
            await asyncio.sleep(0)
            self.loops.add(asyncio.get_running_loop())
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", r.inputs()[0].as_numpy())]) for r in requests]
    """
    write_model(tmp_path, "aio", source)
    instance = load(tmp_path, "aio", IO_CONFIG)
    for _ in range(2):
        assert list(outputs(instance.execute([bytes_request(b"z")])[0])["OUT"].data) == [b"z"]
    assert len(instance._model.loops) == 1
    instance.unload()


def test_error_responses_keep_the_models_code_and_message_per_request(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                value = request.inputs()[0].as_numpy()[0]
                if value == b"bad":
                    error = pb_utils.TritonError("value is bad", pb_utils.TritonError.INVALID_ARG)
                    responses.append(pb_utils.InferenceResponse(error=error))
                else:
                    out = pb_utils.Tensor("OUT", request.inputs()[0].as_numpy())
                    responses.append(pb_utils.InferenceResponse([out], parameters={"seen": True, "n": 1}))
            return responses
    """
    write_model(tmp_path, "errors", source)
    instance = load(tmp_path, "errors", IO_CONFIG)
    good, bad = instance.execute([bytes_request(b"good"), bytes_request(b"bad")])
    assert dict(ok(good).parameters) == {"seen": True, "n": 1}
    assert isinstance(bad, ServerError) and bad.code is ErrorCode.INVALID_ARG and bad.message == "value is bad"


def test_the_response_sender_answers_a_non_decoupled_request(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                out = pb_utils.Tensor("OUT", request.inputs()[0].as_numpy())
                sender.send(pb_utils.InferenceResponse([out]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                try:
                    sender.send(pb_utils.InferenceResponse([out]))
                except pb_utils.TritonModelException as exc:
                    self.second = str(exc)
            return None
    """
    write_model(tmp_path, "sender", source)
    instance = load(tmp_path, "sender", IO_CONFIG)
    assert list(outputs(instance.execute([bytes_request(b"s")])[0])["OUT"].data) == [b"s"]
    assert instance._model.second == (
        "Unable to send response. Non-decoupled model cannot send more than one response."
    )


def test_instances_have_their_own_module_and_sibling_modules(tmp_path: Path) -> None:
    counter = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    from helper import LABEL
    from .relative import SUFFIX

    CALLS = []

    class TritonPythonModel:
        def execute(self, requests):
            CALLS.append(1)
            text = f"{LABEL}{SUFFIX}{len(CALLS)}".encode()
            out = np.array([text], dtype=object)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
    """
    write_model(tmp_path, "a", counter, helper="LABEL = 'a'", relative="SUFFIX = '-'")
    write_model(tmp_path, "b", counter, helper="LABEL = 'b'", relative="SUFFIX = '+'")
    a0 = load(tmp_path, "a", IO_CONFIG, instance_name="a_0_0")
    a1 = load(tmp_path, "a", IO_CONFIG, instance_name="a_0_1")
    b0 = load(tmp_path, "b", IO_CONFIG)

    def run(instance: PythonModelInstance) -> bytes:
        value: bytes = outputs(instance.execute([bytes_request(b"")])[0])["OUT"].data[0]
        return value

    assert [run(a0), run(a0), run(a1), run(b0)] == [b"a-1", b"a-2", b"a-1", b"b+1"]
    for instance in (a0, a1, b0):
        instance.unload()


def test_model_folders_leave_sys_path_when_their_last_instance_unloads(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    from helper import LABEL

    class TritonPythonModel:
        def execute(self, requests):
            out = np.array([LABEL.encode()], dtype=object)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
    """
    before = list(sys.path)
    for reload in range(3):  # each reload in a folder of its own, as a fetched or new version is
        root = tmp_path / f"copy{reload}"
        version_dir = write_model(root, "m", source, helper=f"LABEL = 'v{reload}'")
        first = load(root, "m", IO_CONFIG, instance_name="m_0_0")
        second = load(root, "m", IO_CONFIG, instance_name="m_0_1")
        assert str(version_dir) in sys.path
        first.unload()
        assert str(version_dir) in sys.path, "the second instance still uses the folder"
        assert outputs(second.execute([bytes_request(b"")])[0])["OUT"].data[0] == f"v{reload}".encode()
        second.unload()
        assert str(version_dir) not in sys.path and str(root / "m") not in sys.path
    assert sys.path == before


def test_finalize_errors_are_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = """
    class TritonPythonModel:
        def execute(self, requests):
            return []
        def finalize(self):
            raise RuntimeError("cleanup failed")
    """
    write_model(tmp_path, "fin", source)
    instance = load(tmp_path, "fin", IO_CONFIG)
    with caplog.at_level(logging.ERROR, logger="naiad.backends.python"):
        instance.unload()
    assert "cleanup failed" in caplog.text


AUTO_COMPLETE = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
        config.set_max_batch_size(4)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        doubled = [r.inputs()[0].as_numpy() * 2 for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value)]) for value in doubled]
"""


def test_auto_complete_config_fills_the_config_and_the_result_loads(tmp_path: Path) -> None:
    write_model(tmp_path, "auto", AUTO_COMPLETE)
    raw: dict[str, Any] = {"backend": "python"}
    completed = PythonBackend().auto_complete(raw, tmp_path / "auto", tmp_path / "auto" / "1", 4)
    assert raw == {"backend": "python"}  # the caller's dict is left alone
    assert completed["max_batch_size"] == 4 and completed["dynamic_batching"] == {}
    assert completed["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}]
    config = build(completed, "auto")
    assert config.max_batch_size == 4 and config.dynamic_batching is not None
    instance = load(tmp_path, "auto", completed)
    array = np.ones((1, 4), dtype=np.float32)
    result = instance.execute([InferenceRequest(inputs=(Tensor("INPUT0", "FP32", (1, 4), array),))])[0]
    np.testing.assert_array_equal(outputs(result)["OUTPUT0"].data, array * 2)


def test_auto_complete_conflicts_fail_with_tritons_message(tmp_path: Path) -> None:
    write_model(tmp_path, "auto", AUTO_COMPLETE)
    raw = {"backend": "python", "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}]}
    with pytest.raises(ServerError) as caught:
        PythonBackend().auto_complete(raw, tmp_path / "auto", tmp_path / "auto" / "1", 4)
    assert caught.value.message == (
        "auto-complete failed for model 'auto': ValueError: unable to load model 'auto', configuration expects "
        "datatype TYPE_INT32 for input 'INPUT0', model provides TYPE_FP32"
    )


def test_auto_complete_without_the_hook_returns_the_config_unchanged(tmp_path: Path) -> None:
    write_model(tmp_path, "add_sub", ADD_SUB)
    raw = dict(ADD_SUB_CONFIG)
    assert PythonBackend().auto_complete(raw, tmp_path / "add_sub", tmp_path / "add_sub" / "1", 4) is raw


BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            target = request.inputs()[0].as_numpy()[0].decode()
            call = pb_utils.InferenceRequest(
                model_name=target,
                requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", np.ones((1, 4), dtype="float32")),
                        pb_utils.Tensor("INPUT1", np.full((1, 4), 3, dtype="float32"))],
                model_version=1,
            )
            response = call.exec()
            if response.has_error():
                error = response.error()
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message(), error.code())))
                continue
            out = pb_utils.get_output_tensor_by_name(response, "OUTPUT0")
            assert pb_utils.get_output_tensor_by_name(response, "OUTPUT1") is None
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out.as_numpy().astype(object))]))
        return responses
"""


def test_bls_calls_another_loaded_model(tmp_path: Path) -> None:
    caller = LocalCaller()
    write_model(tmp_path, "add_sub", ADD_SUB)
    write_model(tmp_path, "bls", BLS)
    load(tmp_path, "add_sub", ADD_SUB_CONFIG, caller)
    bls = load(tmp_path, "bls", IO_CONFIG, caller)
    good, missing = bls.execute([bytes_request(b"add_sub"), bytes_request(b"nope")])
    assert list(outputs(good)["OUT"].data.reshape(-1)) == [b"4.0"] * 4
    assert isinstance(missing, ServerError) and missing.code is ErrorCode.NOT_FOUND
    assert missing.message == "Request for unknown model: 'nope' is not found"
    assert caller.calls == [("add_sub", "1"), ("nope", "1")]


def test_async_bls_and_decoupled_bls(tmp_path: Path) -> None:
    source = """
    import asyncio
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        async def execute(self, requests):
            inputs = [pb_utils.Tensor("INPUT0", np.ones((1, 4), np.float32)),
                      pb_utils.Tensor("INPUT1", np.ones((1, 4), np.float32))]
            call = pb_utils.InferenceRequest(model_name="add_sub", requested_output_names=[], inputs=inputs)
            try:
                call.exec(decoupled=True)
            except pb_utils.TritonModelException as exc:
                self.decoupled = str(exc)
            responses = await asyncio.gather(*(call.async_exec() for _ in requests))
            return [pb_utils.InferenceResponse(r.output_tensors()) for r in responses]
    """
    caller = LocalCaller()
    write_model(tmp_path, "add_sub", ADD_SUB)
    write_model(tmp_path, "abls", source)
    load(tmp_path, "add_sub", ADD_SUB_CONFIG, caller)
    raw = {"backend": "python", "max_batch_size": 0, "input": ADD_SUB_CONFIG["input"]}
    abls = load(tmp_path, "abls", {**raw, "output": ADD_SUB_CONFIG["output"]}, caller)
    first, second = abls.execute([fp32_request([0] * 4, [0] * 4), fp32_request([0] * 4, [0] * 4)])
    np.testing.assert_array_equal(outputs(first)["OUTPUT0"].data, [[2, 2, 2, 2]])
    np.testing.assert_array_equal(outputs(second)["OUTPUT1"].data, [[0, 0, 0, 0]])
    assert abls._model.decoupled == "decoupled BLS is not supported by naiad yet"
    assert caller.calls == [("add_sub", ""), ("add_sub", "")]


# --- pb_utils on its own ---------------------------------------------------------------------------------


def test_tensor_types_shapes_and_errors() -> None:
    tensor = pb_utils.Tensor("x", np.zeros((2, 3), dtype=np.int64))
    assert (tensor.name(), tensor.triton_dtype(), tensor.shape(), tensor.is_cpu()) == ("x", 9, [2, 3], True)
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    assert pb_utils.Tensor("s", strided).as_numpy().flags.c_contiguous
    assert pb_utils.Tensor("b", np.array([b"a"], dtype=object)).triton_dtype() == 13
    assert pb_utils.Tensor("l", [1.0, 2.0]).triton_dtype() == 12
    with pytest.raises(pb_utils.TritonModelException, match=re.escape("Tensor name cannot be an empty string.")):
        pb_utils.Tensor("", np.zeros(1))
    with pytest.raises(pb_utils.TritonModelException, match="tensor 'n' needs a numpy array, got NoneType"):
        pb_utils.Tensor("n", None)
    with pytest.raises(pb_utils.TritonModelException, match="complex128"):
        pb_utils.Tensor("c", np.zeros(2, dtype=np.complex128))
    bf16 = pb_utils.Tensor._wrap("h", np.zeros(2, dtype=np.uint16), 14)
    with pytest.raises(pb_utils.TritonModelException, match="BF16 and cannot be converted to NumPy"):
        bf16.as_numpy()
    assert bf16.triton_dtype() == 14 and bf16.shape() == [2]
    with pytest.raises(pb_utils.TritonModelException, match="get_model_dir"):
        pb_utils.get_model_dir()  # only while naiad runs a model's code


def test_dlpack_round_trips_share_or_copy_as_needed() -> None:
    source = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("d", source)
    assert tensor.__dlpack_device__() == (1, 0)
    back = pb_utils.Tensor.from_dlpack("e", tensor.to_dlpack())
    assert np.shares_memory(back.as_numpy(), source)
    from_object = pb_utils.Tensor.from_dlpack("f", tensor)
    np.testing.assert_array_equal(np.from_dlpack(from_object), source)
    readonly = np.frombuffer(source.tobytes(), dtype=np.float32)
    np.testing.assert_array_equal(pb_utils.Tensor.from_dlpack("r", pb_utils.Tensor("q", readonly)).as_numpy(), readonly)
    with pytest.raises(
        pb_utils.TritonModelException, match=re.escape("DLPack does not have support for string tensors.")
    ):
        pb_utils.Tensor("s", np.array([b"x"], dtype=object)).to_dlpack()
    with pytest.raises(pb_utils.TritonModelException, match="must be a DLPack capsule"):
        pb_utils.Tensor.from_dlpack("z", [1, 2])


def test_type_conversions_and_bytes_packing() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.object_) == pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.complex64) is None
    assert pb_utils.triton_to_numpy_type(1) is np.bool_ and pb_utils.triton_to_numpy_type(14) is None
    values = np.array([b"ab", b"", "é"], dtype=object)
    packed = pb_utils.serialize_byte_tensor(values)
    assert packed == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x02\x00\x00\x00" + "é".encode()
    assert pb_utils.serialize_byte_tensor(np.zeros(2, np.float32)) is None
    assert list(pb_utils.deserialize_bytes_tensor(packed)) == [b"ab", b"", "é".encode()]
    assert list(pb_utils.deserialize_bytes_tensor(np.frombuffer(packed, np.uint8))) == [b"ab", b"", "é".encode()]


def test_config_lookups() -> None:
    config = {"input": [{"name": "A", "data_type": "TYPE_FP32"}], "model_transaction_policy": {"decoupled": True}}
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A", "data_type": "TYPE_FP32"}
    assert pb_utils.get_input_config_by_name(config, "B") is None
    assert pb_utils.get_output_config_by_name(config, "A") is None
    assert pb_utils.using_decoupled_model_transaction_policy(config)
    assert not pb_utils.using_decoupled_model_transaction_policy({})


def test_model_config_checks_use_tritons_wording() -> None:
    config = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 8}))
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8, but in auto-complete-config"):
        config.set_max_batch_size(4)
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [2], "optional": True})
    with pytest.raises(
        ValueError, match=r"the model expects dims \[3\] but the model configuration specifies dims \[2\]"
    ):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [3]})
    with pytest.raises(ValueError, match=re.escape("contains property other than 'name', 'data_type' and 'dims'.")):
        config.add_output({"name": "B", "data_type": "TYPE_FP32", "dims": [1], "optional": True})
    with pytest.raises(ValueError, match=re.escape("is missing 'dims' property.")):
        config.add_output({"name": "B", "data_type": "TYPE_FP32"})
    config.set_model_transaction_policy({"decoupled": False})
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["input"] == [{"name": "A", "data_type": "TYPE_FP32", "dims": [2], "optional": True}]


def test_errors_requests_and_responses() -> None:
    error = pb_utils.TritonError("nope")
    assert (error.message(), error.code(), int(pb_utils.TritonError.CANCELLED)) == ("nope", 1, 7)
    request = pb_utils.InferenceRequest(
        model_name="m", inputs=[], requested_output_names=["A", "A"], parameters={"a": 1}, correlation_id="c"
    )
    assert request.requested_output_names() == {"A"} and request.parameters() == '{"a": 1}'
    assert request.correlation_id() == "c" and request.flags() == 0 and request.timeout() == 0
    with pytest.raises(TypeError, match="missing required argument 'model_name'"):
        pb_utils.InferenceRequest(inputs=[], requested_output_names=[])
    with pytest.raises(pb_utils.TritonModelException, match="Expect parameters values to have type bool/int/str"):
        pb_utils.InferenceResponse(parameters={"f": 1.5})  # type: ignore[dict-item]
    with pytest.raises(pb_utils.TritonModelException, match="needs iterative sequence batching"):
        request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
    response = pb_utils.InferenceResponse()
    assert response.output_tensors() == [] and not response.has_error() and response.parameters() == "{}"
    with pytest.raises(pb_utils.TritonModelException, match="decoupled BLS is not supported by naiad yet"):
        request.exec(decoupled=True)


def test_unsupported_apis_raise_clearly(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(pb_utils.TritonModelException, match="not supported by naiad yet"):
        pb_utils.MetricFamily("m", "d", pb_utils.MetricFamily.COUNTER)
    with caplog.at_level(logging.DEBUG, logger="naiad.model"):
        pb_utils.Logger.log_info("hello")
        pb_utils.Logger.log("careful", pb_utils.Logger.WARNING)
        pb_utils.Logger.log_verbose("detail")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "hello"),
        (logging.WARNING, "careful"),
        (logging.DEBUG, "detail"),
    ]
