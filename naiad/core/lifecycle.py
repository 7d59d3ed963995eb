"""`ModelManager`: loads the repository's models, tracks each version's state and reason, finds the version a
request is for, and unloads everything at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from naiad.backends.base import Backend, ModelCaller
from naiad.backends.registry import get_backend
from naiad.config import model_config, pbtxt
from naiad.config.devices import visible_gpus
from naiad.core.ensemble import EnsembleScheduler, Submit, check_steps
from naiad.core.model import ModelState, ModelVersion
from naiad.core.repository import ModelSource
from naiad.core.stats import ModelStats
from naiad.domain.errors import ServerError, invalid, not_found, unavailable
from naiad.domain.model_config import ModelConfig

logger = logging.getLogger("naiad.core")

# Which backend a model folder without a config.pbtxt is for, from the file in its version folder.
_FILE_BACKENDS = (("model.py", "python"), ("model.pt", "pytorch"), ("model.onnx", "onnxruntime"))


@dataclass(slots=True)
class ModelRecord:
    """A model folder and what became of it: its versions, or the reason it has none."""

    source: ModelSource
    config: ModelConfig | None = None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    reason: str = ""
    latest: ModelVersion | None = None

    def refresh_latest(self) -> None:
        """Remember the highest READY version, the one a request without a version goes to."""
        ready = [v for v in self.versions.values() if v.state is ModelState.READY]
        self.latest = max(ready, key=lambda v: v.version) if ready else None


class ModelManager:
    """Every model of the repositories and the state of each version."""

    def __init__(
        self,
        sources: dict[str, ModelSource],
        auto_complete: bool,
        default_max_batch_size: Callable[[str], int] = lambda backend: 4,
    ) -> None:
        self._records = {name: ModelRecord(source) for name, source in sources.items()}
        self._auto_complete = auto_complete
        self._default_max_batch_size = default_max_batch_size
        self._gpus = visible_gpus()

    async def load_all(self, caller: ModelCaller, submit: Submit) -> None:
        """Load every model, concurrently, then the ensembles over them; failures are recorded, not raised."""
        loop = asyncio.get_running_loop()
        prepared = {name: p for name, record in self._records.items() if (p := self._prepare(record)) is not None}
        await asyncio.gather(
            *(
                self._load(self._records[name], backend, selected, caller, loop)
                for name, (backend, selected) in prepared.items()
                if backend is not None
            )
        )
        ensembles = {name: selected for name, (backend, selected) in prepared.items() if backend is None}
        ordered = _ensemble_order(list(ensembles), self._records)
        for name in ensembles:
            if name not in ordered:
                logger.error("failed to load model '%s': %s", name, self._records[name].reason)
        for name in ordered:
            self._load_ensemble(self._records[name], ensembles[name], submit)

    def _prepare(self, record: ModelRecord) -> tuple[Backend | None, list[int]] | None:
        """The model's config, backend (None for an ensemble) and versions to load; None, with the reason
        recorded, when the model cannot load."""
        source = record.source
        try:
            if source.duplicate_of is not None:
                raise invalid("model appears in two or more repositories")
            on_disk = source.versions()
            raw = pbtxt.read_file(source.config_path) if source.config_path.is_file() else {}
            name = model_config.backend_name(raw) or _backend_from_files(source, on_disk)
            backend = None if name == "ensemble" else get_backend(name, source.name)
            if backend is not None and not raw.get("backend") and not raw.get("platform"):
                raw["backend"] = name
            if backend is not None and self._auto_complete and on_disk:
                raw = backend.auto_complete(
                    raw, source.path, source.path / str(on_disk[-1]), self._default_max_batch_size(name)
                )
            config = model_config.build(raw, source.name, self._gpus)
            selected = config.version_policy.select(on_disk)
            if not selected:
                raise invalid(
                    f"at least one version must be available under the version policy of model '{source.name}'"
                )
        except ServerError as exc:
            record.reason = exc.message
            logger.error("failed to load model '%s': %s", source.name, exc.message)
            return None
        record.config = config
        return backend, selected

    async def _load(
        self,
        record: ModelRecord,
        backend: Backend,
        selected: list[int],
        caller: ModelCaller,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        source, config = record.source, record.config
        assert config is not None
        for number in selected:
            record.versions[number] = ModelVersion(source, config, number, ModelStats())
        await asyncio.gather(*(v.load(backend, caller, loop) for v in record.versions.values()))
        self._log_versions(record)

    def _load_ensemble(self, record: ModelRecord, selected: list[int], submit: Submit) -> None:
        """Check the ensemble against its loaded composing models and serve every selected version with it."""
        source, config = record.source, record.config
        assert config is not None
        try:
            composing = {
                step.model_name: self._composing(config.name, step.model_name, step.model_version)
                for step in config.ensemble_steps
            }
            check_steps(config, composing)
        except ServerError as exc:
            record.reason = exc.message
            logger.error("failed to load model '%s': %s", source.name, exc.message)
            return
        for number in selected:
            version = ModelVersion(source, config, number, ModelStats())
            version.serve(EnsembleScheduler(config, version.stats, submit))
            record.versions[number] = version
        self._log_versions(record)

    def _composing(self, ensemble: str, name: str, version: int) -> ModelConfig:
        record = self._records.get(name)
        if record is None:
            raise invalid(f"ensemble {ensemble} contains models that are not available or ambiguous: {name}")
        ready = [v for v in record.versions.values() if v.state is ModelState.READY]
        if version > 0 and not any(v.version == version for v in ready):
            raise invalid(f"ensemble '{ensemble}' depends on '{name}' whose required version {version} is not loaded")
        if not ready:
            why = record.reason or next((v.reason for v in record.versions.values() if v.reason), "")
            failed = f" Model '{name}' loading failed with error: {why}" if why else ""
            raise invalid(f"ensemble '{ensemble}' depends on '{name}' which has no loaded version.{failed}")
        return ready[-1].config

    def _log_versions(self, record: ModelRecord) -> None:
        for version in record.versions.values():
            if version.state is ModelState.READY:
                logger.info("successfully loaded '%s' version %d", record.source.name, version.version)
            else:
                logger.error("failed to load '%s' version %d: %s", record.source.name, version.version, version.reason)
        record.refresh_latest()

    def failures(self) -> list[tuple[str, str]]:
        """(what, reason) for every model or version that failed to load: what is "'m'" or "'m' version 2"."""
        failed: list[tuple[str, str]] = []
        for name, record in sorted(self._records.items()):
            if record.reason:
                failed.append((f"'{name}'", record.reason))
            failed.extend(
                (f"'{name}' version {v.version}", v.reason)
                for v in record.versions.values()
                if v.state is not ModelState.READY
            )
        return failed

    def all_ready(self) -> bool:
        """True when every model has every selected version READY."""
        return not self.failures()

    def has(self, name: str) -> bool:
        """Whether the repository has a model of this name."""
        return name in self._records

    def get(self, name: str, version: str) -> ModelVersion:
        """The version a request names ("" for the highest ready one), or the `ServerError` Triton answers."""
        record = self._records.get(name)
        if record is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        if not version:
            latest = record.latest
            if latest is None:
                raise not_found(f"Request for unknown model: '{name}' has no available versions")
            return latest
        number = parse_version(version)
        found = record.versions.get(number)
        if found is None:
            raise not_found(f"Request for unknown model: '{name}' version {number} is not found")
        if found.state is not ModelState.READY:
            raise unavailable(f"Request for unknown model: '{name}' version {number} is not at ready state")
        return found

    def config(self, name: str, version: str) -> ModelConfig:
        """The config of a model (of the named version when one is given)."""
        if version:
            return self.get(name, version).config
        record = self._records.get(name)
        if record is None or record.config is None:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        return record.config

    def versions(self, name: str) -> list[ModelVersion]:
        """The loaded versions of a model (all of them when `name` is empty), ordered by name and version."""
        if name and name not in self._records:
            raise not_found(f"Request for unknown model: '{name}' is not found")
        names = [name] if name else sorted(self._records)
        return [
            self._records[n].versions[v]
            for n in names
            for v in sorted(self._records[n].versions)
            if self._records[n].versions[v].state is ModelState.READY
        ]

    def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """Triton's repository index: one entry per model version, with state and reason."""
        entries: list[dict[str, Any]] = []
        for name, record in sorted(self._records.items()):
            if not record.versions:
                if not ready_only:
                    entry: dict[str, Any] = {"name": name}
                    if record.reason:
                        entry.update(state=ModelState.UNAVAILABLE.value, reason=record.reason)
                    entries.append(entry)
                continue
            for number, version in sorted(record.versions.items()):
                if ready_only and version.state is not ModelState.READY:
                    continue
                entry = {"name": name, "version": str(number), "state": version.state.value}
                if version.reason:
                    entry["reason"] = version.reason
                entries.append(entry)
        return entries

    async def unload_all(self) -> None:
        """Unload every loaded version (Triton's `finalize` on each instance)."""
        loaded = [
            v for record in self._records.values() for v in record.versions.values() if v.state is ModelState.READY
        ]
        for record in self._records.values():
            record.latest = None
        await asyncio.gather(*(version.unload() for version in loaded))


