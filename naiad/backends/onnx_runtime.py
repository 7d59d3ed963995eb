"""The ONNX Runtime backend (Triton's `onnxruntime_onnx` platform, `backend: "onnxruntime"`): one
`onnxruntime.InferenceSession` per instance, the config filled in from the model as Triton does, and the config
checked against the model at load with Triton's messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from naiad.backends.base import InstanceContext
from naiad.backends.batching import Batch
from naiad.backends.parameters import flag, integer
from naiad.domain.datatypes import to_config_type
from naiad.domain.errors import ServerError, internal, invalid, unavailable
from naiad.domain.model_config import ModelConfig, TensorSpec
from naiad.domain.tensors import InferenceRequest, InferenceResult

_LOG = logging.getLogger("naiad.backends.onnxruntime")
DEFAULT_FILENAME = "model.onnx"

# onnxruntime's element type names -> KServe datatypes (bfloat16 and complex have no Triton type here)
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _import_ort(model: str) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise invalid(
            f"model '{model}' needs ONNX Runtime, which is not installed: pip install 'naiad[onnx]'"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend:
    """Serves `model.onnx` files (or a `model.onnx/` folder holding `model.onnx` and its external data)."""

    def runs_in_processes(self, parameters: Mapping[str, str], model_name: str) -> bool:
        """False: the instances are threads of the server, since the framework releases the GIL while it runs."""
        return False

    def auto_complete(
        self, raw: dict[str, Any], model_dir: Path, version_dir: Path, default_max_batch_size: int
    ) -> dict[str, Any]:
        """Triton's auto-complete: inputs, outputs and `max_batch_size` from the model, unless the config already
        lists both inputs and outputs."""
        completed = dict(raw)
        completed.setdefault("platform", "onnxruntime_onnx")
        completed.setdefault("backend", "onnxruntime")
        if not completed.get("default_model_filename"):
            completed["default_model_filename"] = DEFAULT_FILENAME
        if completed.get("input") and completed.get("output"):
            return completed
        name = str(raw.get("name") or model_dir.name)
        path = _model_path(version_dir, str(raw.get("default_model_filename") or ""))
        if not path.is_file():
            return completed  # `load` reports the missing file
        ort = _import_ort(name)
        session = _open(ort, path, name, ort.SessionOptions(), ["CPUExecutionProvider"])
        model_inputs, model_outputs = session.get_inputs(), session.get_outputs()
        batchable = all(
            len(node.shape) >= 1 and not isinstance(node.shape[0], int) for node in (*model_inputs, *model_outputs)
        )
        max_batch = int(completed.get("max_batch_size") or 0)
        if batchable and max_batch == 0:
            max_batch = default_max_batch_size
            completed["max_batch_size"] = max_batch
            _LOG.warning(
                "autofilled max_batch_size to %d for model '%s' since batching is supported but no max_batch_size "
                "is specified in model configuration. Must specify max_batch_size to utilize autofill with a "
                "larger max batch size",
                max_batch,
                name,
            )
        elif not batchable and max_batch != 0:
            raise invalid(
                f"autofill failed for model '{name}': model does not support batching while non-zero "
                "max_batch_size is specified"
            )
        if max_batch > 1 and "dynamic_batching" not in completed and "sequence_batching" not in completed:
            completed["dynamic_batching"] = {}
        if not completed.get("input"):
            completed["input"] = [_describe(node, max_batch > 0, name) for node in model_inputs]
        if not completed.get("output"):
            completed["output"] = [_describe(node, max_batch > 0, name) for node in model_outputs]
        return completed

    def load(self, context: InstanceContext) -> OnnxRuntimeInstance:
        """Open a session on the instance's device and check the config against the model."""
        config = context.config
        ort = _import_ort(config.name)
        path = _model_path(context.version_dir, config.default_model_filename)
        if not path.is_file():
            raise unavailable(f"unable to find '{path}' for model instance '{context.instance_name}'")
        options, run_options = _session_options(ort, config)
        providers = _providers(ort, context)
        session = _open(ort, path, config.name, options, providers)
        _check_config(session, config)
        _LOG.info("model '%s' instance '%s' runs on %s", config.name, context.instance_name, session.get_providers()[0])
        return OnnxRuntimeInstance(session, config, run_options)


