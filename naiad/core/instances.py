"""Model instances as the scheduler sees them (`Runner`: load, execute a list of requests, unload), and where each
runs: on a thread of the server (`InstanceRunner`; TorchScript and ONNX Runtime release the GIL), or in a process of
its own (`naiad.processes`; Python models, by default), chosen by the backend."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from naiad.backends.base import Backend, InstanceContext, ModelInstance
from naiad.domain.errors import ServerError, internal
from naiad.domain.tensors import InferenceRequest, InferenceResult
from naiad.processes.instance import ServerCalls
from naiad.processes.supervisor import InstanceWatcher, ProcessRunner, Supervisor

logger = logging.getLogger("naiad.core")

Outcome = list[InferenceResult | ServerError]
Done = Callable[[Outcome, int, int], None]

_STOP = object()


class Runner(Protocol):
    """One instance of a model, wherever it runs; `execute` is called on the loop, one batch at a time."""

    context: InstanceContext
    name: str

    @property
    def available(self) -> bool:
        """Whether it can take a batch now (false while its process is started again)."""

    def watch(self, watcher: InstanceWatcher) -> None:
        """Tell `watcher` when it goes down, comes back, or is lost for good."""

    async def load(self, backend: Backend) -> None:
        """Load it (Triton's initialize); raises `ServerError` with the reason."""

    def execute(self, requests: Sequence[InferenceRequest], done: Done) -> None:
        """Run a batch; `done(outcome, start_ns, end_ns)` is then called on the loop."""

    async def unload(self) -> None:
        """Unload it (Triton's finalize)."""

    def stop(self) -> None:
        """End it without unloading (its load failed)."""


class Placement:
    """Where the instances of a model run, as its backend says: a thread of the server, or a process of their own."""

    def __init__(self, caller: ServerCalls, loop: asyncio.AbstractEventLoop, supervisor: Supervisor) -> None:
        self.caller = caller
        self.loop = loop
        self.supervisor = supervisor

    def runner(self, context: InstanceContext, backend: Backend) -> Runner:
        """A runner, not yet loaded, for one instance."""
        config = context.config
        if backend.runs_in_processes(config.parameters, config.name):
            return ProcessRunner(context, self.caller, self.loop, self.supervisor)
        return InstanceRunner(context, self.loop)


class InstanceRunner:
    """One instance of a model in the server's process: its backend object and the thread that calls it."""

    available = True  # a thread does not die on its own

    def __init__(self, context: InstanceContext, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.name = context.instance_name
        self._loop = loop
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._instance: ModelInstance | None = None
        self._thread = threading.Thread(target=self._serve, name=f"naiad-{self.name}", daemon=True)
        self._thread.start()

    def watch(self, watcher: InstanceWatcher) -> None:
        """Nothing to tell: the thread lives as long as the server."""

    async def load(self, backend: Backend) -> None:
        """Load the backend's instance on this instance's own thread."""
        future: asyncio.Future[ModelInstance] = self._loop.create_future()

        def job() -> None:
            try:
                instance = backend.load(self.context)
            except BaseException as exc:  # a user's model may raise anything
                self._loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                self._loop.call_soon_threadsafe(_set_result, future, instance)

        self._jobs.put(job)
        self._instance = await future

    def execute(self, requests: Sequence[InferenceRequest], done: Done) -> None:
        """Run `requests` on the instance's thread; `done(outcome, start_ns, end_ns)` is then called on the loop."""
        self._jobs.put((requests, done))

    async def unload(self) -> None:
        """Unload the instance (Triton's `finalize`) and end its thread."""
        future: asyncio.Future[None] = self._loop.create_future()
        instance = self._instance
        self._instance = None

        def job() -> None:
            try:
                if instance is not None:
                    instance.unload()
            except Exception:
                logger.exception("unloading instance '%s' failed", self.name)
            self._loop.call_soon_threadsafe(_set_result, future, None)

        self._jobs.put(job)
        self._jobs.put(_STOP)
        await future

    def stop(self) -> None:
        """End the thread without unloading (for an instance whose load failed)."""
        self._jobs.put(_STOP)

    def _serve(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            if callable(job):
                job()
                continue
            requests, done = job
            start = time.monotonic_ns()
            outcome = self._run(requests)
            end = time.monotonic_ns()
            self._loop.call_soon_threadsafe(done, outcome, start, end)

    def _run(self, requests: Sequence[InferenceRequest]) -> Outcome:
        instance = self._instance
        if instance is None:
            return [internal(f"model instance '{self.name}' is not loaded")] * len(requests)
        try:
            outcome = instance.execute(requests)
        except Exception as exc:  # the backend's boundary should have caught it; never lose the requests
            logger.exception("instance '%s' failed", self.name)
            return [internal(f"model instance '{self.name}' failed: {type(exc).__name__}: {exc}")] * len(requests)
        if len(outcome) != len(requests):
            return [
                internal(f"model instance '{self.name}' returned {len(outcome)} responses for {len(requests)} requests")
            ] * len(requests)
        return outcome


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
