"""Reading a fetched model folder into what loading it needs: the config (with auto-complete and a load request's
override), the backend, and the versions the version policy selects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naiad.backends.base import Backend
from naiad.backends.registry import get_backend
from naiad.config import model_config, pbtxt
from naiad.core.stores.base import Fingerprint, Store, versions_on_disk
from naiad.domain.errors import invalid
from naiad.domain.model_config import ModelConfig
from naiad.processes.supervisor import Supervisor

# Which backend a model folder without a config.pbtxt is for, from the file in its version folder.
_FILE_BACKENDS = (("model.py", "python"), ("model.pt", "pytorch"), ("model.onnx", "onnxruntime"))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A model folder ready to load: `backend` is None for an ensemble."""

    config: ModelConfig
    backend: Backend | None
    selected: tuple[int, ...]
    folder: Path
    fingerprint: Fingerprint
    store: Store | None = None  # where `folder` came from, which deletes it once unused


@dataclass(frozen=True, slots=True)
class Preparer:
    """The server-wide settings that shape a model's config."""

    auto_complete: bool
    default_max_batch_size: Callable[[str], int]
    gpus: tuple[int, ...]
    supervisor: Supervisor  # runs the auto-complete of models whose instances run in processes of their own

    def prepare(
        self, name: str, folder: Path, fingerprint: Fingerprint, override: Mapping[str, Any] | None
    ) -> Prepared:
        """The model's config, backend and versions; raises `ServerError` with the reason it cannot load.

        `override` is a load request's `config` (Triton's JSON form): it replaces config.pbtxt, and auto-complete
        fills it in the same way."""
        on_disk = versions_on_disk(fingerprint)
        config_path = folder / "config.pbtxt"
        raw = dict(override) if override is not None else _read_config(config_path)
        model_config.check_file_names(raw, f"model '{name}'")
        backend_name = model_config.backend_name(raw) or _backend_from_files(folder, on_disk)
        backend = None if backend_name == "ensemble" else get_backend(backend_name, name)
        if backend is not None and not raw.get("backend") and not raw.get("platform"):
            raw["backend"] = backend_name
        if backend is not None and self.auto_complete and on_disk:
            version_dir = folder / str(on_disk[-1])
            max_batch_size = self.default_max_batch_size(backend_name)
            parameters = model_config.parameter_values(raw)
            if backend.runs_in_processes(parameters, name):
                raw = self.supervisor.auto_complete(backend_name, raw, parameters, folder, version_dir, max_batch_size)
            else:
                raw = backend.auto_complete(raw, folder, version_dir, max_batch_size)
        config = model_config.build(raw, name, self.gpus)
        selected = config.version_policy.select(on_disk)
        if not selected:
            raise invalid(f"at least one version must be available under the version policy of model '{name}'")
        return Prepared(config, backend, tuple(selected), folder, fingerprint)


def _read_config(path: Path) -> dict[str, Any]:
    return pbtxt.read_file(path) if path.is_file() else {}


def _backend_from_files(folder: Path, versions: list[int]) -> str:
    for version in reversed(versions):
        for filename, backend in _FILE_BACKENDS:
            if (folder / str(version) / filename).is_file():
                return backend
    return ""
