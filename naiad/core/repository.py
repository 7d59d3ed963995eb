"""Repository discovery: which model folders exist in which repositories, and their version folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model folder found in a repository; `duplicate_of` is set when another repository has it too."""

    name: str
    path: Path
    duplicate_of: Path | None = None

    @property
    def config_path(self) -> Path:
        """Where the model's config.pbtxt is (it may be absent)."""
        return self.path / "config.pbtxt"

    def versions(self) -> list[int]:
        """The version folders on disk: integer names not starting with 0, as Triton reads them."""
        found: list[int] = []
        for entry in self.path.iterdir():
            name = entry.name
            if entry.is_dir() and name.isdigit() and not name.startswith("0"):
                found.append(int(name))
        return sorted(found)


class RepositoryError(Exception):
    """A repository path that does not exist or is not a folder."""


def discover(repositories: tuple[str, ...]) -> dict[str, ModelSource]:
    """Every model folder in the repositories, by name; a name found twice is marked as a duplicate."""
    models: dict[str, ModelSource] = {}
    for repository in repositories:
        root = Path(repository)
        if not root.is_dir():
            raise RepositoryError(f"failed to stat model repository path '{repository}': not a directory")
        for entry in sorted(root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name in models:
                first = models[entry.name]
                models[entry.name] = ModelSource(first.name, first.path, duplicate_of=entry)
                continue
            models[entry.name] = ModelSource(entry.name, entry.resolve())
    return models
