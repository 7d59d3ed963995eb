"""The contract every repository store keeps: list the model folders, fingerprint one, fetch it to a local folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

# A model folder's content: each file's path relative to the folder ("config.pbtxt", "1/model.py") and a stamp
# that changes when the file does (size and mtime on disk, size and ETag in an object store).
Fingerprint = Mapping[str, str]


class StoreError(Exception):
    """A repository that cannot be read: the message names the URI and the cause."""


class Store(Protocol):
    """One model repository. Every method blocks; the manager calls them off the event loop."""

    @property
    def uri(self) -> str:
        """The repository as the user gave it."""
        ...

    def models(self) -> list[str]:
        """The names of the model folders, sorted; raises `StoreError` when the repository cannot be listed."""
        ...

    def fingerprint(self, model: str) -> Fingerprint:
        """Every file under the model's folder with its stamp; empty when the folder is gone."""
        ...

    def fetch(self, model: str, fingerprint: Fingerprint) -> Path:
        """A local folder holding the model's files as `fingerprint` lists them (the folder itself for a local
        repository, a fresh copy for a remote one)."""
        ...

    def release(self, folder: Path) -> None:
        """Forget a folder `fetch` returned, once no loaded version uses it (a remote copy is deleted)."""
        ...


def version_stamps(fingerprint: Fingerprint) -> dict[int, frozenset[tuple[str, str]]]:
    """Each version folder's files and stamps, by version: what tells one changed version from another."""
    versions: dict[int, set[tuple[str, str]]] = {}
    for path, stamp in fingerprint.items():
        number = _version_of(path)
        if number is not None:
            versions.setdefault(number, set()).add((path, stamp))
    return {number: frozenset(files) for number, files in versions.items()}


def model_stamps(fingerprint: Fingerprint) -> frozenset[tuple[str, str]]:
    """The files outside the version folders (config.pbtxt, labels, configs/...): a change there reloads every
    version."""
    return frozenset((path, stamp) for path, stamp in fingerprint.items() if _version_of(path) is None)


def versions_on_disk(fingerprint: Fingerprint) -> list[int]:
    """The version folders a fingerprint shows, as Triton reads them: integer names not starting with 0."""
    return sorted(version_stamps(fingerprint))


def _version_of(path: str) -> int | None:
    head, slash, _ = path.partition("/")
    return int(head) if slash and head.isdigit() and not head.startswith("0") else None


def relative_files(folder: Path) -> dict[str, str]:
    """Every file under a local folder with a size-and-mtime stamp, and each top-level folder as `name/` so that an
    empty version folder still counts (hidden entries and __pycache__ skipped)."""
    found: dict[str, str] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        try:
            status = path.stat()
        except OSError:  # removed while listing
            continue
        if path.is_file():
            found[relative.as_posix()] = f"{status.st_size}:{status.st_mtime_ns}"
        elif len(relative.parts) == 1 and path.is_dir():
            found[f"{relative.as_posix()}/"] = "folder"
    return found
