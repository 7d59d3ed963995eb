"""What runs in an instance process: one model instance, loaded with its backend, executing the batches the server
sends one at a time on the main thread (as Triton's stub does: a model may set signal handlers there). The process
ends the moment the server is gone (its socket closes), whatever the model is doing.

The model sees `triton_python_backend_utils` as in the server: BLS calls, model control and `pb_utils.Logger` go
back to the server over the same socket (`RemoteCaller`, `LogForwarder`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import socket
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from naiad.backends.base import InstanceContext, ModelInstance
from naiad.backends.registry import get_backend
from naiad.domain.errors import ServerError, internal
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult
from naiad.processes import messages as m
from naiad.processes.arena import ReadArena, WriteArena
from naiad.processes.frames import FrameBuffer, Message, send_blocking
from naiad.processes.inbox import Inbox
from naiad.processes.packing import (
    decode_requests,
    decode_response,
    encode_requests,
    encode_results,
    frames_for,
)

_JOBS = (m.INIT, m.EXECUTE, m.AUTO_COMPLETE, m.FINALIZE)


class Stub:
    """The instance process: its connection to the server and the instance it serves."""

    def __init__(self, sock: socket.socket, first_segment: int, growth: int, label: str) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self.sending = 0  # the thread inside `send`, which must not send again (a log line from a signal handler)
        self.writer = WriteArena(label, first_segment, growth)
        self.reader = ReadArena()
        self._jobs: deque[Message] = deque()
        self._calls: dict[int, tuple[concurrent.futures.Future[Any], bool]] = {}  # the future, and if awaited
        self._call_ids = itertools.count()
        self._instance: ModelInstance | None = None
        self._where = "of an instance process"
        self.inbox = Inbox(sock, self._take)

    def run(self) -> int:
        """Serve jobs until finalized (or the server goes away); the exit status."""
        forward_logs(self)
        try:
            return self._serve()
        except SystemExit as exc:  # a model's sys.exit(): the process ends with its status, as it asked
            return _leave(exc.code if isinstance(exc.code, int) else 1)

    def _serve(self) -> int:
        jobs, wait_for = self._jobs, self.inbox.wait_for
        while True:
            wait_for(lambda: bool(jobs))
            job = jobs.popleft()
            kind = job[0]
            if kind == m.EXECUTE:
                self._execute(job)
            elif kind == m.INIT:
                if not self._init(job):
                    return _leave(0)
            elif kind == m.AUTO_COMPLETE:
                self._auto_complete(job)
                return _leave(0)
            else:
                self._finalize()
                return _leave(0)

    def send(self, message: Message) -> None:
        """Send a message (with any segment it needs first), from any thread."""
        with self._send_lock:
            self.sending = threading.get_ident()
            try:
                for data, fds in frames_for(message, self.writer, self.reader):
                    send_blocking(self._sock, data, fds)
                    for fd in fds:
                        os.close(fd)
            finally:
                self.sending = 0

    def call(self, message: Callable[[int], Message]) -> Message:
        """Send a request to the server and wait for its answer."""
        future = self._call(message, awaited=False)
        self.inbox.wait_for(future.done)
        answer: Message = future.result()
        return answer

    def call_async(self, message: Callable[[int], Message]) -> concurrent.futures.Future[Any]:
        """Send a request to the server; its answer arrives in the future returned, for a coroutine to await."""
        self.inbox.async_call(+1)
        return self._call(message, awaited=True)

    def _call(self, message: Callable[[int], Message], awaited: bool) -> concurrent.futures.Future[Any]:
        call = next(self._call_ids)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._calls[call] = (future, awaited)
        try:
            self.send(message(call))
        except BaseException:
            self._calls.pop(call, None)
            if awaited:
                self.inbox.async_call(-1)
            raise
        return future

    # The jobs, on the main thread

    def _init(self, job: Message) -> bool:
        _, _, backend_name, fields = job
        config = fields["config"]
        self._where = f"of model '{config.name}'"
        context = InstanceContext(
            config=config,
            version=fields["version"],
            model_dir=Path(fields["model_dir"]),
            version_dir=Path(fields["version_dir"]),
            instance_name=fields["instance_name"],
            kind=fields["kind"],
            device_id=fields["device_id"],
            caller=RemoteCaller(self),
        )
        try:
            self._instance = get_backend(backend_name, config.name).load(context)
        except ServerError as exc:
            self.send((m.FAILED, (), m.error_of(exc)))
            return False
        except BaseException as exc:  # a user's initialize may raise anything, SystemExit included
            self.send(
                (m.FAILED, (), ("INTERNAL", f"failed to load model '{config.name}': {type(exc).__name__}: {exc}"))
            )
            return False
        self.send((m.READY, ()))
        return True

    def _execute(self, job: Message) -> None:
        _, _, batch, block, encoded = job
        try:
            requests = decode_requests(self.reader, block, encoded, self._where)
        except Exception as exc:
            self._answer(batch, [internal(f"reading the requests {self._where} failed: {exc}")] * len(encoded))
            return
        instance = self._instance
        results: list[InferenceResult | ServerError]
        if instance is None:
            results = [internal("the instance is not loaded")] * len(requests)
        else:
            results = instance.execute(requests)
        del requests  # the inputs' blocks go back with the answer, unless the model keeps them
        self._answer(batch, results)

    def _answer(self, batch: int, results: list[InferenceResult | ServerError]) -> None:
        try:
            block, encoded = encode_results(self.writer, results)
        except OSError as exc:  # no shared memory left
            error = internal(f"the outputs {self._where} cannot be returned: no shared memory: {exc}")
            block, encoded = encode_results(self.writer, [error] * len(results))
        except Exception as exc:  # a value that cannot cross, such as a parameter of another type
            error = internal(f"the outputs {self._where} cannot be returned: {exc}")
            block, encoded = encode_results(self.writer, [error] * len(results))
        del results
        self.send((m.RESULTS, (), batch, block, encoded))

    def _auto_complete(self, job: Message) -> None:
        _, _, backend_name, raw, model_dir, version_dir, max_batch = job
        name = str(raw.get("name") or Path(model_dir).name)
        try:
            completed = get_backend(backend_name, name).auto_complete(
                raw, Path(model_dir), Path(version_dir), max_batch
            )
        except ServerError as exc:
            self.send((m.FAILED, (), m.error_of(exc)))
        except BaseException as exc:
            self.send(
                (m.FAILED, (), ("INTERNAL", f"auto-complete failed for model '{name}': {type(exc).__name__}: {exc}"))
            )
        else:
            self.send((m.COMPLETED, (), completed))

    def _finalize(self) -> None:
        instance, self._instance = self._instance, None
        if instance is not None:
            instance.unload()  # finalize(); its errors are logged

    # What arrives, taken by whichever thread reads

    def _take(self, message: Message, frames: FrameBuffer) -> None:
        kind, freed = message[0], message[1]
        if freed:
            self.writer.free(freed)
        if kind in _JOBS:
            self._jobs.append(message)
        elif kind == m.SEGMENT:
            self.reader.add(message[2], message[3], frames.take_fd())
        elif kind == m.DROP:
            for segment in message[2]:
                self.reader.drop(segment)
        elif kind in (m.BLS_DONE, m.CALL_DONE):
            entry = self._calls.pop(message[2], None)
            if entry is not None:
                future, awaited = entry
                if awaited:
                    self.inbox.async_call(-1)
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # its coroutine was cancelled
                    future.set_result(message)


class RemoteCaller:
    """BLS and model control from a model in this process, carried out by the server."""

    def __init__(self, stub: Stub) -> None:
        self._stub = stub

    def infer(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        stub = self._stub
        return self._response(model_name, stub.call(self._bls(model_name, model_version, request)))

    def infer_async(
        self, model_name: str, model_version: str, request: InferenceRequest
    ) -> Awaitable[InferenceResponse]:
        answer = self._stub.call_async(self._bls(model_name, model_version, request))
        return self._await(model_name, asyncio.wrap_future(answer))

    async def _await(self, model_name: str, answer: Awaitable[Message]) -> InferenceResponse:
        return self._response(model_name, await answer)

    def load(self, model_name: str, config: str, files: Mapping[str, bytes]) -> None:
        self._control("load_model", (str(model_name), str(config), {str(k): bytes(v) for k, v in files.items()}))

    def unload(self, model_name: str, unload_dependents: bool) -> None:
        self._control("unload_model", (str(model_name), bool(unload_dependents)))

    def is_ready(self, model_name: str, model_version: str) -> bool:
        return bool(self._control("is_model_ready", (str(model_name), str(model_version))))

    def _bls(self, model_name: str, model_version: str, request: InferenceRequest) -> Callable[[int], Message]:
        block, encoded = encode_requests(self._stub.writer, [request])
        name, version = str(model_name), str(model_version)
        return lambda call: (m.BLS, (), call, name, version, block, encoded[0])

    def _response(self, model_name: str, answer: Message) -> InferenceResponse:
        _, _, _, block, outcome = answer
        if outcome[0]:
            return decode_response(self._stub.reader, block, outcome[1], f"of the response of model '{model_name}'")
        raise m.server_error(outcome[1])

    def _control(self, operation: str, arguments: tuple[Any, ...]) -> Any:
        _, _, _, outcome = self._stub.call(lambda call: (m.CALL, (), call, operation, arguments))
        if outcome[0]:
            return outcome[1]
        raise m.server_error(outcome[1])


class LogForwarder(logging.Handler):
    """Sends this process's naiad and model log records to the server's log."""

    def __init__(self, stub: Stub) -> None:
        super().__init__(logging.DEBUG)
        self._stub = stub
        self._traceback = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if self._stub.sending == threading.get_ident():  # logged from inside a send: it would wait for itself
            return
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + self._traceback.formatException(record.exc_info)
            self._stub.send((m.LOG, (), str(record.name), int(record.levelno), str(text)))
        except Exception:  # the server is going away; nothing to log to
            pass


def forward_logs(stub: Stub) -> None:
    """Every naiad record of this process, at any level, goes to the server, which filters them as its own."""
    logger = logging.getLogger("naiad")
    logger.handlers[:] = [LogForwarder(stub)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def _leave(status: int) -> int:
    """End the process now: what finalize() did not stop (a model's own threads) must not keep it alive."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
