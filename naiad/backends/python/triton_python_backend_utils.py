"""Triton's `triton_python_backend_utils` (`pb_utils`) for model.py files: tensors, requests, responses, BLS."""

from __future__ import annotations

import enum
import json
import logging
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from naiad.backends.base import ModelCaller
from naiad.backends.python.pb_model_config import ModelConfig as ModelConfig
from naiad.backends.python.pb_tensor import _CODES, _to_domain_tensor
from naiad.backends.python.pb_tensor import TRITON_STRING_TO_NUMPY as TRITON_STRING_TO_NUMPY
from naiad.backends.python.pb_tensor import Tensor as Tensor
from naiad.backends.python.pb_tensor import TritonModelException as TritonModelException
from naiad.backends.python.pb_tensor import deserialize_bytes_tensor as deserialize_bytes_tensor
from naiad.backends.python.pb_tensor import numpy_to_triton_type as numpy_to_triton_type
from naiad.backends.python.pb_tensor import serialize_byte_tensor as serialize_byte_tensor
from naiad.backends.python.pb_tensor import triton_string_to_numpy as triton_string_to_numpy
from naiad.backends.python.pb_tensor import triton_to_numpy_type as triton_to_numpy_type
from naiad.domain.errors import ErrorCode, ServerError
from naiad.domain.tensors import NO_PARAMETERS, Parameters, RequestedOutput
from naiad.domain.tensors import InferenceRequest as DomainRequest
from naiad.domain.tensors import InferenceResponse as DomainResponse

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_LOG = logging.getLogger("naiad.model")
_state = threading.local()
_caller: ModelCaller | None = None


class _ErrorCode(enum.IntEnum):
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError(Exception):
    """An error for one response: `InferenceResponse(error=TritonError("bad input", TritonError.INVALID_ARG))`."""

    UNKNOWN: ClassVar[_ErrorCode] = _ErrorCode.UNKNOWN
    INTERNAL: ClassVar[_ErrorCode] = _ErrorCode.INTERNAL
    NOT_FOUND: ClassVar[_ErrorCode] = _ErrorCode.NOT_FOUND
    INVALID_ARG: ClassVar[_ErrorCode] = _ErrorCode.INVALID_ARG
    UNAVAILABLE: ClassVar[_ErrorCode] = _ErrorCode.UNAVAILABLE
    UNSUPPORTED: ClassVar[_ErrorCode] = _ErrorCode.UNSUPPORTED
    ALREADY_EXISTS: ClassVar[_ErrorCode] = _ErrorCode.ALREADY_EXISTS
    CANCELLED: ClassVar[_ErrorCode] = _ErrorCode.CANCELLED

    def __init__(self, message: str, code: int = _ErrorCode.INTERNAL) -> None:
        if not isinstance(message, str):
            raise TypeError(f"TritonError message must be a str, got {type(message).__name__}")
        try:
            self._code = _ErrorCode(code)
        except ValueError:
            raise TypeError(f"TritonError code must be one of TritonError's codes, got {code!r}") from None
        super().__init__(message)
        self._message = message

    def code(self) -> _ErrorCode:
        """The error's code (`TritonError.INTERNAL` unless given)."""
        return self._code

    def message(self) -> str:
        """The error's text."""
        return self._message

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, TritonError.{self._code.name})"


class MemoryType(enum.IntEnum):
    """Where a BLS caller prefers its outputs; naiad keeps every tensor in CPU memory."""

    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU


class PreferredMemory:
    """A hint for where BLS outputs should live; naiad's tensors are always in CPU memory."""

    __slots__ = ("preferred_device_id", "preferred_memory_type")

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    """A request's trace; naiad does not trace, so there is no context."""

    __slots__ = ()

    def get_context(self) -> str | None:
        """The trace context (None: no trace)."""
        return None


