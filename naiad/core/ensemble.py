"""Ensembles (`platform: "ensemble"`): the step graph checked against the composing models when the ensemble loads,
and a scheduler that runs each request through its steps, starting every step as soon as its inputs exist.

Each step is an ordinary request to its composing model, so the composing models batch ensemble traffic with their
own, count it in their statistics, and report their own errors; the ensemble passes a failure on to the client
prefixed with `in ensemble '<name>', ` as Triton does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from naiad.core.stats import ModelStats
from naiad.domain.errors import ErrorCode, ServerError, internal, invalid
from naiad.domain.model_config import EnsembleStep, ModelConfig
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult, RequestedOutput, Tensor

ResponseDone = Callable[[InferenceResponse | ServerError], None]
Submit = Callable[[str, str, InferenceRequest, ResponseDone], None]
ResultDone = Callable[[InferenceResult | ServerError], None]


def check_steps(config: ModelConfig, composing: Mapping[str, ModelConfig]) -> None:
    """Triton's load-time checks of an ensemble against the configs of its (loaded) composing models."""
    name = config.name
    produced: dict[str, str] = {spec.name: spec.datatype for spec in config.inputs}
    used: set[str] = set()
    pending = list(config.ensemble_steps)
    while pending:  # walk the steps in an order where each one's inputs already exist
        ready = [step for step in pending if all(tensor in produced for tensor in step.input_map.values())]
        if not ready:
            break
        for step in ready:
            pending.remove(step)
            model = composing[step.model_name]
            _check_step(name, step, model, produced)
            used.update(step.input_map.values())
            outputs = {spec.name: spec.datatype for spec in model.outputs}
            for model_output, tensor in step.output_map.items():
                produced[tensor] = outputs[model_output]
    for spec in config.outputs:
        if spec.name not in produced:
            missing = next((t for step in pending for t in step.input_map.values() if t not in produced), None)
            detail = f": at least one of its depending tensors, '{missing}', is not connected" if missing else ""
            raise invalid(f"output '{spec.name}' for ensemble '{name}' is not written{detail}")
        if produced[spec.name] != spec.datatype:
            raise invalid(
                f"in ensemble {name}, ensemble tensor {spec.name}: inconsistent data type: TYPE_{spec.datatype} is "
                f"declared by the ensemble while TYPE_{produced[spec.name]} is inferred from its step"
            )
    for spec in config.inputs:
        if spec.name not in used:
            raise invalid(f"ensemble input '{spec.name}' for ensemble '{name}' is not used")
    for step in config.ensemble_steps:
        if config.max_batch_size and 0 < composing[step.model_name].max_batch_size < config.max_batch_size:
            raise invalid(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it contains model "
                f"{step.model_name} which only allows maximum batch size to be "
                f"{composing[step.model_name].max_batch_size}"
            )


def _check_step(name: str, step: EnsembleStep, model: ModelConfig, produced: Mapping[str, str]) -> None:
    inputs = {spec.name: spec for spec in model.inputs}
    for model_input, tensor in step.input_map.items():
        spec = inputs.get(model_input)
        if spec is None:
            raise invalid(
                f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing input {model_input} in "
                f"model {step.model_name}"
            )
        if produced[tensor] != spec.datatype:
            raise invalid(
                f"in ensemble {name}, ensemble tensor {tensor}: inconsistent data type: TYPE_{produced[tensor]} is "
                f"inferred upstream while TYPE_{spec.datatype} is expected by model {step.model_name}"
            )
    for spec in model.inputs:
        if spec.name not in step.input_map and not spec.optional:
            raise invalid(
                f"in ensemble {name}, input {spec.name} in model {step.model_name} is not mapped to any ensemble "
                "tensors"
            )
    outputs = {spec.name for spec in model.outputs}
    for model_output, tensor in step.output_map.items():
        if model_output not in outputs:
            raise invalid(
                f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing output {model_output} in "
                f"model {step.model_name}"
            )


def load_order(steps: Mapping[str, set[str]]) -> tuple[list[str], dict[str, str]]:
    """Ensembles (name -> the models their steps run) in an order where one made of other ensembles comes after
    them, and each ensemble on a cycle with the cycle written out ("a -> b -> a"); those are left out of the order."""
    ordered: list[str] = []
    visiting: list[str] = []
    cycles: dict[str, str] = {}

    def visit(name: str) -> None:
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            for member in cycle[:-1]:
                cycles[member] = " -> ".join(cycle)
            return
        if name in ordered:
            return
        visiting.append(name)
        for dependency in sorted(steps[name] & set(steps)):
            visit(dependency)
        visiting.pop()
        ordered.append(name)

    for name in sorted(steps):
        visit(name)
    return [name for name in ordered if name not in cycles], cycles


