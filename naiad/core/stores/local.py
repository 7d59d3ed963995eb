"""A model repository in a local folder: models are served from where they are, never copied."""

from __future__ import annotations

from pathlib import Path

from naiad.core.stores.base import Fingerprint, StoreError, relative_files


def model_folder_evidence(folder: Path) -> str | None:
    """What shows that a folder given as a repository is a model folder (its config.pbtxt, or a digit-named folder
    holding a model file), or None."""
    if (folder / "config.pbtxt").is_file():
        return "config.pbtxt"
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name.isdigit() and any(entry.glob("model.*")):
            return f"version folder '{entry.name}'"
    return None


class LocalStore:
    """A repository folder on this machine."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.root = Path(uri)
        if not self.root.is_dir():
            raise StoreError(f"failed to stat model repository path '{uri}': not a directory")
        held = model_folder_evidence(self.root)
        if held is not None:
            raise StoreError(
                f"model repository '{uri}' is a model folder (it holds {held}), not a repository: point "
                f"--model-repository at the folder that holds it: {self.root.resolve().parent}"
            )

    @property
    def uri(self) -> str:
        """The folder as given."""
        return self._uri

    def models(self) -> list[str]:
        """The model folders (hidden ones skipped)."""
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            raise StoreError(f"failed to read model repository '{self._uri}': {exc.strerror}") from exc
        return [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]

    def fingerprint(self, model: str) -> Fingerprint:
        """Size and mtime of every file of the model's folder."""
        return relative_files(self.root / model)

    def fetch(self, model: str, fingerprint: Fingerprint) -> Path:
        """The model's own folder."""
        return (self.root / model).resolve()

    def release(self, folder: Path) -> None:
        """Nothing to clean up: the folder is the user's."""
