"""The S3 store against a real S3-compatible server (moto) on loopback: URI forms, listing, fingerprints, copies,
and the messages that a wrong URI or wrong credentials give."""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from naiad.core.stores.base import StoreError
from naiad.core.stores.s3 import S3Store, parse_s3_uri
from naiad.core.stores.schemes import open_store
from tests.conftest import free_port
from tests.object_repository import REPOSITORY
from tests.s3_server import S3Server, running_s3_server


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server for the module's tests, refusing requests that unknown or wrong keys sign."""
    with running_s3_server(tmp_path_factory.mktemp("moto"), enforce_auth=True) as server:
        yield server


@pytest.fixture(scope="session")
def s3_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second moto server, over HTTPS with a certificate of its own (authentication not enforced)."""
    with running_s3_server(tmp_path_factory.mktemp("moto-tls"), tls=True) as server:
        yield server


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3: S3Server) -> None:
    """Nothing of the developer's own AWS setup leaks in: the server's admin keys, no config file, no instance role."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.admin.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.admin.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def new_bucket(server: S3Server, objects: dict[str, bytes]) -> str:
    """A fresh bucket holding `objects` (key -> bytes)."""
    bucket = f"naiad-{uuid.uuid4().hex[:16]}"
    client = server.client()
    client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return new_bucket(s3, REPOSITORY)


def stamp(body: bytes) -> str:
    """What a single-part upload's fingerprint entry is: its size and its ETag, the MD5 of the bytes."""
    return f"{len(body)}:{hashlib.md5(body).hexdigest()}"


def open_at(server: S3Server, path: str, cache: Path) -> S3Store:
    """The store for `s3://host:port/<path>`."""
    return S3Store(f"s3://{server.address}/{path}", cache)


def error_of(uri: str, cache: Path) -> str:
    with pytest.raises(StoreError) as caught:
        S3Store(uri, cache)
    message = str(caught.value)
    assert uri in message
    return message


# URI forms


@pytest.mark.parametrize(
    ("uri", "endpoint", "bucket", "prefix", "base"),
    [
        ("s3://bucket", None, "bucket", "", "s3://bucket"),
        ("s3://bucket/", None, "bucket", "", "s3://bucket"),
        ("s3://bucket/models", None, "bucket", "models/", "s3://bucket"),
        ("s3://bucket/a/b/", None, "bucket", "a/b/", "s3://bucket"),
        ("s3://minio:9000/bucket/models", "http://minio:9000", "bucket", "models/", "s3://minio:9000/bucket"),
        ("s3://10.0.0.1:9000/bucket", "http://10.0.0.1:9000", "bucket", "", "s3://10.0.0.1:9000/bucket"),
        ("s3://https://s3.corp:443/bkt/m", "https://s3.corp:443", "bkt", "m/", "s3://https://s3.corp:443/bkt"),
        ("s3://http://minio:9000/bkt/m", "http://minio:9000", "bkt", "m/", "s3://http://minio:9000/bkt"),
    ],
)
def test_uri_forms_name_endpoint_bucket_and_folder(
    uri: str, endpoint: str | None, bucket: str, prefix: str, base: str
) -> None:
    where = parse_s3_uri(uri)
    assert (where.endpoint, where.bucket, where.prefix, where.base) == (endpoint, bucket, prefix, base)


@pytest.mark.parametrize("uri", ["s3://", "s3:///models", "s3://minio:9000", "s3://minio:9000/", "s3://https:///b"])
def test_uri_without_bucket_or_host_is_refused(uri: str) -> None:
    with pytest.raises(StoreError, match="s3://bucket/path"):
        parse_s3_uri(uri)


