"""A model repository in an Azure Blob Storage container, each model copied into a cache."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from naiad.core.stores.base import StoreError
from naiad.core.stores.objects import ObjectLocation, ObjectStore

URI_FORM = "as://account/container/path"
AUTH_TYPES = ("key", "managed_identity", "default")
_TOKEN_TYPES = ("managed_identity", "default")

_CREDENTIAL_HELP = (
    "set AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY (one of the account's access keys), or "
    "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_AUTH_TYPE=managed_identity (a user-assigned identity: also "
    "AZURE_STORAGE_CLIENT_ID) or AZURE_STORAGE_AUTH_TYPE=default (azure-identity's DefaultAzureCredential)"
)
# Codes of an answer that refuses the request for who sent it, as the service and Azurite give them.
_REFUSED = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions",
    "InvalidAuthenticationInfo",
    "KeyBasedAuthenticationNotPermitted",
    "NoAuthenticationInformation",
    "PublicAccessNotPermitted",
}
# How often a failed request is tried again, after about 3s, 5s and 9s (the SDK's default waits 18s, 24s and 42s).
_RETRIES = 3
_TIMEOUTS = {"connection_timeout": 10, "read_timeout": 60}


@dataclass(frozen=True)
class AzureLocation(ObjectLocation):
    """What a repository URI names: the account, the container and the folder in it; `base` is
    "as://account/container"."""

    holder: ClassVar[str] = "container"

    account: str
    container: str


def parse_azure_uri(uri: str) -> AzureLocation:
    """Read `as://account/container/path` the way Triton does; the account may be written as its blob host name,
    `account.blob.core.windows.net`."""
    host, _, rest = uri.removeprefix("as://").partition("/")
    container, _, path = rest.partition("/")
    if not host or not container:
        raise StoreError(
            f"model repository '{uri}': no {'account' if not host else 'container'} named (use {URI_FORM})"
        )
    folders = tuple(folder for folder in path.split("/") if folder)
    account = host.removesuffix(".blob.core.windows.net")
    return AzureLocation(base=f"as://{host}/{container}", account=account, container=container, folders=folders)


@dataclass(frozen=True)
class AzureSettings:
    """The AZURE_STORAGE_* variables Triton reads (the connection string is naiad's own addition: it also names the
    endpoint, as an emulator needs). Empty strings for the ones not set."""

    account: str  # AZURE_STORAGE_ACCOUNT: the account to read, whatever the URI names (as in Triton)
    key: str  # AZURE_STORAGE_KEY
    connection_string: str  # AZURE_STORAGE_CONNECTION_STRING
    auth_type: str  # AZURE_STORAGE_AUTH_TYPE: "", "key", "managed_identity" or "default"
    client_id: str  # AZURE_STORAGE_CLIENT_ID: a user-assigned managed identity

    @classmethod
    def from_environment(cls) -> AzureSettings:
        """The variables as this process has them. The Azure SDK reads none of them itself, so this is the one place
        outside naiad.config that reads the environment, as Triton's own Azure code does."""
        return cls(
            account=os.environ.get("AZURE_STORAGE_ACCOUNT", ""),
            key=os.environ.get("AZURE_STORAGE_KEY", ""),
            connection_string=os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""),
            auth_type=os.environ.get("AZURE_STORAGE_AUTH_TYPE", ""),
            client_id=os.environ.get("AZURE_STORAGE_CLIENT_ID", ""),
        )


@dataclass(frozen=True)
class _Sdk:
    """The parts of azure-storage-blob this module uses, imported only when an as:// repository is opened."""

    service_client: Any  # azure.storage.blob.BlobServiceClient
    prefix_type: Any  # azure.storage.blob.BlobPrefix, what a delimited listing gives for a folder
    retry: Any  # azure.storage.blob.ExponentialRetry
    content_settings: Any  # azure.storage.blob.ContentSettings, which carries an upload's MD5
    errors: Any  # azure.core.exceptions


def _import_sdk() -> _Sdk:
    """azure-storage-blob's parts, or a `StoreError` naming the extra that installs it."""
    try:
        blob = importlib.import_module("azure.storage.blob")
        return _Sdk(
            service_client=blob.BlobServiceClient,
            prefix_type=blob.BlobPrefix,
            retry=blob.ExponentialRetry,
            content_settings=blob.ContentSettings,
            errors=importlib.import_module("azure.core.exceptions"),
        )
    except ImportError as exc:
        raise StoreError(
            f"as:// model repositories need azure-storage-blob: pip install 'naiad[azure]' ({exc})"
        ) from exc


def _import_identity(uri: str, auth_type: str) -> Any:
    """azure-identity, needed only for AZURE_STORAGE_AUTH_TYPE=managed_identity or default."""
    try:
        return importlib.import_module("azure.identity")
    except ImportError as exc:
        raise StoreError(
            f"cannot open model repository '{uri}': AZURE_STORAGE_AUTH_TYPE={auth_type} needs azure-identity: pip "
            f"install 'naiad[azure]' ({exc})"
        ) from exc


