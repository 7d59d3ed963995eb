"""A loaded model version: its config, instances, scheduler, request checker, output shaper and statistics."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from pathlib import Path

from naiad.backends.base import Backend, InstanceContext, ModelCaller
from naiad.core.ensemble import EnsembleScheduler
from naiad.core.instances import InstanceRunner
from naiad.core.outputs import OutputShaper
from naiad.core.scheduler import Scheduler
from naiad.core.stats import ModelStats
from naiad.core.validation import RequestChecker
from naiad.domain.errors import ServerError, unavailable
from naiad.domain.model_config import ModelConfig


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
    runners: tuple[InstanceRunner, ...] = ()
    load_seconds: float = 0.0  # how long the last successful load took
    _serving: Serving | None = None
    _unloading: asyncio.Task[None] | None = None

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

    async def load(self, backend: Backend, caller: ModelCaller, loop: asyncio.AbstractEventLoop) -> None:
        """Load every instance; on failure the version is UNAVAILABLE with the reason, and nothing is left running."""
        started = time.monotonic()
        config = self.config
        version_dir = self.folder / str(self.version)
        runners: list[InstanceRunner] = []
        for group in config.instance_groups:
            # `count` instances on each GPU of a KIND_GPU group, named alike on each (as Triton names them)
            for device_id in group.gpus or (0,):
                for index in range(group.count):
                    context = InstanceContext(
                        config=config,
                        version=self.version,
                        model_dir=self.folder,
                        version_dir=version_dir,
                        instance_name=f"{group.name}_{index}",
                        kind="AUTO" if group.auto else group.kind.value.removeprefix("KIND_"),
                        device_id=device_id,
                        caller=caller,
                    )
                    runners.append(InstanceRunner(context, loop))
        outcomes = await asyncio.gather(*(runner.load(backend) for runner in runners), return_exceptions=True)
        failure = next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None)
        try:
            if failure is not None:
                raise failure
            checker = RequestChecker(config)
            shaper = OutputShaper(config, self.folder)
        except BaseException as exc:
            for runner, outcome in zip(runners, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    runner.stop()
                else:
                    await runner.unload()
            self.state = ModelState.UNAVAILABLE
            self.reason = _reason(exc, self.name, self.version)
            return
        self.runners = tuple(runners)
        scheduler = Scheduler(runners, self.stats, config.max_batch_size, config.dynamic_batching, loop)
        self._serving = Serving(checker, shaper, scheduler)
        self.load_seconds = time.monotonic() - started
        self.state = ModelState.READY

    def serve(self, scheduler: EnsembleScheduler) -> None:
        """Serve with a scheduler that needs no instances (an ensemble's)."""
        self._serving = Serving(RequestChecker(self.config), OutputShaper(self.config, self.folder), scheduler)
        self.state = ModelState.READY

    async def unload(self) -> None:
        """Stop taking requests, let those already queued or executing finish, then finalize every instance. Once
        only, however many ask; a caller that stops waiting does not stop it."""
        if self._unloading is None:
            self._unloading = asyncio.get_running_loop().create_task(self._unload())
        await asyncio.shield(self._unloading)

    async def _unload(self) -> None:
        self.state = ModelState.UNLOADING
        if self._serving is not None:
            await self._serving.scheduler.settle()
        await asyncio.gather(*(runner.unload() for runner in self.runners))
        self.runners = ()
        self._serving = None
        self.state = ModelState.UNAVAILABLE
        self.reason = "unloaded"


def _reason(exc: BaseException, name: str, version: int) -> str:
    if isinstance(exc, ServerError):
        return exc.message
    return f"failed to load model '{name}' version {version}: {type(exc).__name__}: {exc}"


__all__ = ["ModelState", "ModelVersion"]
