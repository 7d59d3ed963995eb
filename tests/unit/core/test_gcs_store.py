"""The GCS store against a real GCS emulator on loopback: listing, fingerprints, copies, and what goes wrong."""

# gcp-storage-emulator checks no credentials: a refused or denied request cannot be shown here, only credentials that
# fail before a request is answered (a key file that is missing or no key, a token endpoint that cannot be reached).

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.storage")
pytest.importorskip("gcp_storage_emulator")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from naiad.core.stores import gcs
from naiad.core.stores.base import StoreError
from naiad.core.stores.gcs import GcsStore, parse_gcs_uri
from naiad.core.stores.schemes import open_store
from tests.conftest import free_port
from tests.gcs_server import GcsServer, running_gcs_server
from tests.object_repository import REPOSITORY


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """One emulator for the module's tests."""
    with running_gcs_server(tmp_path_factory.mktemp("gcs")) as running:
        yield running


@pytest.fixture(autouse=True)
def google_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: GcsServer) -> None:
    """Nothing of the developer's own Google setup leaks in: the emulator as the endpoint, no key file, no gcloud
    login, and a metadata server address on loopback where nothing listens, so that looking for an attached service
    account never leaves this machine."""
    for name in list(os.environ):
        if name.startswith(("GOOGLE_", "GCLOUD_", "CLOUDSDK_", "GCE_")) or name in ("API_ENDPOINT_OVERRIDE",):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-config"))
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def new_bucket(server: GcsServer, objects: dict[str, bytes]) -> str:
    """A fresh bucket holding `objects` (name -> bytes)."""
    name = f"naiad-{uuid.uuid4().hex[:16]}"
    bucket = server.client().create_bucket(name)
    for key, body in objects.items():
        bucket.blob(key).upload_from_string(body)
    return name


def put(server: GcsServer, bucket: str, key: str, body: bytes) -> None:
    server.client().bucket(bucket).blob(key).upload_from_string(body)


def delete(server: GcsServer, bucket: str, key: str) -> None:
    server.client().bucket(bucket).blob(key).delete()


@pytest.fixture
def bucket(server: GcsServer) -> str:
    return new_bucket(server, REPOSITORY)


def stamp(body: bytes) -> str:
    """What an object's fingerprint entry is: its size and its MD5, base64 as GCS gives it."""
    return f"{len(body)}:{base64.b64encode(hashlib.md5(body).digest()).decode()}"


def error_of(uri: str, cache: Path) -> str:
    with pytest.raises(StoreError) as caught:
        GcsStore(uri, cache)
    message = str(caught.value)
    assert uri in message
    return message