class EnsembleScheduler:
    """Runs each request of an ensemble through its steps on the loop, with the server's own `submit`."""

    def __init__(self, config: ModelConfig, stats: ModelStats, submit_step: Submit) -> None:
        self.config = config
        self.stats = stats
        self.submit_step = submit_step  # the server's `submit`, for each step's request
        self.running = 0
        self._settled: list[asyncio.Future[None]] = []

    @property
    def busy(self) -> bool:
        """Whether a request is still going through the steps."""
        return self.running > 0

    async def settle(self) -> None:
        """Wait until every request started so far has been answered."""
        if self.running:
            settled = asyncio.get_running_loop().create_future()
            self._settled.append(settled)
            await settled

    def finished_one(self) -> None:
        """Count one request as answered."""
        self.running -= 1
        if not self.running and self._settled:
            for settled in self._settled:
                if not settled.done():
                    settled.set_result(None)
            self._settled.clear()

    @property
    def queued(self) -> int:
        """Requests in progress through the steps (an ensemble has no queue of its own)."""
        return self.running

    def submit(self, request: InferenceRequest, batch_size: int, key: object, done: ResultDone) -> None:
        """Start the steps whose inputs the request holds; `done` gets the ensemble's outputs or the first error."""
        self.running += 1
        _Run(self, request, batch_size, done).advance()


class _Run:
    """One request's way through the steps."""

    def __init__(self, scheduler: EnsembleScheduler, request: InferenceRequest, batch: int, done: ResultDone) -> None:
        self._scheduler = scheduler
        self._request = request
        self._batch = batch
        self._done: ResultDone | None = done
        self._tensors: dict[str, Tensor] = {tensor.name: tensor for tensor in request.inputs}
        config = scheduler.config
        requested = {output.name for output in request.outputs} if request.outputs else None
        self._wanted = [spec.name for spec in config.outputs if requested is None or spec.name in requested]
        self._waiting = _needed_steps(config.ensemble_steps, self._wanted)
        self._in_flight = 0
        self._started = time.monotonic_ns()

    def advance(self) -> None:
        """Start every step whose inputs exist; finish when the outputs are all there or nothing can move."""
        if self._done is None:
            return
        ready = [s for s in self._waiting if all(t in self._tensors for t in s.input_map.values())]
        for step in ready:
            self._waiting.remove(step)
        # counted before any starts: a step that finishes at once must not find the run idle while its
        # siblings are still to be started
        self._in_flight += len(ready)
        for step in ready:
            self._start(step)
            if self._done is None:
                return
        config = self._scheduler.config
        if all(name in self._tensors for name in self._wanted):
            self._finish(InferenceResult(tuple(self._tensors[name] for name in self._wanted)))
        elif not self._in_flight:
            self._finish(
                ServerError(
                    ErrorCode.INTERNAL,
                    f"in ensemble '{config.name}', unexpected deadlock, at least one output is not set while no "
                    "more ensemble steps can be made",
                )
            )

    def _start(self, step: EnsembleStep) -> None:
        inputs = tuple(_renamed(self._tensors[tensor], model_input) for model_input, tensor in step.input_map.items())
        wanted = tuple(RequestedOutput(name) for name in step.output_map)
        request = InferenceRequest(inputs, wanted, self._request.id, self._request.parameters)
        version = str(step.model_version) if step.model_version > 0 else ""

        def step_done(outcome: InferenceResponse | ServerError) -> None:
            self._in_flight -= 1
            if isinstance(outcome, ServerError):
                self._fail(outcome)
                return
            produced = {tensor.name: tensor for tensor in outcome.outputs}
            for model_output, tensor in step.output_map.items():
                if model_output not in produced:
                    self._fail(internal(f"model '{step.model_name}' returned no output '{model_output}'"))
                    return
                self._tensors[tensor] = _renamed(produced[model_output], tensor)
            self.advance()

        try:
            self._scheduler.submit_step(step.model_name, version, request, step_done)
        except ServerError as exc:
            self._in_flight -= 1
            self._fail(exc)

    def _fail(self, error: ServerError) -> None:
        name = self._scheduler.config.name
        self._finish(ServerError(error.code, f"in ensemble '{name}', {error.message}"))

    def _finish(self, outcome: InferenceResult | ServerError) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        scheduler = self._scheduler
        scheduler.finished_one()
        if not isinstance(outcome, ServerError):
            elapsed = time.monotonic_ns() - self._started
            scheduler.stats.record_execution(max(1, self._batch), 1, 0, elapsed, 0)
        done(outcome)


def _needed_steps(steps: tuple[EnsembleStep, ...], wanted: list[str]) -> list[EnsembleStep]:
    """The steps the wanted outputs depend on, in config order: as Triton, branches nobody asked for are not run."""
    needed_tensors = set(wanted)
    needed: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, step in enumerate(steps):
            if index not in needed and needed_tensors & set(step.output_map.values()):
                needed.add(index)
                needed_tensors.update(step.input_map.values())
                changed = True
    return [step for index, step in enumerate(steps) if index in needed]


def _renamed(tensor: Tensor, name: str) -> Tensor:
    if tensor.name == name:
        return tensor
    return Tensor(name, tensor.datatype, tensor.shape, tensor.data, tensor.parameters)
