"""Which store a repository URI opens: `s3://`, `gs://` and `as://` are object stores, anything else a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from naiad.core.stores.base import Store, StoreError
from naiad.core.stores.local import LocalStore
from naiad.core.stores.objects import ObjectStore

OBJECT_SCHEMES = ("s3", "gs", "as")


def open_store(uri: str, cache: Path) -> Store:
    """The store for one `--model-repository` value; remote ones copy models under `cache`. Raises `StoreError`."""
    if "://" not in uri:
        return LocalStore(uri)
    return _object_store_type(uri)(uri, cache)


def open_for_writing(uri: str) -> ObjectStore[Any]:
    """The object store at `uri` opened for uploading (`naiad push`): the path may hold nothing yet. Raises
    `StoreError`, also for a URI that names no object store."""
    return _object_store_type(uri).for_writing(uri)


def _object_store_type(uri: str) -> type[ObjectStore[Any]]:
    scheme, separator, _ = uri.partition("://")
    if scheme == "s3":
        from naiad.core.stores.s3 import S3Store

        return S3Store
    if scheme == "gs":
        from naiad.core.stores.gcs import GcsStore

        return GcsStore
    if scheme == "as":
        from naiad.core.stores.azure_blob import AzureBlobStore

        return AzureBlobStore
    if not separator:
        raise StoreError(f"'{uri}' is not an object store URI (use s3://, gs:// or as://)")
    raise StoreError(f"model repository '{uri}': unknown scheme '{scheme}://' (use a folder or s3://, gs://, as://)")