class InferenceResponseSender:
    """Sends a request's response from inside `execute` (non-decoupled models: exactly one response)."""

    __slots__ = ("_closed", "_response", "_sent")

    def __init__(self) -> None:
        self._response: InferenceResponse | None = None
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Send `response`; `flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL` closes the sender."""
        if response is not None and not isinstance(response, InferenceResponse):
            raise TypeError(f"send() needs an InferenceResponse, got {type(response).__name__}")
        if response is not None and self._sent > 0:
            raise TritonModelException(
                "Unable to send response. Non-decoupled model cannot send more than one response."
            )
        if response is None and flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL and self._sent == 0:
            raise TritonModelException(
                "Unable to send response. Non-decoupled model cannot send complete final before sending a response."
            )
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        if response is not None:
            self._response = response
        self._sent += 1

    def is_cancelled(self) -> bool:
        """False: naiad does not cancel requests."""
        return False


class InferenceRequest:
    """A request: given to `execute`, or built by a model to call another model (BLS) with `exec()`."""

    __slots__ = (
        "_all_outputs", "_correlation_id", "_flags", "_inputs", "_model_name", "_model_version",
        "_parameters", "_parameters_json", "_preferred_memory", "_release_flags", "_request_id",
        "_requested", "_sender", "_source", "_timeout", "_trace",
    )  # fmt: skip

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] | None = None,
        requested_output_names: Sequence[str] | None = None,
        model_name: str | None = None,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: Mapping[str, bool | int | str] | str | None = None,
    ) -> None:
        for arg, value in (("inputs", inputs), ("requested_output_names", requested_output_names)):
            if value is None:
                raise TypeError(f"InferenceRequest() missing required argument '{arg}'")
        if not isinstance(model_name, str):
            raise TypeError("InferenceRequest() missing required argument 'model_name' (a str)")
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("Correlation ID must be integer or string")
        assert inputs is not None and requested_output_names is not None
        for tensor in inputs:
            if not isinstance(tensor, Tensor):
                raise TypeError(f"InferenceRequest inputs must be pb_utils.Tensor, got {type(tensor).__name__}")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested: tuple[str, ...] = tuple(dict.fromkeys(requested_output_names))
        self._model_name = model_name
        self._model_version = int(model_version)
        self._flags = flags
        self._timeout = timeout
        self._preferred_memory = preferred_memory
        self._trace = trace
        self._parameters, self._parameters_json = _checked_parameters(parameters)
        self._source: DomainRequest | None = None
        self._all_outputs: frozenset[str] = frozenset()
        self._sender: InferenceResponseSender | None = None
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    @classmethod
    def _incoming(cls, source: DomainRequest, model_name: str, all_outputs: frozenset[str]) -> InferenceRequest:
        """The request `execute` gets for one of naiad's requests; tensors share the request's arrays."""
        request = cls.__new__(cls)
        wrap = Tensor._wrap
        codes = _CODES
        request._inputs = [wrap(t.name, t.data, codes[t.datatype]) for t in source.inputs]
        request._source = source
        request._all_outputs = all_outputs
        request._requested = ()
        request._request_id = source.id
        request._correlation_id = 0
        request._model_name = model_name
        request._model_version = -1
        request._flags = 0
        request._timeout = 0
        request._parameters = source.parameters
        request._parameters_json = None
        request._preferred_memory = None
        request._trace = None
        request._sender = None
        request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        return request

    def inputs(self) -> list[Tensor]:
        """The input tensors."""
        return self._inputs

    def request_id(self) -> str:
        """The request's id ("" when the client gave none)."""
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence correlation id (0: none)."""
        return self._correlation_id

    def requested_output_names(self) -> set[str]:
        """The outputs to return: those the client asked for, or every output of the config."""
        source = self._source
        if source is None:
            return set(self._requested)
        if source.outputs is None:
            return set(self._all_outputs)
        return {output.name for output in source.outputs}

    def flags(self) -> int:
        """The request flags (`TRITONSERVER_REQUEST_FLAG_SEQUENCE_START`/`_END`)."""
        return self._flags

    def set_flags(self, flags: int) -> None:
        """Set the request flags."""
        self._flags = flags

    def timeout(self) -> int:
        """The request's timeout in microseconds (0: none)."""
        return self._timeout

    def parameters(self) -> str:
        """The request's parameters as a JSON string, like Triton."""
        if self._parameters_json is None:
            self._parameters_json = json.dumps(dict(self._parameters), default=str)
        return self._parameters_json

    def trace(self) -> InferenceTrace:
        """The request's trace (naiad does not trace)."""
        return self._trace if self._trace is not None else InferenceTrace()

    def get_response_sender(self) -> InferenceResponseSender:
        """The sender that answers this request from inside `execute` (then return None for it)."""
        if self._sender is None:
            self._sender = InferenceResponseSender()
        return self._sender

    def is_cancelled(self) -> bool:
        """False: naiad does not cancel requests."""
        return False

    def set_release_flags(self, flags: int) -> None:
        """Only `TRITONSERVER_REQUEST_RELEASE_ALL`: rescheduling needs sequence batching."""
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException(
                "request rescheduling (TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) needs iterative sequence "
                "batching, which naiad does not support yet"
            )
        self._release_flags = flags

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on `model_name` and wait; failures come back as `response.error()`."""
        caller = _bls_caller(decoupled)
        request = self._to_domain()
        try:
            response = caller.infer(self._model_name, self._version(), request)
        except Exception as exc:
            return InferenceResponse._failed(self._model_name, exc)
        return InferenceResponse._from_domain(response)

    def async_exec(self, decoupled: bool = False) -> Coroutine[Any, Any, InferenceResponse]:
        """`await request.async_exec()` from an `async def execute`: run this request on `model_name`."""
        caller = _bls_caller(decoupled)
        return self._await(caller, self._to_domain())

    async def _await(self, caller: ModelCaller, request: DomainRequest) -> InferenceResponse:
        try:
            response = await caller.infer_async(self._model_name, self._version(), request)
        except Exception as exc:
            return InferenceResponse._failed(self._model_name, exc)
        return InferenceResponse._from_domain(response)

    def _version(self) -> str:
        return "" if self._model_version < 0 else str(self._model_version)

    def _to_domain(self) -> DomainRequest:
        outputs = tuple(RequestedOutput(name) for name in self._requested) if self._requested else None
        return DomainRequest(
            inputs=tuple(_to_domain_tensor(tensor) for tensor in self._inputs),
            outputs=outputs,
            id=self._request_id,
            parameters=self._parameters,
        )


class InferenceResponse:
    """What `execute` returns per request: output tensors, or an error."""

    __slots__ = ("_error", "_output_tensors", "_parameters", "_parameters_json")

    def __init__(
        self,
        output_tensors: Sequence[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, bool | int | str] | str | None = None,
    ) -> None:
        if output_tensors is None:
            output_tensors = []
        elif not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list.')
        tensors = list(output_tensors)
        for tensor in tensors:
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"InferenceResponse output_tensors must be pb_utils.Tensor, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"InferenceResponse error must be a pb_utils.TritonError, got {type(error).__name__}")
        self._output_tensors = tensors
        self._error = error
        self._parameters, self._parameters_json = _checked_parameters(parameters)

    @classmethod
    def _from_domain(cls, response: DomainResponse) -> InferenceResponse:
        made = cls.__new__(cls)
        made._output_tensors = [Tensor._wrap(t.name, t.data, _CODES[t.datatype]) for t in response.outputs]
        made._error = None
        made._parameters = response.parameters
        made._parameters_json = None
        return made

    @classmethod
    def _failed(cls, model_name: str, exc: Exception) -> InferenceResponse:
        if isinstance(exc, ServerError):
            error = TritonError(exc.message, _ErrorCode[exc.code.name])
        else:
            _LOG.error("BLS call to model '%s' failed", model_name, exc_info=exc)
            error = TritonError(f"BLS call to model '{model_name}' failed: {type(exc).__name__}: {exc}")
        made = cls.__new__(cls)
        made._output_tensors = []
        made._error = error
        made._parameters = NO_PARAMETERS
        made._parameters_json = None
        return made

    def output_tensors(self) -> list[Tensor]:
        """The output tensors."""
        return self._output_tensors

    def has_error(self) -> bool:
        """Whether the response carries an error."""
        return self._error is not None

    def error(self) -> TritonError | None:
        """The response's error, or None."""
        return self._error

    def parameters(self) -> str:
        """The response's parameters as a JSON string, like Triton."""
        if self._parameters_json is None:
            self._parameters_json = json.dumps(dict(self._parameters), default=str)
        return self._parameters_json


