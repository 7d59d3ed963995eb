"""The Python backend: each instance imports a Triton `model.py` on its own and runs its `execute`."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import itertools
import json
import logging
import os
import sys
import threading
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from naiad.backends.base import InstanceContext
from naiad.backends.parameters import flag
from naiad.backends.python import triton_python_backend_utils as pb
from naiad.backends.python.pb_tensor import _to_domain_tensor
from naiad.domain.errors import ErrorCode, ServerError, internal, invalid
from naiad.domain.model_config import TensorSpec
from naiad.domain.tensors import InferenceRequest, InferenceResult

_LOG = logging.getLogger("naiad.backends.python")
# The config parameter that keeps a model's instances in the server's process (naiad's own; Triton has no such choice).
INSTANCE_PROCESS = "NAIAD_INSTANCE_PROCESS"
_PACKAGE_PREFIX = "_naiad_model_"
_import_lock = threading.RLock()
# The version and model folders of the models imported, each with the number of imports (instances, and
# auto-complete while it runs) that use it: on sys.path while used, taken off when the last one is forgotten, so
# that reloads (each fetched version in a folder of its own) do not grow sys.path.
_folder_users: collections.Counter[str] = collections.Counter()
_package_folders: dict[str, tuple[str, ...]] = {}
_counter = itertools.count()


class PythonBackend:
    """Serves `backend: "python"` models: a `TritonPythonModel` class in `<model>/<version>/model.py`."""

    def auto_complete(
        self, raw: dict[str, Any], model_dir: Path, version_dir: Path, default_max_batch_size: int
    ) -> dict[str, Any]:
        """The config filled in by the model's `auto_complete_config` staticmethod, when it has one."""
        name = str(raw.get("name") or model_dir.name)
        path = version_dir / (str(raw.get("default_model_filename") or "") or "model.py")
        if not path.is_file():
            return raw  # `load` reports the missing file
        try:
            module, package = _import_model(path, version_dir, model_dir)
        except (Exception, SystemExit) as exc:
            raise _user_code_error(f"auto-complete failed for model '{name}'", exc) from None
        try:
            hook = getattr(getattr(module, "TritonPythonModel", None), "auto_complete_config", None)
            if hook is None:
                return raw
            config = pb.ModelConfig({**raw, "name": name})
            pb._set_model_dir(str(version_dir))
            try:
                with pb._lifecycle_code():
                    completed = hook(config)
            except (Exception, SystemExit) as exc:
                raise _user_code_error(f"auto-complete failed for model '{name}'", exc) from None
            if not isinstance(completed, pb.ModelConfig):
                raise invalid(
                    f"auto_complete_config function in model '{name}' must return a valid pb.ModelConfig object."
                )
            return completed.as_dict()
        finally:
            pb._set_model_dir(None)
            _forget(package)

    def runs_in_processes(self, parameters: Mapping[str, str], model_name: str) -> bool:
        """True, as in Triton (a stub process per instance), unless the config keeps the instances in the server's
        process with `NAIAD_INSTANCE_PROCESS: false` (one copy of the weights, the lowest latency, no isolation)."""
        isolated = flag(parameters, INSTANCE_PROCESS, True, model_name)
        if not isolated and parameters.get("EXECUTION_ENV_PATH"):
            raise invalid(
                f"model '{model_name}' sets EXECUTION_ENV_PATH, which needs its instances in processes of their own, "
                f"and {INSTANCE_PROCESS}: false, which keeps them in the server's: drop one of the two"
            )
        return isolated

    def load(self, context: InstanceContext) -> PythonModelInstance:
        """Import model.py for this instance alone, create `TritonPythonModel` and call its `initialize`."""
        config = context.config
        name = config.name
        path = context.version_dir / (config.default_model_filename or "model.py")
        if not path.is_file():
            raise invalid(f"failed to load model '{name}': Python model file not found in '{path}'")
        pb._set_model_caller(context.caller)
        folder = str(context.version_dir)
        pb._set_model_dir(folder)
        try:
            try:
                module, package = _import_model(path, context.version_dir, context.model_dir)
            except (Exception, SystemExit) as exc:
                raise _user_code_error(f"failed to load model '{name}'", exc) from None
            model_class = getattr(module, "TritonPythonModel", None)
            if not isinstance(model_class, type):
                _forget(package)
                raise invalid(f"failed to load model '{name}': {path} does not define class TritonPythonModel")
            if not callable(getattr(model_class, "execute", None)):
                _forget(package)
                raise invalid(
                    f"failed to load model '{name}': Python model {path} does not implement `execute` method."
                )
            instance = PythonModelInstance(name, context.instance_name, folder, package, config.outputs)
            try:
                instance._start(model_class, _initialize_args(context))
            except (Exception, SystemExit) as exc:
                instance._release()  # like Triton, no finalize after a failed initialize
                raise _user_code_error(f"failed to load model '{name}'", exc) from None
            return instance
        finally:
            pb._set_model_dir(None)


