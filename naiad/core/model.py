"""A loaded model version: its config, instances, scheduler, request checker, output shaper and statistics."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from naiad.backends.base import Backend, InstanceContext, ModelCaller
from naiad.core.ensemble import EnsembleScheduler
from naiad.core.instances import Placement, Runner
from naiad.core.outputs import OutputShaper
from naiad.core.scheduler import Scheduler
from naiad.core.stats import ModelStats
from naiad.core.validation import RequestChecker
from naiad.domain.errors import ServerError, invalid, unavailable
from naiad.domain.model_config import ModelConfig

logger = logging.getLogger("naiad.core")


class ModelState(enum.Enum):
    """Triton's model states as the repository index reports them."""

    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True, slots=True)
class Serving:
    """What a READY version serves requests with."""

    checker: RequestChecker
    shaper: OutputShaper
    scheduler: Scheduler | EnsembleScheduler


@dataclass(slots=True)
class ModelVersion:
    """One version of a model, from loading to unloading; `folder` is the model folder it was loaded from."""

    folder: Path
    config: ModelConfig
    version: int
    stats: ModelStats
    state: ModelState = ModelState.LOADING
    reason: str = ""
    runners: tuple[Runner, ...] = ()
    load_seconds: float = 0.0  # how long the last successful load took
    on_lost: Callable[[ModelVersion], None] | None = None  # told when every instance is lost for good
    _serving: Serving | None = None
    _unloading: asyncio.Task[None] | None = None
    _dropping: set[asyncio.Task[None]] = field(default_factory=set)  # instances an update dropped, unloading

    @property
    def name(self) -> str:
        """The model's name."""
        return self.config.name

    @property
    def label(self) -> str:
        """The version as responses name it."""
        return str(self.version)

    @property
    def serving(self) -> Serving:
        """The checker, shaper and scheduler of a READY version."""
        serving = self._serving
        if serving is None:
            raise unavailable(f"Request for unknown model: '{self.name}' version {self.version} is not at ready state")
        return serving

    def instance_contexts(self, config: ModelConfig, caller: ModelCaller) -> list[InstanceContext]:
        """The instances `config` asks for: `count` on each GPU of a KIND_GPU group, named alike on each (as Triton
        names them)."""
        return [
            InstanceContext(
                config=config,
                version=self.version,
                model_dir=self.folder,
                version_dir=self.folder / str(self.version),
                instance_name=f"{group.name}_{index}",
                kind="AUTO" if group.auto else group.kind.value.removeprefix("KIND_"),
                device_id=device_id,
                caller=caller,
            )
            for group in config.instance_groups
            for device_id in group.gpus or (0,)
            for index in range(group.count)
        ]

    @property
    def live(self) -> bool:
        """Whether it can serve now: READY, with an instance that is not being started again (an ensemble's
        composing models answer for themselves)."""
        if self.state is not ModelState.READY:
            return False
        serving = self._serving
        if serving is None or not isinstance(serving.scheduler, Scheduler):
            return serving is not None
        return any(runner.available for runner in self.runners)

    @property
    def live_instances(self) -> int | None:
        """How many instances can execute now (None for an ensemble, which has none of its own)."""
        serving = self._serving
        if serving is not None and not isinstance(serving.scheduler, Scheduler):
            return None
        return sum(1 for runner in self.runners if runner.available)

    async def load(self, backend: Backend, placement: Placement) -> None:
        """Load every instance; on failure the version is UNAVAILABLE with the reason, and nothing is left running."""
        started = time.monotonic()
        config = self.config
        runners = [placement.runner(context, backend) for context in self.instance_contexts(config, placement.caller)]
        failure = await _load_together(runners, backend)
        try:
            if failure is not None:
                raise failure
            checker = RequestChecker(config)
            shaper = OutputShaper(config, self.folder)
        except BaseException as exc:
            if failure is None:  # every instance loaded, but the config cannot serve: unload them again
                await asyncio.gather(*(runner.unload() for runner in runners))
            self.state = ModelState.UNAVAILABLE
            self.reason = _reason(exc, self.name, self.version)
            return
        self.runners = tuple(runners)
        scheduler = Scheduler(runners, self.stats, config.max_batch_size, config.dynamic_batching, placement.loop)
        self._serving = Serving(checker, shaper, scheduler)
        self.load_seconds = time.monotonic() - started
        self.state = ModelState.READY
        for runner in runners:  # an instance that died since it loaded says so now
            runner.watch(self)

    async def start_instances(self, config: ModelConfig, backend: Backend, placement: Placement) -> InstanceChange:
        """Load the instances `config` has and this READY version lacks (`config` differs in its instance groups
        only); raises `ServerError` with the reason when one fails, with none of them left running."""
        have = {_identity(runner.context) for runner in self.runners}
        wanted = self.instance_contexts(config, placement.caller)
        added = [placement.runner(context, backend) for context in wanted if _identity(context) not in have]
        failure = await _load_together(added, backend)
        if failure is not None:
            raise invalid(_reason(failure, self.name, self.version))
        keep = {_identity(context) for context in wanted}
        dropped = [runner for runner in self.runners if _identity(runner.context) not in keep]
        return InstanceChange(config, tuple(added), tuple(dropped))

    def change_instances(self, change: InstanceChange) -> asyncio.Task[None]:
        """Serve with the instances of `change` from now on. The dropped ones get no more requests; the task
        returned lets them finish what they execute and unloads them (the version's own unload waits for it)."""
        scheduler = self.serving.scheduler
        assert isinstance(scheduler, Scheduler)
        scheduler.add_instances(change.added)
        self.runners = tuple(r for r in self.runners if r not in change.dropped) + change.added
        self.config = change.config
        task = asyncio.get_running_loop().create_task(
            _unload_when_idle(scheduler.remove_instances(change.dropped), change.dropped)
        )
        for runner in change.added:  # an instance that died since it loaded says so now
            runner.watch(self)
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)
        return task

    # What the instances tell (naiad.processes.supervisor.InstanceWatcher)

    def instance_down(self, runner: Runner) -> None:
        """An instance's process died: no work for it until it is back."""
        self.stats.restarts += 1
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.instance_down(runner)

    def instance_up(self, runner: Runner) -> None:
        """An instance serves again."""
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.instance_up(runner)

    def instance_lost(self, runner: Runner, reason: str) -> None:
        """An instance was given up; with none left, the version is UNAVAILABLE and what it queued fails."""
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.instance_gone(runner)
        self.runners = tuple(r for r in self.runners if r is not runner)
        if self.runners:
            return
        if scheduler is not None:  # also while unloading, which waits for the queue
            scheduler.fail_queued(unavailable(f"model '{self.name}' version {self.version} is unavailable: {reason}"))
        if self.state is not ModelState.READY:
            return
        self.state = ModelState.UNAVAILABLE
        self.reason = reason
        self._serving = None
        if self.on_lost is not None:
            self.on_lost(self)

    def _scheduler(self) -> Scheduler | None:
        serving = self._serving
        return serving.scheduler if serving is not None and isinstance(serving.scheduler, Scheduler) else None

    def serve(self, scheduler: EnsembleScheduler) -> None:
        """Serve with a scheduler that needs no instances (an ensemble's)."""
        self._serving = Serving(RequestChecker(self.config), OutputShaper(self.config, self.folder), scheduler)
        self.state = ModelState.READY

    async def unload(self, settle_timeout: float | None = None) -> None:
        """Stop taking requests, let those already queued or executing finish (for up to `settle_timeout` seconds:
        at exit), then finalize every instance. Once only, however many ask; a caller that stops waiting does not
        stop it."""
        if self._unloading is None:
            self._unloading = asyncio.get_running_loop().create_task(self._unload(settle_timeout))
        await asyncio.shield(self._unloading)

    async def _unload(self, settle_timeout: float | None) -> None:
        self.state = ModelState.UNLOADING
        if self._serving is not None:
            settling = asyncio.ensure_future(self._serving.scheduler.settle())
            done, _ = await asyncio.wait({settling}, timeout=settle_timeout)
            if not done:
                settling.cancel()
                logger.warning(
                    "model '%s' version %d still executes requests after the exit timeout; unloading it anyway",
                    self.name,
                    self.version,
                )
        await asyncio.gather(*(runner.unload() for runner in self.runners), *self._dropping)
        self.runners = ()
        self._serving = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """A version's new config and the instances it adds (loaded, not yet serving) and drops."""

    config: ModelConfig
    added: tuple[Runner, ...]
    dropped: tuple[Runner, ...]


async def _load_together(runners: list[Runner], backend: Backend) -> BaseException | None:
    """Load every instance at once; when one fails, its thread ends, the others unload, and its error is returned."""
    outcomes = await asyncio.gather(*(runner.load(backend) for runner in runners), return_exceptions=True)
    failure = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
    if failure is not None:
        for runner, outcome in zip(runners, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                runner.stop()
            else:
                await runner.unload()
    return failure


async def _unload_when_idle(idle: Awaitable[object], runners: tuple[Runner, ...]) -> None:
    await idle
    await asyncio.gather(*(runner.unload() for runner in runners))


def _identity(context: InstanceContext) -> tuple[str, str, int]:
    """What an instance is, for an update: its name, kind and device."""
    return context.instance_name, context.kind, context.device_id


def _reason(exc: BaseException, name: str, version: int) -> str:
    if isinstance(exc, ServerError):
        return exc.message
    return f"failed to load model '{name}' version {version}: {type(exc).__name__}: {exc}"


__all__ = ["InstanceChange", "ModelState", "ModelVersion"]
