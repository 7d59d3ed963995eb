"""What the object-store repositories (S3, GCS, Azure) share: a bucket URI's parts, listing model folders and
stamps, checking the layout, and copying a model into the cache so that a half-written copy is never served."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from naiad.core.stores.base import Fingerprint, StoreError


@dataclass(frozen=True)
class ObjectLocation:
    """What a bucket URI names: the URI up to the bucket (or container) and the folder inside it."""

    holder: ClassVar[str] = "bucket"  # what the user calls the thing that holds the objects, for messages

    base: str  # the URI up to the bucket included: "s3://bucket", "gs://bucket", "as://account/container"
    folders: tuple[str, ...]  # the path inside the bucket, empty for its root

    @property
    def prefix(self) -> str:
        """The key prefix of the repository folder: "" for the bucket root, else "path/"."""
        return "".join(f"{folder}/" for folder in self.folders)

    def uri_of(self, folders: tuple[str, ...]) -> str:
        """The URI of another folder of the same bucket, written in the same form."""
        return "/".join((self.base, *folders))


LocationT = TypeVar("LocationT", bound=ObjectLocation)
StoreT = TypeVar("StoreT", bound="ObjectStore[Any]")

# What an object holds, as `contents` tells it: its size, and the MD5 of its bytes where the service keeps one.
Content = tuple[int, bytes | None]


class ObjectStore(ABC, Generic[LocationT]):
    """A repository under a bucket prefix, whatever the service: `fetch` copies one model's files into a fresh folder
    under `cache`. A subclass parses its URI, opens its client, and lists, downloads, uploads and deletes objects."""

    read_needs: ClassVar[str]  # the permissions that serving needs, for messages
    write_needs: ClassVar[str]  # the permissions that `naiad push` needs

    def __init__(self, uri: str, cache: Path) -> None:
        """Open the repository for serving: one listing checks the credentials, the bucket and the layout."""
        self._open(uri, cache, writing=False)
        self._check_layout()

    @classmethod
    def for_writing(cls: type[StoreT], uri: str) -> StoreT:
        """Open the path of `uri` for uploading (`naiad push`): the same URI forms, client and credentials as serving,
        but the path may hold nothing yet, and failures name the write permissions. Such a store fetches nothing."""
        store = cls.__new__(cls)
        store._open(uri, Path(tempfile.gettempdir()), writing=True)
        return store

    def _open(self, uri: str, cache: Path, *, writing: bool) -> None:
        self._uri = uri
        self._cache = cache.resolve()
        self._writing = writing
        self._where = self._locate(uri)
        self._connect()

    @property
    def uri(self) -> str:
        """The URI as given."""
        return self._uri

    def models(self) -> list[str]:
        """The model folders directly under the repository path (hidden ones skipped)."""
        folders, _ = self._children(self._where.prefix, "list")
        return folders

    def fingerprint(self, model: str) -> Fingerprint:
        """Size and stamp of every object of the model's folder, and each top-level folder as `name/`."""
        base = self._model_prefix(model)
        found: dict[str, str] = {}
        for key, stamp in self._objects(base, f"fingerprint model '{model}' in"):
            relative = key[len(base) :]
            parts = relative.split("/")
            if not relative or _skipped(parts[0]):
                continue
            if len(parts) > 1:
                found[f"{parts[0]}/"] = "folder"
            # a key ending in "/" is a folder marker, no file
            if not relative.endswith("/") and not any(_skipped(part) for part in parts):
                found[relative] = stamp
        return dict(sorted(found.items()))

    def fetch(self, model: str, fingerprint: Fingerprint) -> Path:
        """A folder under the cache holding the files `fingerprint` lists, downloaded once and reused after."""
        base = self._model_prefix(model)
        for relative in fingerprint:
            self._check_relative(model, relative)
        folder = self._cache / f"{model}-{self._digest(model, fingerprint)}"
        if folder.is_dir():  # only ever renamed into place complete
            return folder
        try:
            self._cache.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=self._cache))
            try:
                self._download_all(model, base, fingerprint, partial)
                _move_into_place(partial, folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"cannot copy model '{model}' of '{self._uri}' into {self._cache}: {exc}") from exc
        return folder

    def release(self, folder: Path) -> None:
        """Delete a copy `fetch` made; a folder that is not directly under the cache is left alone."""
        target = folder.resolve()
        if target.parent == self._cache and target.is_dir():
            shutil.rmtree(target, ignore_errors=True)

    def contents(self) -> dict[str, Content]:
        """Every object under the repository path (hidden ones skipped), by its path relative to it; a folder marker
        object keeps its trailing "/"."""
        base = self._where.prefix
        found: dict[str, Content] = {}
        for key, size, md5 in self._contents(base, "list"):
            relative = key[len(base) :]
            if relative and not any(_skipped(part) for part in relative.removesuffix("/").split("/")):
                found[relative] = (size, md5)
        return found

    def upload(self, relative: str, source: Path, md5: bytes) -> None:
        """Write a local file to `<uri>/<relative>`, its MD5 stored with it (S3 and GCS check the bytes against it)."""
        self._upload(self._where.prefix + relative, source, md5, f"upload '{relative}' to")

    def delete(self, relative: str) -> None:
        """Delete the object at `<uri>/<relative>`."""
        self._delete(self._where.prefix + relative, f"delete '{relative}' from")

    @property
    def _needs(self) -> str:
        """The permissions the credentials need for what this store was opened for."""
        return self.write_needs if self._writing else self.read_needs

    @abstractmethod
    def _locate(self, uri: str) -> LocationT:
        """What the URI names; a `StoreError` when it names no bucket."""

    @abstractmethod
    def _connect(self) -> None:
        """Open the service's client for `self._where`; a `StoreError` when it cannot be."""

    @abstractmethod
    def _contents(self, prefix: str, doing: str) -> Iterator[tuple[str, int, bytes | None]]:
        """Every object under a prefix, at any depth: its full key, its size and its MD5 (None when unknown)."""

    @abstractmethod
    def _upload(self, key: str, source: Path, md5: bytes, doing: str) -> None:
        """Write a local file's bytes to one object, replacing it."""

    @abstractmethod
    def _delete(self, key: str, doing: str) -> None:
        """Delete one object."""

    @abstractmethod
    def _listing(self, prefix: str, doing: str) -> tuple[set[str], set[str]]:
        """The folder and file names directly under a prefix (the prefix and a folder's trailing "/" cut off);
        a failure raises a `StoreError` saying it could not `doing` the repository."""

    @abstractmethod
    def _objects(self, prefix: str, doing: str) -> Iterator[tuple[str, str]]:
        """Every object under a prefix, at any depth: its full key and a stamp that changes when it does."""

    @abstractmethod
    def _download(self, key: str, target: Path, doing: str) -> None:
        """Write one object's bytes to `target`."""

    @abstractmethod
    def _origin(self) -> str:
        """The service and bucket, as the name of a copy tells them apart (an endpoint, an account and container)."""

    def _check_layout(self) -> None:
        """One listing at start: wrong credentials, a missing bucket or a misplaced path fail here, clearly."""
        folders, files = self._children(self._where.prefix, "open")
        problem = self._layout_problem(folders, files)
        if problem:
            raise StoreError(f"model repository '{self._uri}': {problem}")

    def _layout_problem(self, folders: list[str], files: list[str]) -> str | None:
        where = self._where.uri_of(self._where.folders)
        if "config.pbtxt" in files:
            return self._model_folder_problem("config.pbtxt")
        for folder in filter(str.isdigit, folders):
            inner_folders, inner_files = self._children(f"{self._where.prefix}{folder}/", "open")
            weights = [name for name in inner_files + inner_folders if name.startswith("model.")]
            if weights:
                return self._model_folder_problem(f"{folder}/{weights[0]}")
        weights = [name for name in files + folders if name.startswith("model.")]
        if weights and len(self._where.folders) >= 2 and self._where.folders[-1].isdigit():
            repository = self._where.uri_of(self._where.folders[:-2])
            return (
                f"this is a version folder of model '{self._where.folders[-2]}' (it holds {weights[0]}), not a "
                f"repository: point the URI at the folder holding the model folders: {repository}"
            )
        if folders:
            return None
        if not files:
            holder = self._where.holder
            return f"nothing is stored under {where} (check the {holder} and the path): it holds no model folders"
        shown = ", ".join(files[:5])
        return f"it holds no model folders, only files ({shown}): a repository holds one folder per model"

    def _model_folder_problem(self, evidence: str) -> str:
        folders = self._where.folders
        if not folders:
            return (
                f"this is a model folder (it holds {evidence}), not a repository of model folders: move the model's "
                f"files into a folder named after the model, {self._where.base}/<model>/, and keep this URI"
            )
        return (
            f"this is a model folder (it holds {evidence}), not a repository of model folders: point the URI at its "
            f"parent: {self._where.uri_of(folders[:-1])}"
        )

    def _children(self, prefix: str, doing: str) -> tuple[list[str], list[str]]:
        """The folder and file names directly under a prefix, hidden ones skipped, each list sorted."""
        folders, files = self._listing(prefix, doing)
        return sorted(_visible(folders)), sorted(_visible(files))

    def _download_all(self, model: str, base: str, fingerprint: Fingerprint, into: Path) -> None:
        for relative in sorted(fingerprint):
            target = into / relative
            if relative.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self._download(base + relative, target, f"fetch '{relative}' of model '{model}' from")

    def _model_prefix(self, model: str) -> str:
        if not model or "/" in model or model.startswith(".") or "\0" in model:
            raise StoreError(f"model repository '{self._uri}': '{model}' is not a model folder name")
        return f"{self._where.prefix}{model}/"

    def _check_relative(self, model: str, relative: str) -> None:
        parts = relative.removesuffix("/").split("/")
        if "\0" in relative or any(part in ("", ".", "..") for part in parts):
            raise StoreError(
                f"model repository '{self._uri}': refusing object '{relative}' of model '{model}': an empty, '.' or "
                "'..' part of its path would put it outside the model's folder"
            )

    def _digest(self, model: str, fingerprint: Fingerprint) -> str:
        """12 hex digits naming one content of one model of this repository."""
        named = [self._origin(), self._where.prefix, model, sorted(fingerprint.items())]
        return hashlib.sha256(json.dumps(named).encode()).hexdigest()[:12]


def _move_into_place(partial: Path, folder: Path) -> None:
    try:
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():  # anything but another fetch of the same content finishing first
            raise


def _visible(names: set[str]) -> list[str]:
    return [name for name in names if name and not _skipped(name)]


def _skipped(name: str) -> bool:
    """Hidden names and __pycache__ are no part of a repository, as on a local disk."""
    return name.startswith(".") or name == "__pycache__"
