"""`naiad export`: a PyTorch module and its weights become a model repository entry: a traced (or scripted)
`model.pt` or an ONNX `model.onnx`, and a config.pbtxt whose names, datatypes and dims are read from the model
run on example inputs; the saved file is loaded again and checked against the module before the command ends."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from naiad.config.settings import ServerSettings
from naiad.domain.datatypes import DATATYPES, datatype_of, numpy_dtype, to_config_type
from naiad.tools.check import inspect, render


class ExportError(Exception):
    """Why a model could not be exported, in words that say what to change."""


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One `--input NAME:DATATYPE:DIMS`; DIMS exclude the batch dimension when the model batches; -1 is any size."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What `naiad export` was asked to do."""

    module: str
    weights: Path | None
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    repository: Path
    name: str
    version: int
    format: str  # "torchscript" or "onnx"
    script: bool
    max_batch_size: int
    dynamic_batching: bool
    opset: int | None
    filename: str = ""  # another file name than model.pt / model.onnx, written to default_model_filename


def parse_input(text: str) -> InputSpec:
    """`NAME:DATATYPE:DIMS`, e.g. `input__0:FP32:4` or `image__0:UINT8:3,-1,-1`."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"expected NAME:DATATYPE:DIMS (like input__0:FP32:3,224,224), got '{text}'")
    name, datatype, dims_text = parts
    datatype = datatype.upper()
    if datatype not in DATATYPES or datatype in ("BYTES", "BF16"):
        raise ValueError(f"datatype of input '{name}' must be a numeric KServe name such as FP32, got '{datatype}'")
    try:
        dims = tuple(int(d) for d in dims_text.split(",")) if dims_text else ()
    except ValueError:
        raise ValueError(f"dims of input '{name}' must be integers separated by commas, got '{dims_text}'") from None
    if any(d == 0 or d < -1 for d in dims):
        raise ValueError(f"dims of input '{name}' must be positive or -1, got '{dims_text}'")
    return InputSpec(name, datatype, dims)


def export(request: ExportRequest, say: Callable[[str], None]) -> Path:
    """Write the repository entry; returns the model folder."""
    torch = _import_torch()
    module = _build_module(torch, request)
    first, second = (_examples(torch, request, size, batch) for size, batch in ((7, 2), (5, 3)))
    try:
        with torch.no_grad():
            outputs_first = _as_tuple(torch, module(*first))
            outputs_second = _as_tuple(torch, module(*second))
    except ExportError:
        raise
    except Exception as exc:  # the user's forward() on the example inputs
        shapes = ", ".join(f"{spec.name} {list(t.shape)}" for spec, t in zip(request.inputs, first, strict=True))
        raise ExportError(
            f"the module fails on example inputs ({shapes}): {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None
    names = request.outputs or tuple(f"output__{i}" for i in range(len(outputs_first)))
    if len(names) != len(outputs_first):
        raise ExportError(f"the module returns {len(outputs_first)} outputs but {len(names)} --output names were given")
    folder = request.repository / request.name
    version_dir = folder / str(request.version)
    version_dir.mkdir(parents=True, exist_ok=True)
    if request.format == "onnx":
        path = version_dir / (request.filename or "model.onnx")
        _save_onnx(torch, module, first, request, names, path)
        _verify_onnx(path, second, outputs_second, request)
        platform = "onnxruntime_onnx"
    else:
        path = version_dir / (request.filename or "model.pt")
        _save_torchscript(torch, module, first, request, path)
        _verify_torchscript(torch, path, second, outputs_second)
        platform = "pytorch_libtorch"
    config = _config(request, platform, names, outputs_first, outputs_second)
    (folder / "config.pbtxt").write_text(config)
    say(f"wrote {path} (checked against the module on inputs other than the tracing example)")
    say(f"wrote {folder / 'config.pbtxt'}")
    return folder


def check_entry(folder: Path, say: Callable[[str], None]) -> bool:
    """Load the new entry alone, as `naiad check` would; True when it loads."""
    with tempfile.TemporaryDirectory(prefix="naiad-export-") as scratch:
        (Path(scratch) / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        report = asyncio.run(inspect(ServerSettings(model_repositories=(scratch,), exit_on_error=False)))
    render(report, say)
    return report.passed


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ExportError("naiad export needs PyTorch: pip install 'naiad[torch]'") from None
    return torch


def _build_module(torch: Any, request: ExportRequest) -> Any:
    """The module named by `path/to/file.py:Name` or `package.module:Name` (a class or a factory), with weights."""
    target, _, attribute = request.module.rpartition(":")
    if not target or not attribute:
        raise ExportError(f"--module must be FILE.py:NAME or PACKAGE.MODULE:NAME, got '{request.module}'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ExportError(f"--module file '{path}' does not exist")
        spec = importlib.util.spec_from_file_location(f"_naiad_export_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ExportError(f"cannot import '{path}'")
        source = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent.resolve()))
        spec.loader.exec_module(source)
    else:
        source = importlib.import_module(target)
    factory = getattr(source, attribute, None)
    if factory is None:
        raise ExportError(f"'{target}' has no '{attribute}'")
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"'{request.module}' made a {type(module).__name__}, not a torch.nn.Module")
    if request.weights is not None:
        _load_weights(torch, module, request.weights)
    return module.eval()


def _load_weights(torch: Any, module: Any, weights: Path) -> None:
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(
            f"cannot read '{weights}' as a state_dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Save the weights with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict):
        raise ExportError(f"'{weights}' holds a {type(state).__name__}, not a state_dict")
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ExportError(
            f"the weights in '{weights}' do not fit the module: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # same names, other shapes
        detail = " ".join(str(exc).split())[:400]
        raise ExportError(f"the weights in '{weights}' do not fit the module: {detail}") from None


def _examples(torch: Any, request: ExportRequest, size: int, batch: int) -> tuple[Any, ...]:
    """Example inputs: `batch` rows when the model batches, and `size` for every -1 dim (two sizes reveal which output
    dims follow the inputs, and that the saved model takes other batch sizes than the one it was traced with)."""
    tensors = []
    generator = np.random.default_rng(size)
    for spec in request.inputs:
        shape = [size if d == -1 else d for d in spec.dims]
        if request.max_batch_size > 0:
            shape = [batch, *shape]
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            array = generator.normal(size=shape).astype(dtype)
        elif dtype.kind == "b":
            array = generator.integers(0, 2, size=shape).astype(dtype)
        else:
            array = generator.integers(0, 100, size=shape).astype(dtype)
        tensors.append(torch.from_numpy(array))
    return tuple(tensors)


def _as_tuple(torch: Any, result: Any) -> tuple[Any, ...]:
    values = (result,) if isinstance(result, torch.Tensor) else result
    if not isinstance(values, tuple) or not all(isinstance(v, torch.Tensor) for v in values):
        raise ExportError(
            f"forward() must return a Tensor or a tuple of Tensors to be served, got {type(result).__name__}"
        )
    return values


def _save_torchscript(torch: Any, module: Any, example: tuple[Any, ...], request: ExportRequest, path: Path) -> None:
    try:
        graph = torch.jit.script(module) if request.script else torch.jit.trace(module, example)
    except Exception as exc:
        how = "torch.jit.script" if request.script else "torch.jit.trace"
        raise ExportError(f"{how} failed: {str(exc).splitlines()[0]}") from None
    torch.jit.save(graph, str(path))


def _verify_torchscript(torch: Any, path: Path, example: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    """Load the saved file and run it on other example inputs than the ones it was traced with."""
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got = _as_tuple(torch, loaded(*example))
    _compare(got, expected, path)


def _save_onnx(
    torch: Any, module: Any, example: tuple[Any, ...], request: ExportRequest, names: Sequence[str], path: Path
) -> None:
    input_names = [spec.name for spec in request.inputs]
    axes: dict[str, dict[int, str]] = {}
    offset = 1 if request.max_batch_size > 0 else 0
    for spec in request.inputs:
        dynamic = {i + offset: f"{spec.name}_{i}" for i, d in enumerate(spec.dims) if d == -1}
        if offset:
            dynamic[0] = "batch"
        if dynamic:
            axes[spec.name] = dynamic
    for name in names:
        axes[name] = {0: "batch"} if offset else {}
    options: dict[str, Any] = {"opset_version": request.opset} if request.opset else {}
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=input_names,
            output_names=list(names),
            dynamic_axes=axes,
            dynamo=False,
            **options,
        )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None


def _verify_onnx(path: Path, example: tuple[Any, ...], expected: tuple[Any, ...], request: ExportRequest) -> None:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("checking the ONNX file needs onnxruntime: pip install 'naiad[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {spec.name: tensor.numpy() for spec, tensor in zip(request.inputs, example, strict=True)}
    got = session.run(None, feed)
    _compare(tuple(got), expected, path)


def _compare(got: Sequence[Any], expected: Sequence[Any], path: Path) -> None:
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        a = np.asarray(mine.detach().numpy() if hasattr(mine, "detach") else mine)
        b = theirs.detach().numpy()
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise ExportError(
                f"'{path}' does not reproduce the module: output {index} differs (shapes {list(a.shape)} and "
                f"{list(b.shape)}). Tracing follows one path through forward(); if forward() branches on the input, "
                "export with --script"
            )


def _config(
    request: ExportRequest,
    platform: str,
    names: Sequence[str],
    first: tuple[Any, ...],
    second: tuple[Any, ...],
) -> str:
    batched = request.max_batch_size > 0
    lines = [f'name: "{request.name}"', f'platform: "{platform}"']
    if request.filename:
        lines.append(f'default_model_filename: "{request.filename}"')
    lines.append(f"max_batch_size: {request.max_batch_size}")
    inputs = [
        f'  {{ name: "{spec.name}" data_type: {to_config_type(spec.datatype)} dims: [ {_dims(spec.dims)} ] }}'
        for spec in request.inputs
    ]
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    outputs = []
    for name, a, b in zip(names, first, second, strict=True):
        shape = [x if x == y else -1 for x, y in zip(a.shape, b.shape, strict=True)]
        dims = shape[1:] if batched else shape
        datatype = to_config_type(_datatype_of(a))
        outputs.append(f'  {{ name: "{name}" data_type: {datatype} dims: [ {_dims(tuple(dims) or (1,))} ] }}')
    lines.append("output [\n" + ",\n".join(outputs) + "\n]")
    if batched and request.dynamic_batching:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _datatype_of(tensor: Any) -> str:
    return datatype_of(tensor.detach().numpy().dtype)


def _dims(dims: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in dims)
