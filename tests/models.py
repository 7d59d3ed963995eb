"""Triton Python-backend models written into a test's repository, as a Triton user would write them."""

from __future__ import annotations

import textwrap
from pathlib import Path

ADD_SUB = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "OUTPUT0")["data_type"])
        self.instance = args["model_instance_name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype)),
            ]))
        return responses
"""

IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [echo(r) for r in requests]


def echo(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())])
"""

FAILING = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("boom in execute")
"""

ERROR_RESPONSE = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            kind = json.loads(request.parameters()).get("kind", "internal")
            if kind == "ok":
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([1], np.int32))]))
            elif kind == "invalid":
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("the model says the input is bad", pb_utils.TritonError.INVALID_ARG)))
            else:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("the model failed")))
        return responses
"""

PARAMS_ECHO = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            seen = {"parameters": json.loads(request.parameters()), "id": request.request_id(),
                    "outputs": sorted(request.requested_output_names())}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_)),
                pb_utils.Tensor("OUTPUT1", np.array([len(requests)], dtype=np.int32)),
            ]))
        return out
"""

SLOW = """
import json
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.delay = float(json.loads(args["model_config"])["parameters"]["delay_s"]["string_value"])

    def execute(self, requests):
        time.sleep(self.delay)
        return [echo(r) for r in requests]


def echo(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())])
"""

BLS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            inner = pb_utils.InferenceRequest(
                model_name="add_sub",
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                        pb_utils.get_input_tensor_by_name(request, "INPUT1")],
            ).exec()
            if inner.has_error():
                raise pb_utils.TritonModelException(inner.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SUM", pb_utils.get_output_tensor_by_name(inner, "OUTPUT0").as_numpy()),
                pb_utils.Tensor("DIFF", pb_utils.get_output_tensor_by_name(inner, "OUTPUT1").as_numpy()),
            ]))
        return responses
"""

RESHAPED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            assert x.shape[1:] == (2, 2), x.shape
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        return out
"""

VERSIONED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([self.version], np.int32))])
                for _ in requests]
"""

OPTIONAL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1")
            total = a + (b.as_numpy() if b is not None else 100)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total.astype(np.int32))]))
        return out
"""

FINALIZE_MARKER = """
import os
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marker = os.environ["NAIAD_TEST_FINALIZE_MARKER"]

    def execute(self, requests):
        time.sleep(1.0)
        return [echo(r) for r in requests]

    def finalize(self):
        with open(self.marker, "w") as f:
            f.write("finalized")


def echo(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0")
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", tensor.as_numpy())])
"""


def write_model(repository: Path, name: str, config: str, source: str, versions: tuple[int, ...] = (1,)) -> Path:
    """A model folder with config.pbtxt and the same model.py in each version folder."""
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
        (folder / str(version) / "model.py").write_text(textwrap.dedent(source))
    return folder


def add_sub_config(name: str = "add_sub", batching: str = "dynamic_batching { }", extra: str = "") -> str:
    """The add/sub config of Triton's examples: two FP32 [16] inputs, sum and difference out."""
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 8
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
                {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
                 {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        {batching}
        {extra}
    """


def slow_batched_config(name: str, delay: float, extra: str = "") -> str:
    """A config for `SLOW`: batches of one INT32 [1], each execution taking `delay` seconds."""
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 1
        input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        parameters: {{ key: "delay_s" value: {{ string_value: "{delay}" }} }}
        {extra}
    """


def write_queue_limited(repository: Path) -> None:
    """`queue_limited`: the `SLOW` model (1 s per execution) whose queue holds one request, so a third concurrent
    request is refused."""
    extra = "dynamic_batching { default_queue_policy { max_queue_size: 1 } }"
    write_model(repository, "queue_limited", slow_batched_config("queue_limited", 1.0, extra), SLOW)


def identity_config(name: str, config_type: str, batch: int = 0, extra: str = "") -> str:
    """One input and one output of the same type and a variable-size dimension."""
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {batch}
        input [ {{ name: "INPUT0" data_type: {config_type} dims: [ -1 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: {config_type} dims: [ -1 ] }} ]
        {extra}
    """


DATATYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def build_inference_repository(root: Path) -> Path:
    """The models the inference suites of both front ends run against."""
    repo = root / "models"
    write_model(repo, "add_sub", add_sub_config(), ADD_SUB)
    write_model(repo, "add_sub_plain", add_sub_config("add_sub_plain", batching=""), ADD_SUB)
    for datatype, config_type in DATATYPES.items():
        name = f"identity_{datatype.lower()}"
        write_model(repo, name, identity_config(name, config_type), IDENTITY)
    write_model(repo, "failing", identity_config("failing", "TYPE_INT32"), FAILING)
    write_model(
        repo,
        "error_response",
        """
        backend: "python"
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """,
        ERROR_RESPONSE,
    )
    write_model(
        repo,
        "params_echo",
        """
        backend: "python"
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] },
                 { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """,
        PARAMS_ECHO,
    )
    write_model(
        repo,
        "bls",
        """
        backend: "python"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "SUM" data_type: TYPE_FP32 dims: [ 16 ] },
                 { name: "DIFF" data_type: TYPE_FP32 dims: [ 16 ] } ]
        """,
        BLS,
    )
    write_model(
        repo,
        "reshaped",
        """
        backend: "python"
        max_batch_size: 2
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        """,
        RESHAPED,
    )
    folder = write_model(
        repo,
        "classifier",
        """
        backend: "python"
        max_batch_size: 2
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
        """,
        IDENTITY,
    )
    (folder / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    write_model(
        repo,
        "versioned",
        """
        backend: "python"
        version_policy: { latest: { num_versions: 2 } }
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
        """,
        VERSIONED,
        versions=(1, 2, 3),
    )
    write_model(
        repo,
        "optional_in",
        """
        backend: "python"
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 2 ] },
                { name: "INPUT1" data_type: TYPE_INT32 dims: [ 2 ] optional: true } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2 ] } ]
        """,
        OPTIONAL,
    )
    return repo
