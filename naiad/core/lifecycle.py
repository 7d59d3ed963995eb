"""`ModelManager`: loads the repository's models, tracks each version's state and reason, finds the version a
request is for, and unloads everything at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from naiad.backends.base import ModelCaller
from naiad.backends.registry import get_backend
from naiad.config import model_config, pbtxt
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

    async def load_all(self, caller: ModelCaller) -> None:
        """Load every model, concurrently; failures are recorded, not raised."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._load(record, caller, loop) for record in self._records.values()))

    async def _load(self, record: ModelRecord, caller: ModelCaller, loop: asyncio.AbstractEventLoop) -> None:
        source = record.source
        try:
            if source.duplicate_of is not None:
                raise invalid("model appears in two or more repositories")
            on_disk = source.versions()
            raw = pbtxt.read_file(source.config_path) if source.config_path.is_file() else {}
            name = model_config.backend_name(raw) or _backend_from_files(source, on_disk)
            backend = get_backend(name, source.name)
            if name and not raw.get("backend") and not raw.get("platform"):
                raw["backend"] = name
            if self._auto_complete and on_disk:
                raw = backend.auto_complete(
                    raw, source.path, source.path / str(on_disk[-1]), self._default_max_batch_size(name)
                )
            config = model_config.build(raw, source.name)
            selected = config.version_policy.select(on_disk)
            if not selected:
                raise invalid(
                    f"at least one version must be available under the version policy of model '{source.name}'"
                )
        except ServerError as exc:
            record.reason = exc.message
            logger.error("failed to load model '%s': %s", source.name, exc.message)
            return
        record.config = config
        for number in selected:
            record.versions[number] = ModelVersion(source, config, number, ModelStats())
        await asyncio.gather(*(v.load(backend, caller, loop) for v in record.versions.values()))
        for version in record.versions.values():
            if version.state is ModelState.READY:
                logger.info("successfully loaded '%s' version %d", source.name, version.version)
            else:
                logger.error("failed to load '%s' version %d: %s", source.name, version.version, version.reason)
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
