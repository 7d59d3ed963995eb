"""A model whose files came inside a load request (Triton's `file:` parameters), written to a private folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from naiad.core.stores.base import Fingerprint, relative_files


class UnsafePathError(ValueError):
    """A `file:` path that could land outside the model's folder."""


def checked_path(path: str) -> PurePosixPath:
    """A `file:` path as a relative path inside the model folder; raises `UnsafePathError` for anything else."""
    if not path or "\\" in path or "\0" in path or path.startswith("/"):
        raise UnsafePathError(path)
    relative = PurePosixPath(path)
    if any(part in ("", ".", "..") for part in path.split("/")) or relative.is_absolute():
        raise UnsafePathError(path)
    return relative


class InlineStore:
    """One model folder written from a load request's files, under the server's cache; deleted when released."""

    def __init__(self, name: str, files: Mapping[str, bytes], cache: Path) -> None:
        checked = {checked_path(path): content for path, content in files.items()}
        cache.mkdir(parents=True, exist_ok=True)
        self._root = Path(tempfile.mkdtemp(prefix=f"inline-{name}-", dir=cache))
        self._name = name
        folder = self._root / name
        try:
            folder.mkdir()
            for relative, content in checked.items():
                target = folder.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("xb") as file:  # a fresh folder: nothing to follow or overwrite
                    file.write(content)
        except BaseException:  # `a` and `a/b` both given, a name too long: nothing is left behind
            shutil.rmtree(self._root, ignore_errors=True)
            raise

    @property
    def uri(self) -> str:
        """Where the files were written."""
        return f"the files of the load request for '{self._name}'"

    def models(self) -> list[str]:
        """The one model."""
        return [self._name]

    def fingerprint(self, model: str) -> Fingerprint:
        """Size and mtime of each written file."""
        return relative_files(self._root / model)

    def fetch(self, model: str, fingerprint: Fingerprint) -> Path:
        """The folder the files were written to."""
        return self._root / model

    def release(self, folder: Path) -> None:
        """Delete the written files."""
        if folder.parent == self._root:
            shutil.rmtree(self._root, ignore_errors=True)
