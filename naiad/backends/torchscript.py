"""The TorchScript backend (Triton's `pytorch_libtorch` platform, `backend: "pytorch"`): `torch.jit.load`, Triton's
rules for mapping config tensors to `forward()` arguments and results, its model parameters, and load errors that
say what is wrong with the file."""

from __future__ import annotations

import logging
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
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

_LOG = logging.getLogger("naiad.backends.torchscript")
DEFAULT_FILENAME = "model.pt"

# KServe datatype -> torch dtype name; Triton's PyTorch backend has no UINT16/32/64 or BF16. BYTES travels as a
# one-dimensional List[str], as in Triton.
_TORCH_TYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}

# torch's thread pools are per process: as in Triton, the first model that sets a count sets it for all.
_threads_lock = threading.Lock()
_threads_set: dict[str, int] = {}


def _import_torch(model: str) -> Any:
    try:
        import torch
    except ImportError:
        raise invalid(f"model '{model}' needs PyTorch, which is not installed: pip install 'naiad[torch]'") from None
    # Inputs arrive as read-only views of the request bytes; the model only reads them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    return torch


class TorchScriptBackend:
    """Serves `model.pt` files written by `torch.jit.save`."""

    def runs_in_processes(self, parameters: Mapping[str, str], model_name: str) -> bool:
        """False: the instances are threads of the server, since the framework releases the GIL while it runs."""
        return False

    def auto_complete(
        self, raw: dict[str, Any], model_dir: Path, version_dir: Path, default_max_batch_size: int
    ) -> dict[str, Any]:
        """What Triton fills in for PyTorch models: the platform and the default file name; the backend reads
        nothing from the model, so inputs and outputs must be in config.pbtxt."""
        completed = dict(raw)
        completed.setdefault("platform", "pytorch_libtorch")
        completed.setdefault("backend", "pytorch")
        if not completed.get("default_model_filename"):
            completed["default_model_filename"] = DEFAULT_FILENAME
        return completed

    def load(self, context: InstanceContext) -> TorchScriptInstance:
        """Load the TorchScript file on the instance's device and check the config against `forward()`."""
        config = context.config
        torch = _import_torch(config.name)
        path = context.version_dir / (config.default_model_filename or DEFAULT_FILENAME)
        if not path.is_file():
            raise unavailable(_missing_file(path, config.name))
        parameters = _Parameters(config)
        parameters.apply_threads(torch)
        device = _device(torch, context)
        module = _load_module(torch, path, device, config.name)
        return TorchScriptInstance(torch, module, device, config, parameters)


