"""Supervision of instance processes: an instance that dies is started again (a fresh initialize()), with back-off
when it dies young, and given up with the reason after a few starts that fail; whoever serves with the instance
(the model version) is told when it goes down, comes back, or is lost for good."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from naiad.backends.base import InstanceContext
from naiad.domain.errors import ServerError, internal
from naiad.domain.tensors import InferenceRequest
from naiad.processes.autocomplete import auto_complete_in_process
from naiad.processes.environments import EnvironmentBuilder
from naiad.processes.instance import Done, InstanceProcess, ServerCalls
from naiad.processes.launch import Launch, ProcessSettings

logger = logging.getLogger("naiad.processes")

GIVE_UP_AFTER = 5  # starts in a row that fail (or die on their own, young) before an instance is lost
_YOUNG_S = 5.0  # a process that dies idle before this age counts as a failed start
_BACKOFF_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class InstanceWatcher(Protocol):
    """Who serves with an instance: told when it cannot take work, can again, or never will."""

    def instance_down(self, runner: ProcessRunner) -> None:
        """The instance's process died; it is being started again."""

    def instance_up(self, runner: ProcessRunner) -> None:
        """The instance serves again."""

    def instance_lost(self, runner: ProcessRunner, reason: str) -> None:
        """The instance was given up: every start failed."""


class ProcessRunner:
    """A model instance in a process of its own, as the scheduler sees any instance: load, execute a list of
    requests, unload; plus `available`, false while its process is being started again."""

    def __init__(
        self, context: InstanceContext, calls: ServerCalls, loop: asyncio.AbstractEventLoop, supervisor: Supervisor
    ) -> None:
        self.context = context
        self._calls = calls
        self.name = context.instance_name
        self.restarts = 0
        self._loop = loop
        self._supervisor = supervisor
        self._backend = context.config.backend
        self._launch: Launch | None = None
        self._process: InstanceProcess | None = None
        self._watcher: InstanceWatcher | None = None
        self._state = "loading"  # loading, live, restarting, lost, stopped
        self._restarting: asyncio.Task[None] | None = None
        self._live_since = 0.0
        self._young_deaths = 0  # deaths in a row before _YOUNG_S, and failed starts
        self._failed_starts = 0
        self._lost_reason = ""

    @property
    def available(self) -> bool:
        """Whether the instance can take a batch now."""
        return self._state == "live"

    def watch(self, watcher: InstanceWatcher) -> None:
        """Tell `watcher` when the instance goes down, comes back or is lost; at once, if it already is."""
        self._watcher = watcher
        if self._state == "restarting":
            watcher.instance_down(self)
        elif self._state == "lost":
            watcher.instance_lost(self, self._lost_reason)

    async def load(self, backend: Any = None) -> None:
        """Start the process and initialize the instance; raises `ServerError` with the reason."""
        self._launch = await self._supervisor.launch(self.context)
        self._process = await self._start()
        self._state = "live"

    def execute(self, requests: Sequence[InferenceRequest], done: Done) -> None:
        """Run a batch in the process; `done(outcome, start_ns, end_ns)` is called on the loop."""
        process = self._process
        if process is None:
            error = internal(f"model instance '{self.name}' is not loaded")
            now = time.monotonic_ns()
            done([error] * len(requests), now, now)
            return
        process.execute(requests, done)

    async def unload(self) -> None:
        """Run finalize() in the process and let it exit; no more restarts."""
        self._state = "stopped"
        if self._restarting is not None:
            self._restarting.cancel()
        process, self._process = self._process, None
        if process is not None:
            await process.finalize()
        self._supervisor.forget(self)

    def stop(self) -> None:
        """End the process at once (its load failed, or the server is exiting)."""
        self._state = "stopped"
        if self._restarting is not None:
            self._restarting.cancel()
        if self._process is not None:
            self._process.kill()
        self._supervisor.forget(self)

    async def _start(self) -> InstanceProcess:
        assert self._launch is not None
        process = InstanceProcess(self.context, self._calls, self._launch, self._loop, self._died)
        self._supervisor.track(self, process)
        await process.start(self._backend)
        self._live_since = time.monotonic()
        return process

    def _died(self, death: str) -> None:
        if self._state != "live":
            return
        idle = death.endswith("while idle")
        young = time.monotonic() - self._live_since < _YOUNG_S
        if young:
            self._young_deaths += 1
            if idle:
                self._failed_starts += 1
        else:
            self._young_deaths = self._failed_starts = 0
        logger.error("%s; starting it again", death)
        self._state = "restarting"
        if self._watcher is not None:
            self._watcher.instance_down(self)
        self._restarting = self._loop.create_task(self._restart(death))

    async def _restart(self, death: str) -> None:
        reason = death
        while self._failed_starts < GIVE_UP_AFTER:
            await asyncio.sleep(_BACKOFF_S[min(self._young_deaths, len(_BACKOFF_S) - 1)])
            if self._state != "restarting":
                return
            self.restarts += 1
            try:
                process = await self._start()
            except ServerError as exc:
                reason = exc.message
                self._failed_starts += 1
                self._young_deaths += 1
                logger.error("starting model instance '%s' again failed: %s", self.name, reason)
                continue
            if self._state != "restarting":  # unloaded meanwhile
                await process.finalize()
                return
            self._process = process
            self._state = "live"
            logger.info("model instance '%s' serves again (pid %d, restart %d)", self.name, process.pid, self.restarts)
            if self._watcher is not None:
                self._watcher.instance_up(self)
            return
        self._state = "lost"
        reason = self._lost_reason = (
            f"model instance '{self.name}' was given up after {self._failed_starts} failed starts in a row: {reason}"
        )
        logger.error("%s", reason)
        if self._watcher is not None:
            self._watcher.instance_lost(self, reason)


class Supervisor:
    """Every instance process of the server: how each is launched (a model's environment prepared once), the
    auto-complete of models whose instances run in processes, and what is still running at exit."""

    def __init__(self, settings: ProcessSettings) -> None:
        self.settings = settings
        self._environments = EnvironmentBuilder(settings)
        self._processes: dict[ProcessRunner, InstanceProcess] = {}

    async def launch(self, context: InstanceContext) -> Launch:
        """How to start an instance of this model: its interpreter, environment and device."""
        return await asyncio.to_thread(self._environments.launch, context)

    def auto_complete(
        self,
        backend: str,
        raw: dict[str, Any],
        parameters: Mapping[str, str],
        model_dir: Path,
        version_dir: Path,
        default_max_batch_size: int,
    ) -> dict[str, Any]:
        """Run the backend's auto-complete in a throw-away process of the model's environment (blocking);
        `parameters` are the config's, as strings."""
        name = str(raw.get("name") or model_dir.name)
        launch = self._environments.launch_for_folder(parameters, name, model_dir, version_dir)
        return auto_complete_in_process(launch, backend, raw, model_dir, version_dir, default_max_batch_size)

    def track(self, runner: ProcessRunner, process: InstanceProcess) -> None:
        """Remember the process a runner started."""
        self._processes[runner] = process

    def forget(self, runner: ProcessRunner) -> None:
        """The runner's process is gone for good."""
        self._processes.pop(runner, None)

    def kill_all(self) -> None:
        """At exit: end whatever process is left (finalize() has had its chance)."""
        for process in list(self._processes.values()):
            process.kill()
        self._processes.clear()