class OnnxRuntimeInstance:
    """One `InferenceSession`."""

    def __init__(self, session: Any, config: ModelConfig, run_options: Any) -> None:
        self._session = session
        self._name = config.name
        self._batched = config.max_batch_size > 0
        self._run_options = run_options
        self._output_names = [spec.name for spec in config.outputs]
        self._datatypes = {spec.name: spec.datatype for spec in config.outputs}

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | ServerError]:
        """Join the requests into one batch, run the session once, split the outputs back."""
        batch = Batch(requests, self._batched)
        try:
            feed = {name: _as_text(array) if array.dtype == object else array for name, array in batch.inputs.items()}
        except UnicodeDecodeError:
            failure = invalid(f"a BYTES input of model '{self._name}' is not UTF-8 text, which ONNX strings must be")
            return [failure] * len(requests)
        try:
            values = self._session.run(self._output_names, feed, self._run_options)
        except Exception as exc:  # onnxruntime raises its own exception classes
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return [internal(f"onnx runtime error in model '{self._name}': {text}")] * len(requests)
        # a scalar model output is served with dims [1], as auto-complete describes it
        outputs = {
            name: np.asarray(value).reshape(1) if np.ndim(value) == 0 else np.asarray(value)
            for name, value in zip(self._output_names, values, strict=True)
        }
        return batch.split(outputs, self._datatypes, self._name)

    def unload(self) -> None:
        """Drop the session."""
        self._session = None


def _as_text(array: np.ndarray) -> np.ndarray:
    """BYTES elements as the `str` onnxruntime's string tensors take (it would `str()` a bytes object)."""
    flat = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


def _model_path(version_dir: Path, filename: str) -> Path:
    path = version_dir / (filename or DEFAULT_FILENAME)
    return path / DEFAULT_FILENAME if path.is_dir() else path


def _open(ort: Any, path: Path, model: str, options: Any, providers: list[Any]) -> Any:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented...
        text = " ".join(str(exc).split())
        declared = re.search(r"[Oo]pset (\d+) is under development", text)
        supported = re.search(r"support for domain (\S+) is till opset (\d+)", text)
        if declared and supported:
            text = (
                f"'{path.name}' declares opset {declared.group(1)} for domain {supported.group(1)}, but the installed "
                f"onnxruntime {ort.__version__} supports up to opset {supported.group(2)}: the installed onnxruntime "
                "cannot run this opset; upgrade it, or export the model again with a lower opset_version"
            )
        raise invalid(f"failed to load model '{model}': onnx runtime error: {text}") from None


def _describe(node: Any, batched: bool, model: str) -> dict[str, Any]:
    """A config `input`/`output` entry for a model tensor."""
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        raise invalid(f"unsupported ONNX type '{node.type}' of tensor '{node.name}' in model '{model}'")
    dims = _model_dims(node)
    if batched:
        dims = dims[1:]
    entry: dict[str, Any] = {"name": node.name, "data_type": to_config_type(datatype), "dims": dims or [1]}
    if not dims and batched:
        entry["reshape"] = {"shape": []}
    return entry


def _model_dims(node: Any) -> list[int]:
    """A model tensor's shape in config terms: symbolic or unknown dimensions are -1."""
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape]


def _check_config(session: Any, config: ModelConfig) -> None:
    """The config's inputs and outputs against the model's, with Triton's messages."""
    model = config.name
    inputs = {node.name: node for node in session.get_inputs()}
    outputs = {node.name: node for node in session.get_outputs()}
    required = [spec for spec in config.inputs if not spec.optional]
    if len(required) != len(inputs):
        raise invalid(
            f"unable to load model '{model}', configuration expects {len(required)} inputs, model provides "
            f"{len(inputs)}"
        )
    for role, specs, nodes in (("input", config.inputs, inputs), ("output", config.outputs, outputs)):
        for spec in specs:
            node = nodes.get(spec.name)
            if node is None:
                raise invalid(
                    f"unexpected inference {role} '{spec.name}', allowed {role}s are: {', '.join(sorted(nodes))}"
                )
            actual = _ORT_TYPES.get(node.type)
            if actual != spec.datatype:
                provided = to_config_type(actual) if actual else "TYPE_INVALID"
                raise invalid(
                    f"unable to load model '{model}', configuration expects datatype "
                    f"{to_config_type(spec.datatype)} for {role} '{spec.name}', model provides {provided}"
                )
            _check_dims(spec, node, config, role)


