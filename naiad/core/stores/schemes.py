"""Which store a repository URI opens: `s3://`, `gs://` and `as://` are object stores, anything else a folder."""

from __future__ import annotations

from pathlib import Path

from naiad.core.stores.base import Store, StoreError
from naiad.core.stores.local import LocalStore


def open_store(uri: str, cache: Path) -> Store:
    """The store for one `--model-repository` value; remote ones copy models under `cache`. Raises `StoreError`."""
    scheme, separator, _ = uri.partition("://")
    if not separator:
        return LocalStore(uri)
    if scheme == "s3":
        from naiad.core.stores.s3 import S3Store

        return S3Store(uri, cache)
    if scheme == "gs":
        from naiad.core.stores.gcs import GcsStore

        return GcsStore(uri, cache)
    if scheme == "as":
        from naiad.core.stores.azure_blob import AzureBlobStore

        return AzureBlobStore(uri, cache)
    raise StoreError(f"model repository '{uri}': unknown scheme '{scheme}://' (use a folder or s3://, gs://, as://)")
