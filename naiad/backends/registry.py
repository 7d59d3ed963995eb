"""Backend names → the classes that implement them, imported only when a model needs one."""

from __future__ import annotations

import importlib
from typing import cast

from naiad.backends.base import Backend
from naiad.domain.errors import invalid

_IMPLEMENTATIONS = {
    "python": "naiad.backends.python.backend:PythonBackend",
    "pytorch": "naiad.backends.torchscript:TorchScriptBackend",
    "onnxruntime": "naiad.backends.onnx_runtime:OnnxRuntimeBackend",
}

# Backends Triton has that naiad does not serve yet: refused with a clear message, never ignored.
_NOT_YET = ("tensorflow", "tensorrt", "openvino", "fil", "dali", "vllm")

_loaded: dict[str, Backend] = {}


def get_backend(name: str, model_name: str) -> Backend:
    """The backend called `name`, imported on first use."""
    backend = _loaded.get(name)
    if backend is not None:
        return backend
    target = _IMPLEMENTATIONS.get(name)
    if target is None:
        if not name:
            raise invalid(
                f"model '{model_name}' names no backend: set `backend: \"python\"` (or a platform) in its config.pbtxt"
            )
        if name in _NOT_YET:
            raise invalid(
                f"backend '{name}' of model '{model_name}' is not supported by naiad yet; "
                f"supported: {', '.join(sorted(_IMPLEMENTATIONS))}"
            )
        raise invalid(
            f"unknown backend '{name}' for model '{model_name}'; supported: {', '.join(sorted(_IMPLEMENTATIONS))}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        backend = cast(Backend, getattr(importlib.import_module(module_name), class_name)())
    except ImportError as exc:
        raise invalid(f"backend '{name}' for model '{model_name}' cannot be imported: {exc}") from None
    _loaded[name] = backend
    return backend


def supported_backends() -> list[str]:
    """The backend names naiad serves."""
    return sorted(_IMPLEMENTATIONS)