def _checked_parameters(parameters: Mapping[str, Any] | str | None) -> tuple[Parameters, str | None]:
    """Parameters as Triton takes them (str keys; bool, int or str values), with their JSON when known."""
    if parameters is None:
        return NO_PARAMETERS, None
    text: str | None = None
    if isinstance(parameters, str):
        text = parameters
        parameters = json.loads(parameters)
        if not isinstance(parameters, dict):
            raise TritonModelException(f"parameters JSON must be an object, got {type(parameters).__name__}")
    elif not isinstance(parameters, Mapping):
        raise TritonModelException(f"Expect parameters to be a dict, got {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, bool | int | str):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type {type(value)}")
    return (dict(parameters) if parameters else NO_PARAMETERS), text


def _to_server_error(error: TritonError) -> ServerError:
    """naiad's error for a response's `TritonError`, with the model's message."""
    return ServerError(ErrorCode[error.code().name], error.message())


def _set_model_caller(caller: ModelCaller) -> None:
    """Set the server's BLS entry point (one per process)."""
    global _caller
    _caller = caller


def _bls_caller(decoupled: bool) -> ModelCaller:
    if decoupled:
        raise TritonModelException("decoupled BLS is not supported by naiad yet")
    if _caller is None:
        raise TritonModelException("BLS is only available inside a model served by naiad")
    return _caller


