"""A model repository in an S3 bucket (AWS or a private endpoint such as MinIO), each model copied into a cache."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naiad.core.stores.base import Fingerprint, StoreError

URI_FORMS = "s3://bucket/path, s3://host:port/bucket/path or s3://https://host:port/bucket/path"

_CREDENTIAL_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), or AWS_PROFILE "
    "naming a profile of ~/.aws/credentials (another file: AWS_SHARED_CREDENTIALS_FILE), or "
    "AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or run where an instance or pod role is attached"
)
_REFUSED = {
    "InvalidAccessKeyId": "the access key is unknown to {endpoint}",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "TokenRefreshRequired": "the session token has expired",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "403"}
_GONE = {"NoSuchKey", "404"}


@dataclass(frozen=True)
class S3Location:
    """What a repository URI names: the endpoint (None: boto3's own configuration), the bucket and the folder in it."""

    base: str  # the URI up to the bucket name included: "s3://bucket", "s3://host:port/bucket"
    endpoint: str | None
    bucket: str
    folders: tuple[str, ...]  # the path inside the bucket, empty for its root

    @property
    def prefix(self) -> str:
        """The key prefix of the repository folder: "" for the bucket root, else "path/"."""
        return "".join(f"{folder}/" for folder in self.folders)

    def uri_of(self, folders: tuple[str, ...]) -> str:
        """The URI of another folder of the same bucket, written in the same form."""
        return "/".join((self.base, *folders))


def parse_s3_uri(uri: str) -> S3Location:
    """Read a URI the way Triton does: a `host:port` first part, or one starting `http(s)://`, names a private
    endpoint (plain HTTP unless `https://`); otherwise the first part is the bucket and boto3 finds the endpoint."""
    rest = uri.removeprefix("s3://")
    endpoint: str | None = None
    head = "s3://"
    for scheme in ("https://", "http://"):
        if rest.startswith(scheme):
            host, _, rest = rest.removeprefix(scheme).partition("/")
            if not host:
                raise StoreError(f"model repository '{uri}': no host after '{scheme}' (use {URI_FORMS})")
            endpoint, head = f"{scheme}{host}", f"s3://{scheme}{host}/"
            break
    else:
        first, _, after = rest.partition("/")
        host, colon, port = first.rpartition(":")
        if colon and host and port.isdigit():
            endpoint, head, rest = f"http://{first}", f"s3://{first}/", after
    bucket, _, path = rest.partition("/")
    if not bucket:
        raise StoreError(f"model repository '{uri}': no bucket named (use {URI_FORMS})")
    folders = tuple(folder for folder in path.split("/") if folder)
    return S3Location(base=head + bucket, endpoint=endpoint, bucket=bucket, folders=folders)


@dataclass(frozen=True)
class _Sdk:
    """The parts of boto3 this module uses, imported only when an s3:// repository is opened (untyped: Any)."""

    session: Any  # boto3.session.Session
    config: Any  # botocore.config.Config
    errors: Any  # botocore.exceptions
    transfer_error: Any  # boto3.exceptions.Boto3Error, what a failed download_file raises besides botocore's own


def _import_sdk() -> _Sdk:
    """boto3's parts, or a `StoreError` naming the extra that installs it."""
    try:
        return _Sdk(
            session=importlib.import_module("boto3.session").Session,
            config=importlib.import_module("botocore.config").Config,
            errors=importlib.import_module("botocore.exceptions"),
            transfer_error=importlib.import_module("boto3.exceptions").Boto3Error,
        )
    except ImportError as exc:
        raise StoreError(f"s3:// model repositories need boto3: pip install 'naiad[s3]' ({exc})") from exc


class S3Store:
    """A repository under a bucket prefix; `fetch` copies one model's files into a fresh folder under `cache`."""

    def __init__(self, uri: str, cache: Path) -> None:
        self._uri = uri
        self._cache = cache.resolve()
        self._where = parse_s3_uri(uri)
        self._sdk = _import_sdk()
        # A private endpoint is addressed by path (MinIO has no per-bucket host names); AWS keeps boto3's default.
        style = {"s3": {"addressing_style": "path"}} if self._where.endpoint else {}
        try:
            self._client: Any = self._sdk.session().client(
                "s3", endpoint_url=self._where.endpoint, config=self._sdk.config(connect_timeout=10, **style)
            )
        except (self._sdk.errors.BotoCoreError, ValueError) as exc:
            raise StoreError(f"cannot open model repository '{uri}': {exc}") from exc
        self._endpoint: str = self._client.meta.endpoint_url
        self._check_layout()

    @property
    def uri(self) -> str:
        """The URI as given."""
        return self._uri

    def models(self) -> list[str]:
        """The model folders directly under the repository path (hidden ones skipped)."""
        folders, _ = self._children(self._where.prefix, "list")
        return folders

    def fingerprint(self, model: str) -> Fingerprint:
        """Size and ETag of every object of the model's folder, and each top-level folder as `name/`."""
        base = self._model_prefix(model)
        found: dict[str, str] = {}
        for item in self._objects(base, f"fingerprint model '{model}' in"):
            relative: str = item["Key"][len(base) :]
            parts = relative.split("/")
            if not relative or _skipped(parts[0]):
                continue
            if len(parts) > 1:
                found[f"{parts[0]}/"] = "folder"
            # a key ending in "/" is a folder marker, no file
            if not relative.endswith("/") and not any(_skipped(part) for part in parts):
                etag = str(item["ETag"]).strip('"')
                found[relative] = f"{item['Size']}:{etag}"
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
                self._download(model, base, fingerprint, partial)
                self._move_into_place(partial, folder)
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
            return f"nothing is stored under {where} (check the bucket and the path): it holds no model folders"
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
        folders: set[str] = set()
        files: set[str] = set()
        pages = self._client.get_paginator("list_objects_v2")
        with self._translated(doing):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix, Delimiter="/"):
                folders.update(str(entry["Prefix"])[len(prefix) : -1] for entry in page.get("CommonPrefixes", []))
                files.update(str(entry["Key"])[len(prefix) :] for entry in page.get("Contents", []))
        return sorted(_visible(folders)), sorted(_visible(files))

    def _objects(self, prefix: str, doing: str) -> Iterator[Mapping[str, Any]]:
        """Every object under a prefix, at any depth."""
        pages = self._client.get_paginator("list_objects_v2")
        with self._translated(doing):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def _download(self, model: str, base: str, fingerprint: Fingerprint, into: Path) -> None:
        for relative in sorted(fingerprint):
            target = into / relative
            if relative.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._translated(f"fetch '{relative}' of model '{model}' from"):
                self._client.download_file(self._where.bucket, base + relative, str(target))

    @staticmethod
    def _move_into_place(partial: Path, folder: Path) -> None:
        try:
            partial.rename(folder)
        except OSError:
            if not folder.is_dir():  # anything but another fetch of the same content finishing first
                raise

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
        named = [self._endpoint, self._where.bucket, self._where.prefix, model, sorted(fingerprint.items())]
        return hashlib.sha256(json.dumps(named).encode()).hexdigest()[:12]

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """boto3's failures as a `StoreError` naming the URI and the cause."""
        errors = self._sdk.errors
        try:
            yield
        except errors.ClientError as exc:
            raise StoreError(f"cannot {doing} model repository '{self._uri}': {self._refusal(exc)}") from exc
        except errors.NoCredentialsError as exc:
            raise StoreError(
                f"cannot {doing} model repository '{self._uri}': no AWS credentials found; {_CREDENTIAL_HELP}"
            ) from exc
        except errors.EndpointConnectionError as exc:
            raise StoreError(
                f"cannot {doing} model repository '{self._uri}': the S3 endpoint {self._endpoint} cannot be reached "
                f"({exc.kwargs.get('error', exc)})"
            ) from exc
        except (errors.BotoCoreError, self._sdk.transfer_error) as exc:
            raise StoreError(f"cannot {doing} model repository '{self._uri}': {exc}") from exc

    def _refusal(self, exc: Any) -> str:
        """What an error answer from the endpoint means, and what to do about it."""
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        detail = f"{code}: {error['Message']}" if error.get("Message") else code
        bucket = self._where.bucket
        if code in _REFUSED:
            cause = _REFUSED[code].format(endpoint=self._endpoint)
            return f"the credentials were refused, {cause} ({detail}); check them: {_CREDENTIAL_HELP}"
        if code in _DENIED:
            return (
                f"access to bucket '{bucket}' is denied ({detail}): the credentials in use need s3:ListBucket and "
                "s3:GetObject on it"
            )
        if code == "NoSuchBucket":
            return f"bucket '{bucket}' does not exist at {self._endpoint} ({detail})"
        if code in _GONE:
            return f"the object is gone ({detail}): it was changed or deleted while the model was read"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{detail} (HTTP {status})" if status else str(exc)


def _visible(names: set[str]) -> list[str]:
    return [name for name in names if name and not _skipped(name)]


def _skipped(name: str) -> bool:
    """Hidden names and __pycache__ are no part of a repository, as on a local disk."""
    return name.startswith(".") or name == "__pycache__"
