"""The contract every backend implements, in Triton's shape: load an instance, execute a list of
requests into one result (or error) per request, unload."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from naiad.domain.errors import ServerError
from naiad.domain.model_config import ModelConfig
from naiad.domain.tensors import InferenceRequest, InferenceResponse, InferenceResult


class ModelCaller(Protocol):
    """How a backend calls another model of the same server (Triton's BLS)."""

    def infer(self, model_name: str, model_version: str, request: InferenceRequest) -> InferenceResponse:
        """Run a request from an instance's thread and wait for its response."""

    def infer_async(
        self, model_name: str, model_version: str, request: InferenceRequest
    ) -> Awaitable[InferenceResponse]:
        """Start a request from an event loop running in an instance's thread; await the result there."""

    def load(self, model_name: str, config: str, files: Mapping[str, bytes]) -> None:
        """Load or reload a model (explicit mode), from an instance's thread; raises `ServerError`."""

    def unload(self, model_name: str, unload_dependents: bool) -> None:
        """Unload a model (explicit mode), from an instance's thread; raises `ServerError`."""

    def is_ready(self, model_name: str, model_version: str) -> bool:
        """Whether a model (version) can serve requests now."""


@dataclass(frozen=True, slots=True)
class InstanceContext:
    """What one model instance is told when it loads."""

    config: ModelConfig
    version: int
    model_dir: Path
    version_dir: Path
    instance_name: str
    kind: str  # CPU, GPU, or AUTO: a KIND_AUTO group placed on GPU `device_id`, which may fall back to the CPU
    device_id: int
    caller: ModelCaller


class ModelInstance(Protocol):
    """One loaded instance of a model; each runs on a thread or in a process of its own, one `execute` at a time."""

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | ServerError]:
        """One result or error per request, in order."""

    def unload(self) -> None:
        """Release what `load` took (Triton's `finalize`)."""


class Backend(Protocol):
    """A kind of model (python, pytorch, onnxruntime): fills in configs and loads instances."""

    def auto_complete(
        self, raw: dict[str, Any], model_dir: Path, version_dir: Path, default_max_batch_size: int
    ) -> dict[str, Any]:
        """The config (Triton's JSON form) with what the model itself can tell filled in; `default_max_batch_size`
        is Triton's `--backend-config=default-max-batch-size`, for a model found able to batch."""

    def load(self, context: InstanceContext) -> ModelInstance:
        """Load one instance; raise `ServerError` with the reason when it cannot load."""

    def runs_in_processes(self, parameters: Mapping[str, str], model_name: str) -> bool:
        """Whether a model's instances (and its auto-complete) each run in a process of their own, given the
        config's `parameters`; raise `ServerError` for parameters that cannot be honoured."""
