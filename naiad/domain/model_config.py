"""The model configuration the core reads, as frozen dataclasses (parsed from config.pbtxt by `naiad.config`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class VersionPolicyKind(enum.Enum):
    """Which version folders of a model are served."""

    LATEST = "latest"
    ALL = "all"
    SPECIFIC = "specific"


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """`version_policy`: the latest N, all, or specific versions."""

    kind: VersionPolicyKind = VersionPolicyKind.LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those found on disk, in ascending order."""
        ordered = sorted(available)
        if self.kind is VersionPolicyKind.ALL:
            return ordered
        if self.kind is VersionPolicyKind.SPECIFIC:
            return [v for v in ordered if v in self.versions]
        return ordered[-self.num_versions :] if self.num_versions > 0 else []


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One `input` or `output` of the config; `datatype` is the KServe name (`FP32`, `BYTES`)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    label_filename: str = ""


class TimeoutAction(enum.Enum):
    """What the dynamic batcher does with a request that waited past its timeout."""

    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """`default_queue_policy` of `dynamic_batching`."""

    max_queue_size: int = 0
    default_timeout_us: int = 0
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    allow_timeout_override: bool = False


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """`dynamic_batching`: how requests are merged into one execution."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    queue_policy: QueuePolicy = field(default_factory=QueuePolicy)


class InstanceKind(enum.Enum):
    """`instance_group.kind`."""

    AUTO = "KIND_AUTO"
    CPU = "KIND_CPU"
    GPU = "KIND_GPU"
    MODEL = "KIND_MODEL"


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """One `instance_group`: `count` instances of one kind (on each of `gpus` for KIND_GPU)."""

    name: str
    kind: InstanceKind
    count: int
    gpus: tuple[int, ...] = ()
    auto: bool = False  # KIND_AUTO placed on GPUs: a backend whose framework has no CUDA may run it on the CPU


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One `ensemble_scheduling.step`: a model, its version (-1 or 0: the one its version policy serves last) and
    its tensor maps (key: the model's tensor name, value: the ensemble's)."""

    model_name: str
    model_version: int
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A model's configuration; `raw` is the whole config as Triton's JSON, for `/config` and `args`."""

    name: str
    backend: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version_policy: VersionPolicy
    instance_groups: tuple[InstanceGroup, ...]
    dynamic_batching: DynamicBatching | None
    default_model_filename: str
    parameters: Mapping[str, str]
    raw: Mapping[str, Any]
    ensemble_steps: tuple[EnsembleStep, ...] = ()