class TorchScriptInstance:
    """One loaded TorchScript module on one device."""

    def __init__(self, torch: Any, module: Any, device: Any, config: ModelConfig, parameters: _Parameters) -> None:
        self._torch = torch
        self._module = module
        self._device = device
        self._config = config
        self._name = config.name
        self._batched = config.max_batch_size > 0
        self._parameters = parameters
        self._grad_mode: Callable[[], Any] = torch.inference_mode if parameters.inference_mode else torch.no_grad
        self._call = _input_mapping(module, config)
        self._outputs = _output_indices(config)
        self._datatypes = {spec.name: spec.datatype for spec in config.outputs}
        tensors = [spec for spec in config.outputs if spec.datatype != "BYTES"]
        self._expected = {spec.name: getattr(torch, _TORCH_TYPES[spec.datatype]) for spec in tensors}

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | ServerError]:
        """Join the requests into one batch, run `forward()` once, split the outputs back."""
        batch = Batch(requests, self._batched)
        torch = self._torch
        try:
            tensors = {name: self._argument(array) for name, array in batch.inputs.items()}
            with self._grad_mode(), torch.jit.optimized_execution(self._parameters.optimized):
                result = self._call(tensors)
            outputs = self._collect(result)
        except ServerError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # torch raises RuntimeError and others from inside the model
            return [internal(f"PyTorch execute failure in model '{self._name}': {_first_line(exc)}")] * len(requests)
        finally:
            if self._parameters.cache_cleaning and self._device.type == "cuda":
                torch.cuda.empty_cache()
        return batch.split(outputs, self._datatypes, self._name)

    def _argument(self, array: np.ndarray) -> Any:
        """A tensor on the instance's device, or for BYTES the List[str] Triton passes."""
        if array.dtype == object:
            return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]
        return self._torch.from_numpy(array).to(self._device)

    def _collect(self, result: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            values: Sequence[Any] = (result,)
        elif isinstance(result, tuple):
            values = result
        elif isinstance(result, list) and all(isinstance(item, str) for item in result):
            values = (result,)  # a List[str] is output 0, as in Triton
        else:
            kind = "a list" if isinstance(result, list) else "a dictionary" if isinstance(result, dict) else "a scalar"
            raise internal(
                f"PyTorch execute failure in model '{self._name}': output must be of type Tensor or a Tuple of "
                f"Tensors, got {kind} ({type(result).__name__})"
            )
        outputs: dict[str, np.ndarray] = {}
        for name, index in self._outputs.items():
            if index >= len(values):
                raise invalid(
                    f"The output {name} in the model configuration of '{self._name}' refers to an output index "
                    f"which doesn't exist. This model has {len(values)} outputs"
                )
            value = values[index]
            if self._datatypes[name] == "BYTES":
                if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                    raise invalid(
                        f"output '{name}' of model '{self._name}' is BYTES, so forward() must return List[str]"
                    )
                outputs[name] = np.array([item.encode("utf-8") for item in value], dtype=object)
                continue
            if not isinstance(value, torch.Tensor):
                raise internal(f"output '{name}' of model '{self._name}' must be of type Tensor, got {type(value)}")
            if value.dim() == 0:
                raise invalid(f"output '{name}' of model '{self._name}' is a scalar which is not supported.")
            if value.dtype != self._expected[name]:
                raise invalid(
                    f"configuration expects datatype {to_config_type(self._datatypes[name])} for output '{name}' "
                    f"of model '{self._name}', model provides {_config_type_of(value.dtype)}"
                )
            outputs[name] = value.detach().cpu().contiguous().numpy()
        return outputs

    def unload(self) -> None:
        """Drop the module and, on a GPU, the memory torch kept cached for it."""
        self._module = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


class _Parameters:
    """The model `parameters` Triton's PyTorch backend reads."""

    def __init__(self, config: ModelConfig) -> None:
        values = config.parameters
        model = self._model = config.name
        self.optimized = not flag(values, "DISABLE_OPTIMIZED_EXECUTION", False, model)
        self.inference_mode = flag(values, "INFERENCE_MODE", True, model)
        self.cache_cleaning = flag(values, "ENABLE_CACHE_CLEANING", False, model)
        self.intra_op = max(integer(values, "INTRA_OP_THREAD_COUNT", model), 0)
        self.inter_op = max(integer(values, "INTER_OP_THREAD_COUNT", model), 0)

    def apply_threads(self, torch: Any) -> None:
        """Set torch's thread counts, once per process (the first model to ask wins, as in Triton)."""
        with _threads_lock:
            for key, count, setter in (
                ("INTRA_OP_THREAD_COUNT", self.intra_op, torch.set_num_threads),
                ("INTER_OP_THREAD_COUNT", self.inter_op, torch.set_num_interop_threads),
            ):
                if not count:
                    continue
                if key in _threads_set:
                    if _threads_set[key] != count:
                        _LOG.warning(
                            "%s=%d of model '%s' is ignored: torch's thread count is per process and was set to %d",
                            key,
                            count,
                            self._model,
                            _threads_set[key],
                        )
                    continue
                try:
                    setter(count)
                except RuntimeError as exc:  # set_num_interop_threads refuses once the pool has started
                    _LOG.warning("%s=%d of model '%s' is ignored: %s", key, count, self._model, _first_line(exc))
                _threads_set[key] = count


def _device(torch: Any, context: InstanceContext) -> Any:
    kind = context.kind
    if kind == "AUTO":
        kind = "GPU" if torch.cuda.is_available() else "CPU"
        if kind == "CPU":
            name, version = context.config.name, torch.__version__
            _LOG.info("model '%s': KIND_AUTO runs on the CPU: torch %s has no CUDA", name, version)
    if kind == "GPU":
        if not torch.cuda.is_available():
            raise invalid(
                f"instance group of model '{context.config.name}' has kind KIND_GPU but no GPU is available to torch "
                f"{torch.__version__}; use KIND_CPU or KIND_AUTO"
            )
        if context.device_id >= torch.cuda.device_count():
            raise invalid(
                f"instance group of model '{context.config.name}' asks for GPU {context.device_id}, but torch sees "
                f"{torch.cuda.device_count()} GPU(s)"
            )
        return torch.device("cuda", context.device_id)
    return torch.device("cpu")


def _load_module(torch: Any, path: Path, device: Any, model: str) -> Any:
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError and more for unreadable files
        raise invalid(f"failed to load model '{model}': {_why_unloadable(path, exc, torch.__version__)}") from None


def _why_unloadable(path: Path, exc: Exception, version: str) -> str:
    """What is wrong with a file torch.jit.load refused, in words that say how to fix it."""
    text = _first_line(exc)
    if "maximum supported version" in text:
        return (
            f"'{path.name}' was saved by a newer PyTorch than the installed {version}: upgrade torch in the "
            f"server's environment, or export the model again with torch {version.split('+')[0]} ({text})"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return (
            f"'{path.name}' is not a TorchScript file (not a zip archive: an old torch.save pickle, or another "
            f"format). Export the model with torch.jit.trace or torch.jit.script and torch.jit.save"
        )
    if not any("/code/" in name for name in names) and any(name.endswith("data.pkl") for name in names):
        return (
            f"'{path.name}' was written by torch.save (a state_dict or a pickled nn.Module), not by torch.jit.save: "
            "the server needs the model's TorchScript graph. Build the module, load the weights, then "
            "torch.jit.save(torch.jit.trace(module, example_input), 'model.pt'); `naiad export --module FILE.py:CLASS "
            "--weights model.pt --input ...` does this and writes config.pbtxt"
        )
    return text


def _missing_file(path: Path, model: str) -> str:
    folder = path.parent
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    found = f"; the folder holds: {', '.join(present)}" if present else "; the folder is empty"
    return (
        f"unable to find '{path}' for model '{model}'{found}. Name the file {path.name} or set "
        "default_model_filename in config.pbtxt"
    )


def _input_mapping(module: Any, config: ModelConfig) -> Callable[[dict[str, Any]], Any]:
    """How config inputs become `forward()` arguments: Triton's three conventions, or one Dict argument."""
    arguments = [a for a in module.forward.schema.arguments if type(a.type).__name__ != "ClassType"]
    names = [spec.name for spec in config.inputs]
    for spec in config.inputs:
        _check_type(spec, "input", config.name, config.max_batch_size > 0)
    for spec in config.outputs:
        _check_type(spec, "output", config.name, config.max_batch_size > 0)
    if len(arguments) == 1 and type(arguments[0].type).__name__ == "DictType":
        return lambda tensors: module(tensors)
    if len(arguments) != len(names):
        raise invalid(
            f"unable to load model '{config.name}', configuration expects {len(names)} inputs, model provides "
            f"{len(arguments)}"
        )
    argument_names = [argument.name for argument in arguments]
    if all(name in argument_names for name in names):
        order = sorted(names, key=argument_names.index)
    else:
        indices = _named_indices(names)
        order = names if indices is None else [name for _, name in sorted(zip(indices, names, strict=True))]
    return lambda tensors: module(*[tensors[name] for name in order])


def _output_indices(config: ModelConfig) -> dict[str, int]:
    names = [spec.name for spec in config.outputs]
    indices = _named_indices(names)
    if indices is None:
        return {name: index for index, name in enumerate(names)}
    return dict(zip(names, indices, strict=True))


def _named_indices(names: list[str]) -> list[int] | None:
    """The `<name>__<index>` indices, or None when not every name follows that convention."""
    indices: list[int] = []
    for name in names:
        _, separator, suffix = name.partition("__")
        if not separator or not suffix.isdigit():
            return None
        indices.append(int(suffix))
    return indices


def _check_type(spec: TensorSpec, role: str, model: str, batched: bool) -> None:
    if spec.datatype == "BYTES":
        if len(spec.dims) + batched > 1:
            raise invalid(
                f"Triton only supports 1 dimensional List of String as {role} for '{spec.name}' for model '{model}'"
            )
        return
    if spec.datatype not in _TORCH_TYPES:
        raise invalid(
            f"unsupported datatype {to_config_type(spec.datatype)} for {role} '{spec.name}' for model '{model}': "
            f"the PyTorch backend serves {', '.join(to_config_type(t) for t in _TORCH_TYPES)}"
        )


def _config_type_of(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    for datatype, torch_name in _TORCH_TYPES.items():
        if torch_name == name:
            return to_config_type(datatype)
    return "TYPE_INVALID"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