class AzureBlobStore(ObjectStore[AzureLocation]):
    """A repository under a container prefix; `fetch` copies one model's files into a fresh folder under `cache`."""

    read_needs = "the Storage Blob Data Reader role on the container or its account"
    write_needs = "the Storage Blob Data Contributor role on the container or its account"

    def _locate(self, uri: str) -> AzureLocation:
        return parse_azure_uri(uri)

    def _connect(self) -> None:
        self._settings = AzureSettings.from_environment()
        self._sdk = _import_sdk()
        self._account = self._settings.account or self._where.account
        self._signed_by = self._signer()
        self._client: Any = self._open_client()
        self._endpoint = str(self._client.url).rstrip("/")
        self._container: Any = self._client.get_container_client(self._where.container)

    def _open_client(self) -> Any:
        """The service client: its endpoint from the connection string, else the account's public one."""
        credential = self._credential()
        token = self._signed_by in _TOKEN_TYPES
        client = self._service_client(None if token else credential)  # a token credential wants https:// first
        cannot = f"cannot open model repository '{self._uri}'"
        if client.account_name != self._account:
            raise StoreError(
                f"{cannot}: AZURE_STORAGE_CONNECTION_STRING is for account '{client.account_name}', but the "
                f"repository is in account '{self._account}' ({self._account_source()})"
            )
        if token and not str(client.url).startswith("https://"):
            raise StoreError(
                f"{cannot}: AZURE_STORAGE_AUTH_TYPE={self._signed_by} sends a token, which Azure accepts only over "
                f"HTTPS, and the endpoint is {client.url} (use BlobEndpoint=https://... in the connection string)"
            )
        return self._service_client(credential) if token else client

    def _service_client(self, credential: Any) -> Any:
        options = {"retry_policy": self._sdk.retry(initial_backoff=1, increment_base=2, retry_total=_RETRIES)}
        try:
            if self._settings.connection_string:
                return self._sdk.service_client.from_connection_string(
                    self._settings.connection_string, credential=credential, **options, **_TIMEOUTS
                )
            url = f"https://{self._account}.blob.core.windows.net"
            return self._sdk.service_client(url, credential=credential, **options, **_TIMEOUTS)
        except (ValueError, self._sdk.errors.AzureError) as exc:
            raise StoreError(
                f"cannot open model repository '{self._uri}': {exc} (check AZURE_STORAGE_CONNECTION_STRING)"
            ) from exc

    def _signer(self) -> str:
        """How requests are signed, as the messages advise on it: "managed_identity" or "default" (a token from
        azure-identity), "key" (AZURE_STORAGE_KEY, else the connection string's AccountKey) or "anonymous"."""
        settings = self._settings
        if settings.auth_type in _TOKEN_TYPES:
            return settings.auth_type
        cannot = f"cannot open model repository '{self._uri}'"
        if settings.auth_type not in ("", "key"):
            raise StoreError(
                f"{cannot}: AZURE_STORAGE_AUTH_TYPE is '{settings.auth_type}', not one of {', '.join(AUTH_TYPES)}"
            )
        if settings.key or "accountkey=" in settings.connection_string.lower():
            return "key"
        if settings.auth_type == "key":
            raise StoreError(f"{cannot}: AZURE_STORAGE_AUTH_TYPE=key but AZURE_STORAGE_KEY is not set")
        return "anonymous"

    def _credential(self) -> Any:
        """A token credential, the account key, or None: the connection string's own key, or anonymous access."""
        settings = self._settings
        if self._signed_by in _TOKEN_TYPES:
            identity = _import_identity(self._uri, self._signed_by)
            client_id = settings.client_id or None
            if self._signed_by == "managed_identity":
                return identity.ManagedIdentityCredential(client_id=client_id)
            return identity.DefaultAzureCredential(managed_identity_client_id=client_id)
        if settings.key:
            return {"account_name": self._account, "account_key": settings.key}
        return None

    def _account_source(self) -> str:
        return "from AZURE_STORAGE_ACCOUNT" if self._settings.account else "from the URI"

    def _listing(self, prefix: str, doing: str) -> tuple[set[str], set[str]]:
        folders: set[str] = set()
        files: set[str] = set()
        with self._translated(doing, listing=True):
            for item in self._container.walk_blobs(name_starts_with=prefix, delimiter="/"):
                name = str(item.name)[len(prefix) :]
                if isinstance(item, self._sdk.prefix_type):
                    folders.add(name.removesuffix("/"))
                else:
                    files.add(name)
        return folders, files

    def _objects(self, prefix: str, doing: str) -> Iterator[tuple[str, str]]:
        """Every blob under a prefix with its size and ETag, which changes whenever the blob is written."""
        for blob in self._blobs(prefix, doing):
            etag = str(blob.etag).strip('"')
            yield str(blob.name), f"{blob.size}:{etag}"

    def _contents(self, prefix: str, doing: str) -> Iterator[tuple[str, int, bytes | None]]:
        """The MD5 is the blob's Content-MD5 property, which `naiad push` sets (other tools may not)."""
        for blob in self._blobs(prefix, doing):
            md5 = blob.content_settings.content_md5
            yield str(blob.name), int(blob.size), bytes(md5) if md5 else None

    def _blobs(self, prefix: str, doing: str) -> Iterator[Any]:
        with self._translated(doing, listing=True):
            yield from self._container.list_blobs(name_starts_with=prefix)

    def _download(self, key: str, target: Path, doing: str) -> None:
        with self._translated(doing, listing=False), target.open("wb") as file:
            self._container.download_blob(key).readinto(file)

    def _upload(self, key: str, source: Path, md5: bytes, doing: str) -> None:
        settings = self._sdk.content_settings(content_md5=bytearray(md5))
        with self._translated(doing, listing=True), source.open("rb") as data:
            self._container.upload_blob(key, data, overwrite=True, content_settings=settings)

    def _delete(self, key: str, doing: str) -> None:
        with self._translated(doing, listing=True):
            self._container.delete_blob(key)

    def _origin(self) -> str:
        return f"{self._endpoint}/{self._where.container}"

    @contextmanager
    def _translated(self, doing: str, *, listing: bool) -> Iterator[None]:
        """The Azure SDK's failures as a `StoreError` naming the URI and the cause."""
        errors = self._sdk.errors
        failed = f"cannot {doing} model repository '{self._uri}'"
        try:
            yield
        except errors.HttpResponseError as exc:
            if _code(exc):  # an answer from the service
                raise StoreError(f"{failed}: {self._refusal(exc, listing)}") from exc
            if isinstance(exc, errors.ClientAuthenticationError):  # no answer: nothing to sign or send with
                raise StoreError(f"{failed}: {self._unsigned(exc)}") from exc
            raise StoreError(f"{failed}: {_first_line(exc)}") from exc
        except errors.ServiceRequestError as exc:
            raise StoreError(
                f"{failed}: the Azure endpoint {self._endpoint} cannot be reached ({_first_line(exc)})"
            ) from exc
        except errors.AzureError as exc:
            raise StoreError(f"{failed}: {_first_line(exc)}") from exc

    def _refusal(self, exc: Any, listing: bool) -> str:
        """What an error answer means, and what to do about it."""
        code = _code(exc)
        detail = f"{code}: {_first_line(exc)}"
        container, account = self._where.container, self._account
        if code == "ContainerNotFound":
            return f"container '{container}' does not exist in account '{account}' at {self._endpoint} ({detail})"
        if code == "BlobNotFound" or (not listing and code == "ResourceNotFound"):
            return f"the blob is gone ({detail}): it was changed or deleted while the model was read"
        if code == "ResourceNotFound":
            return (
                f"account '{account}' or container '{container}' was not found at {self._endpoint} ({detail}): check "
                f"both names{self._anonymous_hint()}"
            )
        if code in _REFUSED:
            return f"access to container '{container}' of account '{account}' is refused ({detail}): {self._advice()}"
        status = getattr(exc, "status_code", None)
        return f"{detail} (HTTP {status})" if status else detail

    def _advice(self) -> str:
        if self._signed_by == "key":
            return (
                f"check that the key (AZURE_STORAGE_KEY, or AccountKey in AZURE_STORAGE_CONNECTION_STRING) is one of "
                f"the access keys of account '{self._account}', and that the account allows access by key"
            )
        if self._signed_by == "anonymous":
            return (
                "no credentials were given, so it was read anonymously, which only a container with public read "
                f"access allows; {_CREDENTIAL_HELP}"
            )
        return f"the identity whose token was sent needs {self._needs}"

    def _anonymous_hint(self) -> str:
        if self._signed_by != "anonymous":
            return ""
        return (
            f"; it was read anonymously, and a container without public access looks missing then: {_CREDENTIAL_HELP}"
        )

    def _unsigned(self, exc: Any) -> str:
        """Why a request could not be signed: no token from azure-identity, or a key that is no key."""
        if self._signed_by == "key":
            return (
                f"the account key cannot sign requests ({_first_line(exc)}): AZURE_STORAGE_KEY (or AccountKey in "
                "AZURE_STORAGE_CONNECTION_STRING) must be one of the account's access keys, as the portal shows it"
            )
        source = "the managed identity" if self._signed_by == "managed_identity" else "DefaultAzureCredential"
        client_id = f" (client ID {self._settings.client_id})" if self._settings.client_id else ""
        return (
            f"no token could be had from {source}{client_id} ({_first_line(exc)}): run where a managed identity is "
            f"assigned, with {self._needs}, or {_CREDENTIAL_HELP}"
        )


def _code(exc: Any) -> str:
    """The error code of the service's answer ("ContainerNotFound"), or "" for a failure with no answer."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _first_line(exc: Any) -> str:
    """The SDK's message without the request id, time and XML body it appends, but with the reason the service gives
    for refusing a signature or token ("Invalid token audience.")."""
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    reasons = [line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("authenticationerrordetail:")]
    return f"{lines[0]} {reasons[0]}" if reasons else lines[0]