def parse_version(text: str) -> int:
    """A version string from a URL or request as an integer > 0."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise invalid(
        f"failed to get model version from specified version string '{text}' (details: expected integral "
        "value greater than 0), version should be an integral value > 0"
    )


def _backend_from_files(source: ModelSource, versions: list[int]) -> str:
    for version in reversed(versions):
        for filename, backend in _FILE_BACKENDS:
            if (source.path / str(version) / filename).is_file():
                return backend
    return ""


def _ensemble_order(names: list[str], records: Mapping[str, ModelRecord]) -> list[str]:
    """Ensembles ordered so that one made of other ensembles comes after them; each ensemble on a cycle gets the
    cycle as its reason (and those built on it fail for want of a loaded version)."""
    steps: dict[str, set[str]] = {}
    for name in names:
        config = records[name].config
        steps[name] = {step.model_name for step in config.ensemble_steps} if config is not None else set()
    ordered: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            for member in cycle[:-1]:
                records[member].reason = f"circular dependency between ensembles: {' -> '.join(cycle)}"
            return
        if name in ordered:
            return
        visiting.append(name)
        for dependency in sorted(steps[name] & set(steps)):
            visit(dependency)
        visiting.pop()
        ordered.append(name)

    for name in sorted(names):
        visit(name)
    return [name for name in ordered if not records[name].reason]