def _check_dims(spec: TensorSpec, node: Any, config: ModelConfig, role: str) -> None:
    model_dims = _model_dims(node)
    dims = list(spec.reshape if spec.reshape is not None else spec.dims)
    where = f"model '{config.name}', tensor '{spec.name}'"
    if not model_dims and config.max_batch_size == 0:  # a scalar: Triton takes any dims of ones
        if any(dim != 1 for dim in dims):
            raise invalid(
                f"unable to load model '{config.name}', scalar tensor '{spec.name}', should only provide 1 in the "
                f"model configuration when the model doesn't support batching. Model configuration provided: {dims}."
            )
        return
    if config.max_batch_size > 0:
        if not model_dims or model_dims[0] != -1:
            raise invalid(
                f"{where}: for the model to support batching the shape should have at least 1 dimension and the "
                f"first dimension must be -1; but shape expected by the model is {model_dims}"
            )
        full = [-1, *dims]
        detail = (
            f"{len(full)} dimensions (an initial batch dimension because max_batch_size > 0 followed by the "
            f"explicit tensor shape, making complete shape {full})"
        )
    else:
        full = dims
        detail = f"{len(full)} dimensions (shape {full})"
    if len(full) != len(model_dims):
        raise invalid(
            f"{where}: the model expects {len(model_dims)} dimensions (shape {model_dims}) but the model "
            f"configuration specifies {detail}"
        )
    for want, have in zip(full, model_dims, strict=True):
        # an input of any size fits a dynamic model dimension; outputs must agree exactly, as in Triton
        if want != have and not (role == "input" and have == -1):
            raise invalid(f"{where}: the model expects shape {model_dims} but the model configuration specifies {full}")


def _session_options(ort: Any, config: ModelConfig) -> tuple[Any, Any]:
    """Session and run options from `optimization.graph.level` and the model `parameters`."""
    options = ort.SessionOptions()
    level = config.raw.get("optimization", {}).get("graph", {}).get("level")
    options.graph_optimization_level = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }.get(int(level) if level is not None else 0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    parameters = config.parameters
    options.intra_op_num_threads = integer(parameters, "intra_op_thread_count", config.name)
    options.inter_op_num_threads = integer(parameters, "inter_op_thread_count", config.name)
    mode = integer(parameters, "execution_mode", config.name)
    if mode not in (0, 1):
        raise invalid(
            f"Invalid configuration value provided for model '{config.name}'. Expected values for execution_mode "
            f"are 0 or 1 but got {mode}."
        )
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = flag(parameters, "enable_mem_arena", True, config.name)
    options.enable_mem_pattern = flag(parameters, "enable_mem_pattern", True, config.name)
    run_options = ort.RunOptions()
    shrinkage = parameters.get("memory.enable_memory_arena_shrinkage")
    if shrinkage:  # onnxruntime's own syntax, passed through as Triton does: "cpu:0", "cpu:0;gpu:0"
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", shrinkage)
    return options, run_options


def _providers(ort: Any, context: InstanceContext) -> list[Any]:
    accelerators = context.config.raw.get("optimization", {}).get("execution_accelerators", {})
    for entry in accelerators.get("cpu_execution_accelerator", []):
        raise invalid(
            f"cpu_execution_accelerator '{entry.get('name', '')}' of model '{context.config.name}' is not supported "
            "by naiad; remove it to run on onnxruntime's CPU execution provider"
        )
    available = ort.get_available_providers()
    kind = context.kind
    gpu_accelerators = [entry.get("name", "") for entry in accelerators.get("gpu_execution_accelerator", [])]
    if kind in ("GPU", "AUTO") and any(name != "cuda" for name in gpu_accelerators):
        raise invalid(
            f"gpu_execution_accelerator {gpu_accelerators} of model '{context.config.name}': naiad runs GPU "
            "instances on onnxruntime's CUDA execution provider only; remove the others (such as tensorrt)"
        )
    if kind in ("GPU", "AUTO") and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": context.device_id}), "CPUExecutionProvider"]
    if kind == "GPU":
        raise invalid(
            f"instance group of model '{context.config.name}' has kind KIND_GPU, but the installed onnxruntime "
            f"{ort.__version__} has no CUDA execution provider (it has {', '.join(available)}): install "
            "onnxruntime-gpu, or use KIND_CPU"
        )
    return ["CPUExecutionProvider"]
