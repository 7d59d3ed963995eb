"""A model repository in an S3 bucket (AWS or a private endpoint such as MinIO), each model copied into a cache."""

from __future__ import annotations

import base64
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naiad.core.stores.base import StoreError
from naiad.core.stores.objects import ObjectLocation, ObjectStore

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
# The largest object one PUT writes (S3's limit); a larger file goes up in parts, and its ETag is no MD5 then.
_SINGLE_PART_LIMIT = 5 * 1024**3


@dataclass(frozen=True)
class S3Location(ObjectLocation):
    """What a repository URI names: the endpoint (None: boto3's own configuration), the bucket and the folder in it;
    `base` is the URI up to the bucket name included: "s3://bucket", "s3://host:port/bucket"."""

    endpoint: str | None
    bucket: str


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
    transfer_config: Any  # boto3.s3.transfer.TransferConfig


def _import_sdk() -> _Sdk:
    """boto3's parts, or a `StoreError` naming the extra that installs it."""
    try:
        return _Sdk(
            session=importlib.import_module("boto3.session").Session,
            config=importlib.import_module("botocore.config").Config,
            errors=importlib.import_module("botocore.exceptions"),
            transfer_error=importlib.import_module("boto3.exceptions").Boto3Error,
            transfer_config=importlib.import_module("boto3.s3.transfer").TransferConfig,
        )
    except ImportError as exc:
        raise StoreError(f"s3:// model repositories need boto3: pip install 'naiad[s3]' ({exc})") from exc


class S3Store(ObjectStore[S3Location]):
    """A repository under a bucket prefix; `fetch` copies one model's files into a fresh folder under `cache`."""

    read_needs = "s3:ListBucket and s3:GetObject on it"
    write_needs = "s3:ListBucket, s3:PutObject and (for --delete) s3:DeleteObject on it"

    def _locate(self, uri: str) -> S3Location:
        return parse_s3_uri(uri)

    def _connect(self) -> None:
        self._sdk = _import_sdk()
        # A private endpoint is addressed by path (MinIO has no per-bucket host names); AWS keeps boto3's default.
        style = {"s3": {"addressing_style": "path"}} if self._where.endpoint else {}
        try:
            self._client: Any = self._sdk.session().client(
                "s3", endpoint_url=self._where.endpoint, config=self._sdk.config(connect_timeout=10, **style)
            )
        except (self._sdk.errors.BotoCoreError, ValueError) as exc:
            raise StoreError(f"cannot open model repository '{self._uri}': {exc}") from exc
        self._endpoint: str = self._client.meta.endpoint_url

    def _listing(self, prefix: str, doing: str) -> tuple[set[str], set[str]]:
        folders: set[str] = set()
        files: set[str] = set()
        pages = self._client.get_paginator("list_objects_v2")
        with self._translated(doing):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix, Delimiter="/"):
                folders.update(str(entry["Prefix"])[len(prefix) : -1] for entry in page.get("CommonPrefixes", []))
                files.update(str(entry["Key"])[len(prefix) :] for entry in page.get("Contents", []))
        return folders, files

    def _objects(self, prefix: str, doing: str) -> Iterator[tuple[str, str]]:
        """Every object under a prefix with its size and ETag."""
        pages = self._client.get_paginator("list_objects_v2")
        with self._translated(doing):
            for page in pages.paginate(Bucket=self._where.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    etag = str(item["ETag"]).strip('"')
                    yield str(item["Key"]), f"{item['Size']}:{etag}"

    def _contents(self, prefix: str, doing: str) -> Iterator[tuple[str, int, bytes | None]]:
        """The ETag of a single-part upload is the MD5 of its bytes; one of parts ("<hex>-<parts>") is not."""
        for key, stamp in self._objects(prefix, doing):
            size, _, etag = stamp.partition(":")
            md5 = bytes.fromhex(etag) if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) else None
            yield key, int(size), md5

    def _download(self, key: str, target: Path, doing: str) -> None:
        with self._translated(doing):
            self._client.download_file(self._where.bucket, key, str(target))

    def _upload(self, key: str, source: Path, md5: bytes, doing: str) -> None:
        bucket = self._where.bucket
        with self._translated(doing):
            if source.stat().st_size > _SINGLE_PART_LIMIT:
                config = self._sdk.transfer_config(multipart_threshold=_SINGLE_PART_LIMIT)
                self._client.upload_file(str(source), bucket, key, Config=config)
                return
            with source.open("rb") as body:
                self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=base64.b64encode(md5).decode())

    def _delete(self, key: str, doing: str) -> None:
        with self._translated(doing):
            self._client.delete_object(Bucket=self._where.bucket, Key=key)

    def _origin(self) -> str:
        return f"{self._endpoint}/{self._where.bucket}"

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
            return f"access to bucket '{bucket}' is denied ({detail}): the credentials in use need {self._needs}"
        if code == "NoSuchBucket":
            return f"bucket '{bucket}' does not exist at {self._endpoint} ({detail})"
        if code in _GONE:
            return f"the object is gone ({detail}): it was changed or deleted while the model was read"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{detail} (HTTP {status})" if status else str(exc)