def _set_model_dir(model_dir: str | None) -> None:
    """Set what `get_model_dir()` answers on this thread (the running model's version folder)."""
    _state.model_dir = model_dir


def get_model_dir() -> str:
    """The folder that holds the running model.py (the model's version folder)."""
    model_dir: str | None = getattr(_state, "model_dir", None)
    if model_dir is None:
        raise TritonModelException("get_model_dir() works only while naiad runs a model's code")
    return model_dir


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called `name`, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called `name`, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The config's `input` entry called `name` (model_config is `json.loads(args["model_config"])`)."""
    for item in model_config.get("input", []):
        if item["name"] == name:
            return dict(item)
    return None


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The config's `output` entry called `name`."""
    for item in model_config.get("output", []):
        if item["name"] == name:
            return dict(item)
    return None


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    """Whether the config sets `model_transaction_policy { decoupled: true }`."""
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class Logger:
    """Logs from a model, to the `naiad.model` logger."""

    class LogLevel(enum.IntEnum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    INFO: ClassVar[LogLevel] = LogLevel.INFO
    WARNING: ClassVar[LogLevel] = LogLevel.WARNING
    ERROR: ClassVar[LogLevel] = LogLevel.ERROR
    VERBOSE: ClassVar[LogLevel] = LogLevel.VERBOSE
    _LEVELS: ClassVar[dict[int, int]] = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        """Log `message` at `level` (Logger.INFO, WARNING, ERROR or VERBOSE)."""
        _LOG.log(Logger._LEVELS.get(int(level), logging.INFO), "%s", message)

    @staticmethod
    def log_info(message: str) -> None:
        """Log at INFO."""
        _LOG.info("%s", message)

    @staticmethod
    def log_warn(message: str) -> None:
        """Log at WARNING."""
        _LOG.warning("%s", message)

    @staticmethod
    def log_error(message: str) -> None:
        """Log at ERROR."""
        _LOG.error("%s", message)

    @staticmethod
    def log_verbose(message: str) -> None:
        """Log at VERBOSE (Python's DEBUG)."""
        _LOG.debug("%s", message)


class MetricKind(enum.IntEnum):
    """Kinds of custom metric."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class MetricFamily:
    """Triton's custom metrics, which naiad does not serve yet: creating one raises."""

    COUNTER: ClassVar[MetricKind] = MetricKind.COUNTER
    GAUGE: ClassVar[MetricKind] = MetricKind.GAUGE
    HISTOGRAM: ClassVar[MetricKind] = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        raise TritonModelException(f"custom metrics (pb_utils.MetricFamily '{name}') are not supported by naiad yet")


def load_model(model_name: str, config: str = "", files: Mapping[str, bytes] | None = None) -> None:
    """Load or reload a model of this server (explicit model control mode only); raises `TritonModelException`."""
    caller = _control_caller("load_model", model_name)
    try:
        caller.load(model_name, config, dict(files or {}))
    except ServerError as exc:
        raise TritonModelException(exc.message) from None


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model of this server (explicit model control mode only); raises `TritonModelException`."""
    caller = _control_caller("unload_model", model_name)
    try:
        caller.unload(model_name, unload_dependents)
    except ServerError as exc:
        raise TritonModelException(exc.message) from None


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether a model (version) of this server can serve requests now."""
    if _caller is None:
        raise TritonModelException("pb_utils.is_model_ready works only inside a model served by naiad")
    return _caller.is_ready(model_name, model_version)


def _control_caller(call: str, model_name: str) -> ModelCaller:
    if _caller is None:
        raise TritonModelException(f"pb_utils.{call} works only inside a model served by naiad")
    if getattr(_state, "in_lifecycle", False):
        # these run inside a load or unload; another one from there would wait for that one to finish
        raise TritonModelException(
            f"pb_utils.{call}('{model_name}') cannot be called from initialize(), finalize() or "
            "auto_complete_config() in naiad; call it from execute()"
        )
    return _caller


@contextmanager
def _lifecycle_code() -> Iterator[None]:
    """Mark this thread as running a model's initialize, finalize or auto_complete_config."""
    _state.in_lifecycle = True
    try:
        yield
    finally:
        _state.in_lifecycle = False
