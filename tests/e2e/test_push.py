"""`naiad push REPO URI` as a user runs it, against real S3 (moto, authentication enforced), GCS and Azure emulators
on loopback: the check first, the bytes in the bucket, cheap re-pushes, --delete, --dry-run, wrong keys, and a
server serving what was pushed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from tests import models
from tests.conftest import ServerFactory
from tests.e2e import test_s3_repository
from tests.e2e.test_cloud_repositories import clean_environment
from tests.e2e.test_model_control import infer, offset_model, output
from tests.e2e.test_s3_repository import aws_env
from tests.s3_server import S3Server

s3 = test_s3_repository.s3  # the module fixture: moto on loopback, authentication enforced


def push(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naiad", "push", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def repository(tmp_path: Path) -> Path:
    """add_sub with versions 1 and 2, a label file, and what a push must leave behind (hidden, __pycache__)."""
    repo = tmp_path / "models"
    folder = models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB, versions=(1, 2))
    (folder / "labels.txt").write_text("sum\ndifference\n")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "notes.txt").write_text("hidden")
    (folder / "1" / "__pycache__").mkdir()
    (folder / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    return repo


def local_bytes(repo: Path) -> dict[str, bytes]:
    return {
        path.relative_to(repo).as_posix(): path.read_bytes()
        for path in repo.rglob("*")
        if path.is_file() and ".ipynb_checkpoints" not in path.parts and "__pycache__" not in path.parts
    }


def s3_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"][len(prefix) :]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed
    }


def new_bucket(s3: S3Server) -> str:
    bucket = f"push-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    return bucket


def test_push_uploads_skips_unchanged_and_deletes(s3: S3Server, tmp_path: Path) -> None:
    repo, bucket = repository(tmp_path), new_bucket(s3)
    uri = f"s3://{s3.address}/{bucket}/triton"
    env = aws_env(s3.admin.access_key, s3.admin.secret_key)
    first = push(str(repo), uri, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ok    add_sub: version 2 (python)" in first.stdout  # the check's report
    assert f"pushed to {uri}: 4 file(s) uploaded" in first.stdout and "0 unchanged" in first.stdout
    assert "uploading: " in first.stderr and "4 / 4 files" in first.stderr
    assert s3_objects(s3, bucket, "triton/") == local_bytes(repo)
    etag = s3.client().head_object(Bucket=bucket, Key="triton/add_sub/1/model.py")["ETag"].strip('"')
    assert etag == hashlib.md5(models.ADD_SUB.encode()).hexdigest()

    (repo / "add_sub" / "labels.txt").write_text("changed\n")
    again = push(str(repo), uri, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 file(s) uploaded" in again.stdout and "3 unchanged" in again.stdout

    for path in (repo / "add_sub" / "2").iterdir():
        path.unlink()
    (repo / "add_sub" / "2").rmdir()
    kept = push(str(repo), uri, "--no-check", env=env)
    assert "1 object(s) under" in kept.stdout and "add_sub/2/model.py" in kept.stdout and "kept" in kept.stdout
    dry = push(str(repo), uri, "--delete", "--dry-run", "--no-check", env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would delete  add_sub/2/model.py" in dry.stdout and "nothing was changed" in dry.stdout
    assert "triton/add_sub/2/model.py" in {f"triton/{key}" for key in s3_objects(s3, bucket, "triton/")}
    deleted = push(str(repo), uri, "--delete", "--no-check", env=env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "0 file(s) uploaded" in deleted.stdout and "3 unchanged, 1 deleted" in deleted.stdout
    assert s3_objects(s3, bucket, "triton/") == local_bytes(repo)


def test_dry_run_changes_nothing(s3: S3Server, tmp_path: Path) -> None:
    repo, bucket = repository(tmp_path), new_bucket(s3)
    result = push(
        str(repo), f"s3://{s3.address}/{bucket}", "--dry-run", env=aws_env(s3.admin.access_key, s3.admin.secret_key)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would upload  add_sub/config.pbtxt" in result.stdout
    assert "dry run: 4 file(s) to upload" in result.stdout
    assert s3_objects(s3, bucket, "") == {}


def test_a_repository_that_would_not_load_is_not_uploaded(s3: S3Server, tmp_path: Path) -> None:
    repo, bucket = tmp_path / "models", new_bucket(s3)
    models.write_model(repo, "renamed", models.add_sub_config(name="other"), models.ADD_SUB)
    result = push(str(repo), f"s3://{s3.address}/{bucket}", env=aws_env(s3.admin.access_key, s3.admin.secret_key))
    assert result.returncode == 1
    assert "FAIL  renamed" in result.stdout
    assert "nothing was uploaded" in result.stderr
    assert s3_objects(s3, bucket, "") == {}


def test_wrong_keys_and_missing_permissions_name_the_uri(s3: S3Server, tmp_path: Path) -> None:
    repo, bucket = repository(tmp_path), new_bucket(s3)
    uri = f"s3://{s3.address}/{bucket}/triton"
    wrong = push(str(repo), uri, "--no-check", env=aws_env(s3.admin.access_key, "wrong-secret"))
    assert wrong.returncode == 1
    assert uri in wrong.stderr and "the secret key does not match" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
    denied = push(str(repo), uri, "--no-check", env=aws_env(s3.powerless.access_key, s3.powerless.secret_key))
    assert denied.returncode == 1
    assert uri in denied.stderr and "s3:PutObject" in denied.stderr, denied.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    env = clean_environment()
    local = push(str(repo), str(tmp_path / "elsewhere"), env=env)
    assert local.returncode == 2 and "is a local path" in local.stderr and "rsync" in local.stderr
    assert push(str(repo), "ftp://host/models", env=env).returncode == 2
    assert push(str(tmp_path / "missing"), "s3://bucket/models", env=env).returncode == 2
    assert push(str(repo), env=env).returncode == 2
    helped = push("--help", env=env)
    assert helped.returncode == 0 and "gs://my-bucket" in helped.stdout and "as://myaccount" in helped.stdout


def test_a_pushed_repository_is_served(s3: S3Server, naiad: ServerFactory, tmp_path: Path) -> None:
    repo, bucket = tmp_path / "local", new_bucket(s3)
    offset_model(repo, "pushed", 5.0)
    uri = f"s3://{s3.address}/{bucket}/store"
    env = aws_env(s3.admin.access_key, s3.admin.secret_key)
    result = push(str(repo), uri, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    server = naiad.start(uri, env=env)
    assert output(infer(server, "pushed")) == 6.0


def test_push_to_gcs(tmp_path: Path) -> None:
    pytest.importorskip("google.cloud.storage")
    from tests.gcs_server import running_gcs_server

    repo = repository(tmp_path)
    with running_gcs_server(tmp_path) as gcs:
        gcs.client().create_bucket("pushed")
        env = {**clean_environment(), **gcs.environment(tmp_path)}
        first = push(str(repo), "gs://pushed/models", "--no-check", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        blobs = gcs.client().list_blobs("pushed", prefix="models/")
        assert {blob.name.removeprefix("models/"): blob.download_as_bytes() for blob in blobs} == local_bytes(repo)
        again = push(str(repo), "gs://pushed/models", "--no-check", env=env)
        assert "0 file(s) uploaded" in again.stdout and "4 unchanged" in again.stdout, again.stdout + again.stderr


@pytest.fixture(scope="module")
def azurite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("azure.storage.blob")
    from tests.azure_server import azurite_or_skip

    with azurite_or_skip(request, tmp_path_factory) as server:
        yield server


def test_push_to_azure(azurite: object, tmp_path: Path) -> None:
    from tests.azure_server import AzuriteServer

    assert isinstance(azurite, AzuriteServer)
    repo = repository(tmp_path)
    container = azurite.client().create_container("pushed")
    env = clean_environment()
    env.update(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string(),
        AZURE_CONFIG_DIR=str(tmp_path / "no-azure-cli"),
        REQUESTS_CA_BUNDLE=str(azurite.ca_bundle),
    )
    uri = f"as://{azurite.account}/pushed/models"
    first = push(str(repo), uri, "--no-check", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    stored = {
        blob.name.removeprefix("models/"): container.download_blob(blob.name).readall()
        for blob in container.list_blobs(name_starts_with="models/")
    }
    assert stored == local_bytes(repo)
    again = push(str(repo), uri, "--no-check", env=env)
    assert "0 file(s) uploaded" in again.stdout and "4 unchanged" in again.stdout, again.stdout + again.stderr
    wrong = push(
        str(repo),
        uri,
        "--no-check",
        env={**env, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string(key="d3Jvbmc=")},
    )
    assert wrong.returncode == 1 and uri in wrong.stderr, wrong.stderr