class PythonModelInstance:
    """One instance of a Python model: its own module, object and event loop; run from one thread."""

    __slots__ = ("_all_outputs", "_execute", "_folder", "_instance_name", "_loop", "_model", "_name", "_package")

    def __init__(self, name: str, instance_name: str, folder: str, package: str, outputs: Sequence[TensorSpec]) -> None:
        self._name = name
        self._instance_name = instance_name
        self._folder = folder
        self._package = package
        self._all_outputs = frozenset(output.name for output in outputs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model: Any = None
        self._execute: Any = None

    def _start(self, model_class: type[Any], args: dict[str, str]) -> None:
        self._model = model_class()
        self._execute = self._model.execute
        initialize = getattr(self._model, "initialize", None)
        if initialize is not None:
            with pb._lifecycle_code():
                self._await(initialize(args))

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | ServerError]:
        """Run the model's `execute` on the requests: one result, or error, per request."""
        state = pb._state
        outer = getattr(state, "model_dir", None)  # set when a BLS call runs this model on the caller's thread
        state.model_dir = self._folder
        incoming = pb.InferenceRequest._incoming
        name, outputs = self._name, self._all_outputs
        wrapped = [incoming(request, name, outputs) for request in requests]
        try:
            returned = self._execute(wrapped)
            if asyncio.iscoroutine(returned):
                returned = self._await(returned)
            return self._results(requests, wrapped, returned)
        except Exception as exc:
            return self._failed(len(requests), exc)
        finally:
            state.model_dir = outer

    def unload(self) -> None:
        """Call the model's `finalize` (its errors are logged), then drop the instance's module and loop."""
        pb._set_model_dir(self._folder)
        try:
            finalize = getattr(self._model, "finalize", None)
            if finalize is not None:
                with pb._lifecycle_code():
                    self._await(finalize())
        except (Exception, SystemExit):
            _LOG.exception("finalize of model instance '%s' failed", self._instance_name)
        finally:
            pb._set_model_dir(None)
            self._release()

    def _release(self) -> None:
        """Close the instance's event loop (cancelling what the model left running) and drop its module."""
        loop, self._loop = self._loop, None
        if loop is not None:
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                _LOG.exception("closing the event loop of model instance '%s' failed", self._instance_name)
            finally:
                loop.close()
        _forget(self._package)
        self._model = self._execute = None

    def _await(self, value: Any) -> Any:
        """`value`, or its result when it is a coroutine (run on the instance's own event loop)."""
        if not asyncio.iscoroutine(value):
            return value
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
        return loop.run_until_complete(value)

    def _results(
        self, requests: Sequence[InferenceRequest], wrapped: list[pb.InferenceRequest], returned: Any
    ) -> list[InferenceResult | ServerError]:
        count = len(requests)
        responses: Sequence[Any]
        if returned is None:
            responses = (None,) * count
        elif not isinstance(returned, list | tuple):
            raise _BatchError(f"Expected a list in the execute return, found type '{type(returned)}'.")
        elif len(returned) != count:
            raise _BatchError(
                "Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
                f"InferenceRequest(s) size is:{count}, and InferenceResponse(s) size is:{len(returned)}"
            )
        else:
            responses = returned
        results: list[InferenceResult | ServerError] = []
        response_type, result_of = pb.InferenceResponse, self._result
        for index, response in enumerate(responses):
            if wrapped[index]._sender is not None:
                response = self._sent(wrapped[index], response)
            if type(response) is response_type or isinstance(response, response_type):
                results.append(result_of(requests[index], response))
            elif isinstance(response, ServerError):
                results.append(response)
            elif response is None:
                results.append(
                    internal(
                        f"model '{self._name}' gave no response for request {index} of the batch: return an "
                        "InferenceResponse for it, or send one with request.get_response_sender()"
                    )
                )
            else:
                raise _BatchError(
                    "Expected an 'InferenceResponse' object in the execute function return list, found type "
                    f"'{type(response)}'."
                )
        return results

    @staticmethod
    def _sent(request: pb.InferenceRequest, returned: Any) -> Any:
        """The response sent through the request's response sender, if any, else the one returned."""
        sender = request._sender
        if sender is None or sender._response is None:
            return returned
        if returned is not None:
            return internal("Unable to send response. Non-decoupled model cannot send more than one response.")
        return sender._response

    def _result(self, request: InferenceRequest, response: pb.InferenceResponse) -> InferenceResult | ServerError:
        error = response._error
        if error is not None:
            return pb._to_server_error(error)
        tensors = response._output_tensors
        # Triton returns only the requested outputs (every output of the config when none were named).
        if request.outputs is not None:
            wanted = {output.name for output in request.outputs}
            tensors = [tensor for tensor in tensors if tensor._name in wanted]
        elif self._all_outputs:
            tensors = [tensor for tensor in tensors if tensor._name in self._all_outputs]
        return InferenceResult(tuple([_to_domain_tensor(tensor) for tensor in tensors]), response._parameters)

    def _failed(self, count: int, exc: Exception) -> list[InferenceResult | ServerError]:
        if isinstance(exc, _BatchError):
            text = str(exc)
            _LOG.error("model instance '%s': %s", self._instance_name, text)
        else:
            text = f"{type(exc).__name__}: {exc}{_where_raised(exc)}"
            _LOG.error("execute of model instance '%s' failed", self._instance_name, exc_info=exc)
        code = ErrorCode[exc.code().name] if isinstance(exc, pb.TritonError) else ErrorCode.INTERNAL
        error = ServerError(
            code, f"Failed to process the request(s) for model '{self._instance_name}', message: {text}"
        )
        return [error] * count


