"""One instance process as the server sees it, on the event loop: starting it, one message per batch each way,
the BLS calls, model control and log lines it sends back, and noticing at once that it died (its socket closes or
its pid file descriptor turns readable), with the cause: a signal's name or an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from naiad.backends.base import InstanceContext, ModelCaller
from naiad.domain.errors import ServerError, internal
from naiad.domain.model_config import ModelConfig
from naiad.domain.tensors import InferenceRequest, InferenceResult
from naiad.processes import messages as m
from naiad.processes.arena import ReadArena, WriteArena
from naiad.processes.exits import ExitWatch, how_it_ended
from naiad.processes.frames import Message
from naiad.processes.launch import Launch
from naiad.processes.link import Link
from naiad.processes.packing import decode_requests, decode_results, encode_requests, encode_response

logger = logging.getLogger("naiad.processes")

Outcome = list[InferenceResult | ServerError]
Done = Callable[[Outcome, int, int], None]


class ServerCalls(ModelCaller, Protocol):
    """What an instance process's BLS and model-control calls are carried out with, on the server's loop."""

    async def load_async(self, model_name: str, config: str, files: Mapping[str, bytes]) -> None:
        """Load or reload a model (explicit mode); raises `ServerError`."""

    async def unload_async(self, model_name: str, unload_dependents: bool) -> None:
        """Unload a model (explicit mode), without waiting for its requests; raises `ServerError`."""

    def is_ready_now(self, model_name: str, model_version: str) -> bool:
        """Whether a model (version) can serve requests now."""


class InstanceDiedError(Exception):
    """The process ended; the message says how, and when."""


class InstanceProcess:
    """A model instance running in a process of its own."""

    def __init__(
        self,
        context: InstanceContext,
        calls: ServerCalls,
        launch: Launch,
        loop: asyncio.AbstractEventLoop,
        on_death: Callable[[str], None],
    ) -> None:
        self.context = context
        self._calls = calls
        self._launch = launch
        self._loop = loop
        self._on_death = on_death
        self.name = context.instance_name
        self.model = context.config.name
        self.pid = 0
        self.cause = ""  # how it ended, once it has
        self._process: subprocess.Popen[bytes] | None = None
        self._link: Link | None = None
        self._exit_watch: ExitWatch | None = None
        settings = launch.settings
        self.writer = WriteArena(
            f"{settings.shm_region_prefix_name}{self.name}-in",
            settings.shm_default_byte_size,
            settings.shm_growth_byte_size,
        )
        self._held: dict[int, tuple[Sequence[InferenceRequest], Done, int]] = {}
        self._batches = itertools.count()
        self._waiting: asyncio.Future[Message] | None = None  # an answer during start-up
        self._stage = "starting"  # what the process is doing, as the death message tells it
        self._tasks: set[asyncio.Future[Any]] = set()
        self._kill_timer: asyncio.TimerHandle | None = None
        self._ended: asyncio.Future[None] = loop.create_future()
        self._disconnected = False
        self._killed_lingering = False
        self._started = False  # initialize() returned: a death from now on is reported to `on_death`

    @property
    def reader(self) -> ReadArena:
        """The arena of the outputs the process writes."""
        assert self._link is not None
        return self._link.reader

    @property
    def alive(self) -> bool:
        """Whether the process is running (and not known to be dying)."""
        return self._process is not None and not self.cause

    # Life

    async def start(self, backend: str) -> None:
        """Start the process and load the instance (initialize()); raises `ServerError` with the reason."""
        settings = self._launch.settings
        try:
            self._process, sock = self._launch.start()
        except OSError as exc:
            raise internal(
                f"failed to load model '{self.model}': cannot start the process of instance '{self.name}' with "
                f"{self._launch.python}: {exc.strerror or exc}"
            ) from None
        self.pid = self._process.pid
        self._link = Link(
            sock,
            self._loop,
            self.writer,
            plain=True,
            on_message=self._take,
            on_lost=self._connection_lost,
            on_bad=self._unreadable,
        )
        self._exit_watch = ExitWatch(self._process, self._loop, self._exit_seen)
        try:
            hello = await self._answer(timeout=settings.stub_timeout_seconds)
            if hello[0] == m.FAILED:
                raise m.server_error(hello[2])
            self._stage = "loading (initialize)"
            context = self.context
            fields = {
                "config": _picklable(context.config), "version": context.version, "model_dir": str(context.model_dir),
                "version_dir": str(context.version_dir), "instance_name": context.instance_name,
                "kind": context.kind,
                "device_id": context.device_id if self._launch.device_id is None else self._launch.device_id,
            }  # fmt: skip
            self._send((m.INIT, (), backend, fields))
            answer = await self._answer(timeout=None)
            if answer[0] == m.FAILED:
                raise m.server_error(answer[2])
        except InstanceDiedError as exc:
            raise internal(f"failed to load model '{self.model}': {exc}") from None
        except BaseException:
            self.kill()
            raise
        self._stage = "executing"
        self._started = True

    async def finalize(self) -> None:
        """Run the model's finalize() and wait for the process to end, killing it if that takes more than
        `stub-timeout-seconds`; or at once, if it still executes a batch (whoever unloads it waited long enough)."""
        if not self.alive:
            return
        timeout = self._launch.settings.stub_timeout_seconds
        try:
            if self._held:
                logger.warning("model instance '%s' (pid %d) is still executing; killing it", self.name, self.pid)
                self.kill()
            else:
                self._stage = "finalizing"
                self._send((m.FINALIZE, ()))
            await asyncio.wait_for(asyncio.shield(self._ended), timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "model instance '%s' (pid %d) did not finish finalize() and exit within %d s "
                "(--backend-config=python,stub-timeout-seconds); killing it",
                self.name,
                self.pid,
                timeout,
            )
            self.kill()
            await self._ended
        except asyncio.CancelledError:
            self.kill()
            raise

    def kill(self) -> None:
        """End the process at once (SIGKILL)."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    # Batches

    def execute(self, requests: Sequence[InferenceRequest], done: Done) -> None:
        """Send a batch; `done(outcome, start_ns, end_ns)` is called on the loop with one result per request."""
        start = time.monotonic_ns()
        if not self.alive:
            done([internal(self._describe())] * len(requests), start, time.monotonic_ns())
            return
        try:
            block, encoded = encode_requests(self.writer, requests)
        except OSError as exc:
            error = internal(f"model instance '{self.name}' cannot take the inputs: no shared memory: {exc}")
            done([error] * len(requests), start, time.monotonic_ns())
            return
        batch = next(self._batches)
        self._held[batch] = (requests, done, start)
        self._send((m.EXECUTE, (), batch, block, encoded))

    def _results(self, message: Message) -> None:
        _, _, batch, block, encoded = message
        held = self._held.pop(batch, None)
        if held is None:
            return
        requests, done, start = held
        try:
            outcome = decode_results(self.reader, block, encoded, f"from model instance '{self.name}'")
        except ServerError as exc:
            outcome = [exc] * len(requests)
        except Exception:  # a malformed answer: these requests fail, and the process is not trusted again
            error = internal(f"model instance '{self.name}' of model '{self.model}' sent an answer naiad cannot read")
            done([error] * len(requests), start, time.monotonic_ns())
            raise
        if len(outcome) != len(requests):
            outcome = [internal(f"model instance '{self.name}' answered {len(outcome)} of {len(requests)}")] * len(
                requests
            )
        done(outcome, start, time.monotonic_ns())

    # What the process sends

    def _unreadable(self, exc: Exception) -> None:
        """A message the server cannot read: the process is not to be trusted any more."""
        logger.error("model instance '%s' sent a message naiad cannot read (%s); ending it", self.name, exc)
        self.kill()

    def _take(self, message: Message) -> None:
        kind = message[0]
        if kind == m.RESULTS:
            self._results(message)
        elif kind == m.LOG:
            _, _, name, level, text = message
            if name == "naiad.model":
                name = f"naiad.model.{self.model}"
            logging.getLogger(str(name)).log(int(level), "%s", text)
        elif kind == m.BLS:
            self._track(self._bls(message))
        elif kind == m.CALL:
            self._track(self._control(message))
        else:
            waiting = self._waiting
            if waiting is not None and not waiting.done():
                waiting.set_result(message)

    async def _bls(self, message: Message) -> None:
        _, _, call, model_name, model_version, block, encoded = message
        try:
            request = decode_requests(self.reader, block, (encoded,), f"of a BLS call from model '{self.model}'")[0]
            del block, encoded, message
            response = await self._calls.infer_async(str(model_name), str(model_version), request)
            del request
            out, answer = encode_response(self.writer, response)
            self._send((m.BLS_DONE, (), call, out, (True, answer)))
        except ServerError as exc:
            self._send((m.BLS_DONE, (), call, None, (False, m.error_of(exc))))
        except Exception as exc:
            error = internal(f"BLS call to model '{model_name}' failed: {type(exc).__name__}: {exc}")
            self._send((m.BLS_DONE, (), call, None, (False, m.error_of(error))))

    async def _control(self, message: Message) -> None:
        _, _, call, operation, arguments = message
        calls = self._calls
        try:
            value: Any = None
            if operation == "load_model":
                model_name, config, files = arguments
                await calls.load_async(str(model_name), str(config), dict(files))
            elif operation == "unload_model":
                model_name, unload_dependents = arguments
                await calls.unload_async(str(model_name), bool(unload_dependents))
            elif operation == "is_model_ready":
                model_name, model_version = arguments
                value = calls.is_ready_now(str(model_name), str(model_version))
            else:
                raise internal(f"unknown call '{operation}' from model '{self.model}'")
            self._send((m.CALL_DONE, (), call, (True, value)))
        except ServerError as exc:
            self._send((m.CALL_DONE, (), call, (False, m.error_of(exc))))
        except Exception as exc:
            error = internal(f"pb_utils.{operation} failed: {type(exc).__name__}: {exc}")
            self._send((m.CALL_DONE, (), call, (False, m.error_of(error))))

    def _track(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, message: Message) -> None:
        if self._link is not None and not self.cause:
            self._link.send(message)

    # Waiting, and dying

    async def _answer(self, timeout: float | None) -> Message:
        """The process's next answer to a start-up or finalize message; raises `InstanceDiedError`."""
        if self.cause:
            raise InstanceDiedError(self._describe())
        waiting = self._waiting = self._loop.create_future()
        try:
            return await asyncio.wait_for(waiting, timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise internal(
                f"failed to load model '{self.model}': the process of instance '{self.name}' did not start within "
                f"{timeout} s (--backend-config=python,stub-timeout-seconds)"
            ) from None
        finally:
            self._waiting = None

    def _connection_lost(self) -> None:
        """The socket closed: the exit follows at once, unless the process lingers; it gets a second."""
        if self._link is None or self._disconnected:
            return
        self._disconnected = True
        if self._process is not None and self._process.poll() is None:
            self._kill_timer = self._loop.call_later(1.0, self._kill_lingering)
        else:
            self._exit_seen()

    def _kill_lingering(self) -> None:
        self._killed_lingering = True
        self.kill()

    def _exit_seen(self) -> None:
        process = self._process
        if process is None or process.poll() is None or self.cause:
            return
        with contextlib.suppress(OSError):  # what the model started and left running goes with it
            os.killpg(process.pid, signal.SIGKILL)
        how = how_it_ended(process.returncode)
        if self._killed_lingering:
            how = "closed its connection and was killed a second later"
        self.cause = how
        death = self._describe()
        held, self._held = self._held, {}
        self._close()
        if self._started:  # first, so that whoever serves with it gives it no more work
            self._on_death(death)
        error = internal(death)
        now = time.monotonic_ns()
        for requests, done, start in held.values():
            done([error] * len(requests), start, now)
        waiting = self._waiting
        if waiting is not None and not waiting.done():
            waiting.set_exception(InstanceDiedError(death))
        ended = self._ended
        if not ended.done():
            ended.set_result(None)

    def _describe(self) -> str:
        stage = self._stage
        if stage == "executing":
            stage = "executing a batch" if self._held else "idle"
        return (
            f"Stub process '{self.name}' is not healthy: the process of model '{self.model}' instance '{self.name}' "
            f"(pid {self.pid}) {self.cause or 'is not running'} while {stage}"
        )

    def _close(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        if self._link is not None:
            self._link.close()  # the arenas with it
        else:
            self.writer.close()
        if self._exit_watch is not None:
            self._exit_watch.close()
        for task in self._tasks:
            task.cancel()


def _picklable(config: ModelConfig) -> ModelConfig:
    """The config with plain dicts where it holds read-only mappings."""
    return dataclasses.replace(config, raw=copy.deepcopy(dict(config.raw)), parameters=dict(config.parameters))