def service_account_key(folder: Path, token_uri: str) -> Path:
    """A well-formed service account key file (a fresh RSA key) whose token endpoint is `token_uri`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = folder / "service-account.json"
    info = {
        "type": "service_account",
        "project_id": "naiad-tests",
        "private_key_id": "0" * 40,
        "private_key": pem.decode(),
        "client_email": "naiad@naiad-tests.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path


# URI forms


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "base"),
    [
        ("gs://bucket", "bucket", "", "gs://bucket"),
        ("gs://bucket/", "bucket", "", "gs://bucket"),
        ("gs://bucket/models", "bucket", "models/", "gs://bucket"),
        ("gs://bucket/a/b/", "bucket", "a/b/", "gs://bucket"),
        ("gs://bucket//a", "bucket", "a/", "gs://bucket"),
    ],
)
def test_uri_names_bucket_and_folder(uri: str, bucket: str, prefix: str, base: str) -> None:
    where = parse_gcs_uri(uri)
    assert (where.bucket, where.prefix, where.base) == (bucket, prefix, base)


@pytest.mark.parametrize("uri", ["gs://", "gs:///models"])
def test_uri_without_bucket_is_refused(uri: str) -> None:
    with pytest.raises(StoreError, match="gs://bucket/path"):
        parse_gcs_uri(uri)


def test_lists_the_model_folders(bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    assert store.uri == f"gs://{bucket}/models"
    assert store.models() == ["other", "simple"]  # hidden folders and loose files left out


def test_bucket_root_is_a_repository(server: GcsServer, cache: Path) -> None:
    bucket = new_bucket(server, {"a/config.pbtxt": b"", "b/1/model.onnx": b"", ".keep": b""})
    assert GcsStore(f"gs://{bucket}", cache).models() == ["a", "b"]


def test_open_store_routes_gs_uris_here(bucket: str, cache: Path) -> None:
    assert isinstance(open_store(f"gs://{bucket}/models", cache), GcsStore)


# fingerprints


def test_fingerprint_lists_files_and_top_level_folders(bucket: str, cache: Path) -> None:
    fingerprint = GcsStore(f"gs://{bucket}/models", cache).fingerprint("simple")
    assert fingerprint == {
        "1/": "folder",
        "1/model.py": stamp(REPOSITORY["models/simple/1/model.py"]),
        "2/": "folder",  # only a folder marker object: still a version folder, and no file
        "3/": "folder",
        "config.pbtxt": stamp(REPOSITORY["models/simple/config.pbtxt"]),
        "labels/": "folder",
        "labels/classes.txt": stamp(REPOSITORY["models/simple/labels/classes.txt"]),
    }


def test_fingerprint_changes_when_an_object_is_rewritten(server: GcsServer, bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    before = store.fingerprint("simple")
    put(server, bucket, "models/simple/config.pbtxt", b'name: "simple"\nmax_batch_size: 8\n')
    after = store.fingerprint("simple")
    assert after["config.pbtxt"] != before["config.pbtxt"]
    assert {path: stamp for path, stamp in after.items() if path != "config.pbtxt"} == {
        path: stamp for path, stamp in before.items() if path != "config.pbtxt"
    }


def test_fingerprint_of_a_removed_model_is_empty(bucket: str, cache: Path) -> None:
    assert GcsStore(f"gs://{bucket}/models", cache).fingerprint("gone") == {}


def test_model_names_that_leave_the_repository_are_refused(bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    for name in ["..", "../models/simple", "", ".trash"]:
        with pytest.raises(StoreError, match="not a model folder name"):
            store.fingerprint(name)


# copies


def test_fetch_copies_exactly_the_listed_files(bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    folder = store.fetch("simple", store.fingerprint("simple"))
    assert folder.parent == cache.resolve()
    assert folder.name.startswith("simple-")
    on_disk = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))
    assert on_disk == ["1", "1/model.py", "2", "3", "config.pbtxt", "labels", "labels/classes.txt"]
    for relative in ["config.pbtxt", "1/model.py", "labels/classes.txt"]:
        assert (folder / relative).read_bytes() == REPOSITORY[f"models/simple/{relative}"]
    assert [path.name for path in cache.iterdir()] == [folder.name]  # no partial copy left behind


def test_fetch_reuses_a_complete_copy(server: GcsServer, bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    fingerprint = store.fingerprint("other")
    first = store.fetch("other", fingerprint)
    delete(server, bucket, "models/other/config.pbtxt")
    assert store.fetch("other", fingerprint) == first  # nothing downloaded: the object is gone by now
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_fetch_after_a_change_makes_a_new_copy(server: GcsServer, bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    first = store.fetch("other", store.fingerprint("other"))
    put(server, bucket, "models/other/config.pbtxt", b'name: "other"\nmax_batch_size: 4\n')
    second = store.fetch("other", store.fingerprint("other"))
    assert second != first
    assert (second / "config.pbtxt").read_bytes().endswith(b"max_batch_size: 4\n")
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]  # still serving


def test_fetch_of_a_vanished_object_fails_without_leaving_a_copy(server: GcsServer, bucket: str, cache: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    fingerprint = store.fingerprint("simple")
    delete(server, bucket, "models/simple/1/model.py")
    with pytest.raises(StoreError, match=r"1/model\.py.*gone"):
        store.fetch("simple", fingerprint)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("path", ["../escaped.txt", "1/../../escaped.txt", "/etc/escaped", "1//model.py", "./x"])
def test_fetch_refuses_paths_outside_the_model_folder(bucket: str, cache: Path, path: str) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    with pytest.raises(StoreError, match="refusing object"):
        store.fetch("simple", {"config.pbtxt": "1:x", path: "1:x"})
    assert not cache.exists() or list(cache.iterdir()) == []
    assert not (cache.parent / "escaped.txt").exists()


def test_release_deletes_copies_and_nothing_else(bucket: str, cache: Path, tmp_path: Path) -> None:
    store = GcsStore(f"gs://{bucket}/models", cache)
    folder = store.fetch("other", store.fingerprint("other"))
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    store.release(elsewhere)
    store.release(cache)
    store.release(folder / "config.pbtxt")
    assert (elsewhere / "keep.txt").exists()
    assert (folder / "config.pbtxt").exists()
    store.release(folder)
    assert not folder.exists()
    assert cache.is_dir()


# what a wrong URI says


def test_missing_bucket_is_named(cache: Path) -> None:
    message = error_of("gs://no-such-bucket/models", cache)
    assert "bucket 'no-such-bucket' does not exist" in message


def test_unreachable_endpoint_is_named(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcs, "_RETRY_S", 0.5)  # retried for 30s in earnest
    port = free_port()  # nothing listens there
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    message = error_of("gs://bucket/models", cache)
    assert f"the GCS endpoint http://127.0.0.1:{port} did not answer" in message


def test_model_folder_given_as_repository_points_at_its_parent(bucket: str, cache: Path) -> None:
    message = error_of(f"gs://{bucket}/models/simple", cache)
    assert "this is a model folder (it holds config.pbtxt)" in message
    assert message.endswith(f"point the URI at its parent: gs://{bucket}/models")


def test_model_folder_without_config_is_recognised_by_its_versions(server: GcsServer, cache: Path) -> None:
    bucket = new_bucket(server, {"repo/auto/1/model.onnx": b"onnx", "repo/auto/2/model.onnx": b"onnx"})
    message = error_of(f"gs://{bucket}/repo/auto", cache)
    assert "this is a model folder (it holds 1/model.onnx)" in message
    assert message.endswith(f"gs://{bucket}/repo")


def test_model_folder_at_the_bucket_root_says_to_move_it(server: GcsServer, cache: Path) -> None:
    bucket = new_bucket(server, {"config.pbtxt": b"", "1/model.py": b""})
    message = error_of(f"gs://{bucket}", cache)
    assert f"folder named after the model, gs://{bucket}/<model>/" in message


def test_version_folder_given_as_repository_points_two_levels_up(bucket: str, cache: Path) -> None:
    message = error_of(f"gs://{bucket}/models/simple/1", cache)
    assert "version folder of model 'simple'" in message
    assert message.endswith(f"gs://{bucket}/models")


def test_path_with_nothing_under_it_says_so(server: GcsServer, bucket: str, cache: Path) -> None:
    assert "nothing is stored under" in error_of(f"gs://{bucket}/modles", cache)
    empty = new_bucket(server, {})
    message = error_of(f"gs://{empty}", cache)
    assert f"nothing is stored under gs://{empty} (check the bucket and the path)" in message


def test_path_with_only_files_says_it_holds_no_model_folders(server: GcsServer, cache: Path) -> None:
    bucket = new_bucket(server, {"docs/readme.md": b"", "docs/.hidden/config.pbtxt": b""})
    assert "holds no model folders, only files (readme.md)" in error_of(f"gs://{bucket}/docs", cache)


# credentials, as Google's libraries find them


def test_without_credentials_the_bucket_is_read_anonymously(
    server: GcsServer, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's last resort: no key file, no gcloud login, no metadata server. API_ENDPOINT_OVERRIDE points the client
    at the emulator without STORAGE_EMULATOR_HOST's shortcut past the credential search."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", server.url)
    store = GcsStore(f"gs://{bucket}/models", cache)
    assert store.models() == ["other", "simple"]
    folder = store.fetch("other", store.fingerprint("other"))
    assert (folder / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_key_file_that_does_not_exist_is_named(
    bucket: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    missing = tmp_path / "no-such-key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    message = error_of(f"gs://{bucket}/models", cache)
    assert "GOOGLE_APPLICATION_CREDENTIALS names cannot be used" in message
    assert str(missing) in message


def test_key_file_that_is_no_key_is_refused(
    bucket: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    junk = tmp_path / "key.json"
    junk.write_text('{"type": "not_a_credential"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(junk))
    assert "GOOGLE_APPLICATION_CREDENTIALS names cannot be used" in error_of(f"gs://{bucket}/models", cache)


def test_service_account_whose_token_cannot_be_had_says_so(
    server: GcsServer, bucket: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real key file is read and used: the client asks its token endpoint (here a loopback port where nothing
    listens) for a token before the first listing, and that failure is what the message tells."""
    monkeypatch.setattr(gcs, "_RETRY_S", 0.5)  # a token endpoint that cannot be reached is retried for 30s
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", server.url)
    token_uri = f"http://127.0.0.1:{free_port()}/token"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(service_account_key(tmp_path, token_uri)))
    message = error_of(f"gs://{bucket}/models", cache)
    assert "the credentials could not be used" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message


def test_missing_google_cloud_storage_names_the_extra(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # what an interpreter without it finds
    with pytest.raises(StoreError, match=r"pip install 'naiad\[gcs\]'"):
        GcsStore("gs://bucket/models", cache)