def test_host_port_form_lists_the_model_folders(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    assert store.uri == f"s3://{s3.address}/{bucket}/models"
    assert store.models() == ["other", "simple"]  # hidden folders and loose files left out


def test_plain_form_takes_the_endpoint_from_boto3_configuration(
    s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
    assert S3Store(f"s3://{bucket}/models/", cache).models() == ["other", "simple"]


def test_bucket_root_is_a_repository(s3: S3Server, cache: Path) -> None:
    bucket = new_bucket(s3, {"a/config.pbtxt": b"", "b/1/model.onnx": b"", ".keep": b""})
    assert open_at(s3, bucket, cache).models() == ["a", "b"]


def test_https_form_verifies_the_server_certificate(
    s3_tls: S3Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3_tls, REPOSITORY)
    uri = f"s3://https://{s3_tls.address}/{bucket}/models"
    assert "certificate" in error_of(uri, cache).lower()  # the test certificate is not trusted by default
    assert s3_tls.ca_bundle is not None
    monkeypatch.setenv("AWS_CA_BUNDLE", str(s3_tls.ca_bundle))
    store = S3Store(uri, cache)
    assert store.models() == ["other", "simple"]
    folder = store.fetch("other", store.fingerprint("other"))
    assert (folder / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_web_identity_credentials_are_found_by_boto3(
    s3_tls: S3Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IRSA setup: no keys at all, a token file and a role that STS (moto's, at the same endpoint) exchanges."""
    assert s3_tls.ca_bundle is not None
    bucket = new_bucket(s3_tls, REPOSITORY)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJuYWlhZCJ9.c2lnbmF0dXJl")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/naiad")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_tls.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(s3_tls.ca_bundle))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert S3Store(f"s3://{bucket}/models", cache).models() == ["other", "simple"]


def test_open_store_routes_s3_uris_here(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_store(f"s3://{s3.address}/{bucket}/models", cache)
    assert isinstance(store, S3Store)


# fingerprints


def test_fingerprint_lists_files_and_top_level_folders(s3: S3Server, bucket: str, cache: Path) -> None:
    fingerprint = open_at(s3, f"{bucket}/models", cache).fingerprint("simple")
    assert fingerprint == {
        "1/": "folder",
        "1/model.py": stamp(REPOSITORY["models/simple/1/model.py"]),
        "2/": "folder",  # only a directory marker object: still a version folder, and no file
        "3/": "folder",
        "config.pbtxt": stamp(REPOSITORY["models/simple/config.pbtxt"]),
        "labels/": "folder",
        "labels/classes.txt": stamp(REPOSITORY["models/simple/labels/classes.txt"]),
    }


def test_fingerprint_changes_when_an_object_is_rewritten(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    before = store.fingerprint("simple")
    s3.client().put_object(Bucket=bucket, Key="models/simple/config.pbtxt", Body=b'name: "simple"\nmax_batch_size: 8\n')
    after = store.fingerprint("simple")
    assert after["config.pbtxt"] != before["config.pbtxt"]
    assert {path: stamp for path, stamp in after.items() if path != "config.pbtxt"} == {
        path: stamp for path, stamp in before.items() if path != "config.pbtxt"
    }


def test_fingerprint_of_a_removed_model_is_empty(s3: S3Server, bucket: str, cache: Path) -> None:
    assert open_at(s3, f"{bucket}/models", cache).fingerprint("gone") == {}


def test_model_names_that_leave_the_repository_are_refused(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    for name in ["..", "../models/simple", "", ".trash"]:
        with pytest.raises(StoreError, match="not a model folder name"):
            store.fingerprint(name)


# copies


def test_fetch_copies_exactly_the_listed_files(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    folder = store.fetch("simple", store.fingerprint("simple"))
    assert folder.parent == cache.resolve()
    assert folder.name.startswith("simple-")
    on_disk = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))
    assert on_disk == ["1", "1/model.py", "2", "3", "config.pbtxt", "labels", "labels/classes.txt"]
    for relative in ["config.pbtxt", "1/model.py", "labels/classes.txt"]:
        assert (folder / relative).read_bytes() == REPOSITORY[f"models/simple/{relative}"]
    assert [path.name for path in cache.iterdir()] == [folder.name]  # no partial copy left behind


def test_fetch_reuses_a_complete_copy(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    fingerprint = store.fingerprint("other")
    first = store.fetch("other", fingerprint)
    s3.client().delete_object(Bucket=bucket, Key="models/other/config.pbtxt")
    assert store.fetch("other", fingerprint) == first  # nothing downloaded: the object is gone by now
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_fetch_after_a_change_makes_a_new_copy(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    first = store.fetch("other", store.fingerprint("other"))
    s3.client().put_object(Bucket=bucket, Key="models/other/config.pbtxt", Body=b'name: "other"\nmax_batch_size: 4\n')
    second = store.fetch("other", store.fingerprint("other"))
    assert second != first
    assert (second / "config.pbtxt").read_bytes().endswith(b"max_batch_size: 4\n")
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]  # still serving


def test_fetch_of_a_vanished_object_fails_without_leaving_a_copy(s3: S3Server, bucket: str, cache: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    fingerprint = store.fingerprint("simple")
    s3.client().delete_object(Bucket=bucket, Key="models/simple/1/model.py")
    with pytest.raises(StoreError, match=r"1/model\.py.*gone"):
        store.fetch("simple", fingerprint)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("path", ["../escaped.txt", "1/../../escaped.txt", "/etc/escaped", "1//model.py", "./x"])
def test_fetch_refuses_paths_outside_the_model_folder(s3: S3Server, bucket: str, cache: Path, path: str) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
    with pytest.raises(StoreError, match="refusing object"):
        store.fetch("simple", {"config.pbtxt": "1:x", path: "1:x"})
    assert not cache.exists() or list(cache.iterdir()) == []
    assert not (cache.parent / "escaped.txt").exists()


def test_release_deletes_copies_and_nothing_else(s3: S3Server, bucket: str, cache: Path, tmp_path: Path) -> None:
    store = open_at(s3, f"{bucket}/models", cache)
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


# what a wrong URI or wrong credentials say


def test_unknown_access_key_names_the_uri_and_the_cause(
    s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    message = error_of(f"s3://{s3.address}/{bucket}/models", cache)
    assert "InvalidAccessKeyId" in message
    assert "AWS_ACCESS_KEY_ID" in message


def test_wrong_secret_key_names_the_uri_and_the_cause(
    s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert "SignatureDoesNotMatch" in error_of(f"s3://{s3.address}/{bucket}/models", cache)


def test_keys_without_permission_are_denied(
    s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.powerless.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.powerless.secret_key)
    message = error_of(f"s3://{s3.address}/{bucket}/models", cache)
    assert "AccessDenied" in message
    assert "s3:ListBucket" in message


def test_no_credentials_at_all_says_what_to_set(
    s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message = error_of(f"s3://{s3.address}/{bucket}/models", cache)
    assert "no AWS credentials" in message
    for setting in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE"]:
        assert setting in message


def test_unknown_profile_is_named(s3: S3Server, bucket: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    assert "no-such-profile" in error_of(f"s3://{s3.address}/{bucket}/models", cache)


def test_missing_bucket_is_named(s3: S3Server, cache: Path) -> None:
    message = error_of(f"s3://{s3.address}/no-such-bucket/models", cache)
    assert "bucket 'no-such-bucket' does not exist" in message


def test_unreachable_endpoint_is_named(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    port = free_port()  # nothing listens there
    message = error_of(f"s3://127.0.0.1:{port}/bucket/models", cache)
    assert f"the S3 endpoint http://127.0.0.1:{port} cannot be reached" in message


def test_model_folder_given_as_repository_points_at_its_parent(s3: S3Server, bucket: str, cache: Path) -> None:
    message = error_of(f"s3://{s3.address}/{bucket}/models/simple", cache)
    assert "this is a model folder (it holds config.pbtxt)" in message
    assert message.endswith(f"point the URI at its parent: s3://{s3.address}/{bucket}/models")


def test_model_folder_without_config_is_recognised_by_its_versions(s3: S3Server, cache: Path) -> None:
    bucket = new_bucket(s3, {"repo/auto/1/model.onnx": b"onnx", "repo/auto/2/model.onnx": b"onnx"})
    message = error_of(f"s3://{s3.address}/{bucket}/repo/auto", cache)
    assert "this is a model folder (it holds 1/model.onnx)" in message
    assert message.endswith(f"s3://{s3.address}/{bucket}/repo")


def test_model_folder_at_the_bucket_root_says_to_move_it(s3: S3Server, cache: Path) -> None:
    bucket = new_bucket(s3, {"config.pbtxt": b"", "1/model.py": b""})
    assert "folder named after the model" in error_of(f"s3://{s3.address}/{bucket}", cache)


def test_version_folder_given_as_repository_points_two_levels_up(s3: S3Server, bucket: str, cache: Path) -> None:
    message = error_of(f"s3://{s3.address}/{bucket}/models/simple/1", cache)
    assert "version folder of model 'simple'" in message
    assert message.endswith(f"s3://{s3.address}/{bucket}/models")


def test_path_with_nothing_under_it_says_so(s3: S3Server, bucket: str, cache: Path) -> None:
    assert "nothing is stored under" in error_of(f"s3://{s3.address}/{bucket}/modles", cache)
    empty = new_bucket(s3, {})
    assert "nothing is stored under" in error_of(f"s3://{s3.address}/{empty}", cache)


def test_path_with_only_files_says_it_holds_no_model_folders(s3: S3Server, cache: Path) -> None:
    bucket = new_bucket(s3, {"docs/readme.md": b"", "docs/.hidden/config.pbtxt": b""})
    assert "holds no model folders, only files (readme.md)" in error_of(f"s3://{s3.address}/{bucket}/docs", cache)


def test_missing_boto3_names_the_extra(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3.session", None)  # what an interpreter without boto3 finds
    with pytest.raises(StoreError, match=r"pip install 'naiad\[s3\]'"):
        S3Store("s3://bucket/models", cache)
