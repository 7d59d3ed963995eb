"""A model repository in a local folder: models are served from where they are, never copied."""

from __future__ import annotations

from pathlib import Path

from naiad.core.stores.base import Fingerprint, StoreError, relative_files


class LocalStore:
    """A repository folder on this machine."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.root = Path(uri)
        if not self.root.is_dir():
            raise StoreError(f"failed to stat model repository path '{uri}': not a directory")

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
