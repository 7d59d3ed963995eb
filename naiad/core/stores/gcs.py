"""A model repository in a Google Cloud Storage bucket, each model copied into a cache."""

from __future__ import annotations

import base64
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naiad.core.stores.base import StoreError
from naiad.core.stores.objects import ObjectLocation, ObjectStore

URI_FORM = "gs://bucket/path"

_CREDENTIAL_HELP = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service account's JSON key file (or run `gcloud auth "
    "application-default login`), or run where a service account is attached (Compute Engine, GKE, Cloud Run)"
)
# How long one request may take, and how long a failing one is retried (connection errors, 429 and 5xx answers).
_TIMEOUT_S = (10.0, 60.0)  # connect, read
_RETRY_S = 30.0


@dataclass(frozen=True)
class GcsLocation(ObjectLocation):
    """What a repository URI names: the bucket and the folder in it; `base` is "gs://bucket"."""

    bucket: str


def parse_gcs_uri(uri: str) -> GcsLocation:
    """Read `gs://bucket/path` the way Triton does: the first part is the bucket, the rest the folder in it."""
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise StoreError(f"model repository '{uri}': no bucket named (use {URI_FORM})")
    folders = tuple(folder for folder in path.split("/") if folder)
    return GcsLocation(base=f"gs://{bucket}", bucket=bucket, folders=folders)


@dataclass(frozen=True)
class _Sdk:
    """The parts of google-cloud-storage this module uses, imported only when a gs:// repository is opened."""

    client: Any  # google.cloud.storage.Client
    retry: Any  # google.cloud.storage.retry.DEFAULT_RETRY
    api_errors: Any  # google.api_core.exceptions
    auth_errors: Any  # google.auth.exceptions
    credentials_variable: str  # google.auth.environment_vars.CREDENTIALS: "GOOGLE_APPLICATION_CREDENTIALS"


def _import_sdk() -> _Sdk:
    """google-cloud-storage's parts, or a `StoreError` naming the extra that installs it."""
    try:
        return _Sdk(
            client=importlib.import_module("google.cloud.storage").Client,
            retry=importlib.import_module("google.cloud.storage.retry").DEFAULT_RETRY,
            api_errors=importlib.import_module("google.api_core.exceptions"),
            auth_errors=importlib.import_module("google.auth.exceptions"),
            credentials_variable=importlib.import_module("google.auth.environment_vars").CREDENTIALS,
        )
    except ImportError as exc:
        raise StoreError(
            f"gs:// model repositories need google-cloud-storage: pip install 'naiad[gcs]' ({exc})"
        ) from exc