_NAIAD = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the naiad package


def _where_raised(exc: BaseException) -> str:
    """The model's frames the exception went through, innermost first, as Triton's Python backend adds them to the
    message: `\n\nAt:\n  FILE(LINE): FUNCTION\n` (naiad's own frames, which Triton's C++ has no match for, left out)."""
    frames: list[str] = []
    trace = exc.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        if not os.path.abspath(code.co_filename).startswith(_NAIAD + os.sep):
            frames.append(f"  {code.co_filename}({trace.tb_lineno}): {code.co_name}\n")
        trace = trace.tb_next
    return "\n\nAt:\n" + "".join(reversed(frames)) if frames else ""


class _BatchError(Exception):
    """What `execute` returned breaks Triton's rules; every request of the batch fails."""


def _initialize_args(context: InstanceContext) -> dict[str, str]:
    """Triton's `args` for `initialize`: every value a string."""
    config = context.config
    kind = context.kind.removeprefix("KIND_") if context.kind else "CPU"
    if kind == "AUTO":  # a KIND_AUTO group placed on a GPU: Triton tells the model GPU
        kind = "GPU"
    return {
        "model_config": json.dumps(dict(config.raw), default=_plain),
        "model_instance_kind": kind,
        "model_instance_name": context.instance_name,
        "model_instance_device_id": str(context.device_id),
        "model_repository": str(context.model_dir),
        "model_version": str(context.version),
        "model_name": config.name,
    }


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    return str(value)


def _user_code_error(what: str, exc: BaseException) -> ServerError:
    _LOG.error("%s", what, exc_info=exc)
    return ServerError(ErrorCode.INTERNAL, f"{what}: {type(exc).__name__}: {exc}")


def _import_model(path: Path, version_dir: Path, model_dir: Path) -> tuple[types.ModuleType, str]:
    """Import model.py as `<fresh package>.model`, so each instance has its own module globals.

    The version and model folders go on sys.path (as in Triton's stub). The modules model.py imports from its
    own folder are dropped from sys.modules afterwards (the model keeps them), so two models, or two instances,
    never share a `helper.py` of the same name."""
    if sys.modules.get("triton_python_backend_utils") is not pb:
        sys.modules["triton_python_backend_utils"] = pb
    package = f"{_PACKAGE_PREFIX}{next(_counter)}"
    module_name = f"{package}.{path.stem}"
    folders = (str(version_dir), str(model_dir))
    with _import_lock:
        saved_path = list(sys.path)
        others = tuple(folder + os.sep for folder in _folder_users)
        stashed = {name: mod for name, mod in list(sys.modules.items()) if _from_models(name, mod, others)}
        for name in stashed:
            del sys.modules[name]
        sys.path[:] = [entry for entry in saved_path if entry not in _folder_users] + list(folders)
        _folder_users.update(folders)
        _package_folders[package] = folders
        before = set(sys.modules)
        holder = types.ModuleType(package)
        holder.__path__ = [folders[0]]
        sys.modules[package] = holder
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except BaseException:
            _forget(package)
            raise
        finally:
            own = tuple(folder + os.sep for folder in folders)
            for name in set(sys.modules) - before:
                if _from_models(name, sys.modules[name], own):
                    del sys.modules[name]
            for name, mod in stashed.items():
                sys.modules.setdefault(name, mod)
            kept = [entry for entry in folders if entry in _folder_users and entry not in saved_path]
            sys.path[:] = saved_path + kept
    return module, package


def _from_models(name: str, module: object, prefixes: tuple[str, ...]) -> bool:
    """Whether `module` was imported from under one of the folder `prefixes` (and is not a model package)."""
    if not prefixes or name.startswith(_PACKAGE_PREFIX):
        return False
    file = getattr(module, "__file__", None)
    return isinstance(file, str) and file.startswith(prefixes)


def _forget(package: str) -> None:
    """Drop a model package and its modules from sys.modules, and its folders from sys.path once no other import
    uses them."""
    with _import_lock:
        prefix = package + "."
        for name in [name for name in sys.modules if name == package or name.startswith(prefix)]:
            del sys.modules[name]
        for folder in _package_folders.pop(package, ()):
            _folder_users[folder] -= 1
            if _folder_users[folder] <= 0:
                del _folder_users[folder]
                while folder in sys.path:
                    sys.path.remove(folder)