class GcsStore(ObjectStore[GcsLocation]):
    """A repository under a bucket prefix; `fetch` copies one model's files into a fresh folder under `cache`."""

    read_needs = "storage.objects.list and storage.objects.get on it (the Storage Object Viewer role)"
    write_needs = (
        "storage.objects.list, storage.objects.create and storage.objects.delete on it (the Storage Object User "
        "role): replacing an object deletes the old one"
    )

    def _locate(self, uri: str) -> GcsLocation:
        return parse_gcs_uri(uri)

    def _connect(self) -> None:
        self._sdk = _import_sdk()
        self._anonymous = False
        self._client: Any = self._open_client()
        self._endpoint = str(self._client.api_endpoint)
        self._retry: Any = self._sdk.retry.with_timeout(_RETRY_S)

    def _open_client(self) -> Any:
        """A client with the credentials Google's libraries find (GOOGLE_APPLICATION_CREDENTIALS, gcloud's login, an
        attached service account), or an anonymous one when there are none, as Triton does; STORAGE_EMULATOR_HOST
        points the client at an emulator, always anonymously."""
        try:
            return self._sdk.client(project=None)  # listing and reading a bucket need no project
        except self._sdk.auth_errors.DefaultCredentialsError as exc:
            # The one environment variable read here: a key file named but unusable is an error, not anonymity.
            named = os.environ.get(self._sdk.credentials_variable)
            if named:
                raise StoreError(
                    f"cannot open model repository '{self._uri}': the credentials that "
                    f"{self._sdk.credentials_variable} names cannot be used ({exc}); {_CREDENTIAL_HELP}"
                ) from exc
        except (self._sdk.auth_errors.GoogleAuthError, ValueError) as exc:
            raise StoreError(f"cannot open model repository '{self._uri}': {exc}") from exc
        self._anonymous = True
        return self._sdk.client.create_anonymous_client()

    def _listing(self, prefix: str, doing: str) -> tuple[set[str], set[str]]:
        with self._translated(doing, listing=True):
            blobs = self._client.list_blobs(
                self._where.bucket, prefix=prefix, delimiter="/", retry=self._retry, timeout=_TIMEOUT_S
            )
            files = {str(blob.name)[len(prefix) :] for blob in blobs}  # the page iteration fills .prefixes
            folders = {str(folder)[len(prefix) : -1] for folder in blobs.prefixes}
        return folders, files

    def _objects(self, prefix: str, doing: str) -> Iterator[tuple[str, str]]:
        """Every object under a prefix with its size and MD5 (the generation for a composite object, which has
        none): both change when the object's content does."""
        for blob in self._blobs(prefix, doing):
            yield str(blob.name), f"{blob.size}:{blob.md5_hash or blob.generation}"

    def _contents(self, prefix: str, doing: str) -> Iterator[tuple[str, int, bytes | None]]:
        for blob in self._blobs(prefix, doing):
            yield str(blob.name), int(blob.size or 0), base64.b64decode(blob.md5_hash) if blob.md5_hash else None

    def _blobs(self, prefix: str, doing: str) -> Iterator[Any]:
        with self._translated(doing, listing=True):
            yield from self._client.list_blobs(self._where.bucket, prefix=prefix, retry=self._retry, timeout=_TIMEOUT_S)

    def _download(self, key: str, target: Path, doing: str) -> None:
        blob = self._client.bucket(self._where.bucket).blob(key)
        with self._translated(doing, listing=False):
            blob.download_to_filename(str(target), retry=self._retry, timeout=_TIMEOUT_S)

    def _upload(self, key: str, source: Path, md5: bytes, doing: str) -> None:
        blob = self._client.bucket(self._where.bucket).blob(key)
        blob.md5_hash = base64.b64encode(md5).decode()  # the service refuses bytes that do not match it
        with self._translated(doing, listing=True):  # a 404 here is the bucket
            blob.upload_from_filename(str(source), retry=self._retry, timeout=_TIMEOUT_S)

    def _delete(self, key: str, doing: str) -> None:
        blob = self._client.bucket(self._where.bucket).blob(key)
        with self._translated(doing, listing=True):
            blob.delete(retry=self._retry, timeout=_TIMEOUT_S)

    def _origin(self) -> str:
        return f"{self._endpoint}/{self._where.bucket}"

    @contextmanager
    def _translated(self, doing: str, *, listing: bool) -> Iterator[None]:
        """google-cloud-storage's failures as a `StoreError` naming the URI and the cause; a 404 is the bucket when
        listing, the object when downloading."""
        errors = self._sdk.api_errors
        failed = f"cannot {doing} model repository '{self._uri}'"
        try:
            yield
        except errors.NotFound as exc:
            if listing:
                detail = _detail(exc)
                raise StoreError(
                    f"{failed}: bucket '{self._where.bucket}' does not exist at {self._endpoint} ({detail})"
                ) from exc
            raise StoreError(
                f"{failed}: the object is gone ({_detail(exc)}): it was changed or deleted while the model was read"
            ) from exc
        except (errors.Unauthorized, errors.Forbidden) as exc:
            raise StoreError(f"{failed}: {self._denial(exc)}") from exc
        except errors.RetryError as exc:
            if isinstance(exc.cause, self._sdk.auth_errors.GoogleAuthError):  # the token endpoint, not storage's
                raise StoreError(
                    f"{failed}: the credentials could not be used ({exc.cause}); {_CREDENTIAL_HELP}"
                ) from exc
            raise StoreError(
                f"{failed}: the GCS endpoint {self._endpoint} did not answer within {_RETRY_S:.0f}s of retries "
                f"({exc.cause})"
            ) from exc
        except errors.GoogleAPIError as exc:
            raise StoreError(f"{failed}: {_detail(exc)}") from exc
        except self._sdk.auth_errors.GoogleAuthError as exc:  # a token that cannot be had or refreshed
            raise StoreError(f"{failed}: the credentials could not be used ({exc}); {_CREDENTIAL_HELP}") from exc

    def _denial(self, exc: Any) -> str:
        """What a 401 or 403 answer means, and what to do about it."""
        bucket = self._where.bucket
        if self._anonymous:
            return (
                f"access to bucket '{bucket}' is denied ({_detail(exc)}): no Google credentials were found, so it was "
                f"read anonymously, which only a public bucket allows; {_CREDENTIAL_HELP}"
            )
        return f"access to bucket '{bucket}' is denied ({_detail(exc)}): the credentials in use need {self._needs}"


def _detail(exc: Any) -> str:
    """An API error's status and message, without the "GET <url>: " that the client puts before the message."""
    message = str(getattr(exc, "message", None) or exc)
    method, _, rest = message.partition(" ")
    if method.isupper() and ": " in rest:
        message = rest.split(": ", 1)[1]
    code = getattr(exc, "code", None)
    return f"HTTP {int(code)}: {message}" if code else message
