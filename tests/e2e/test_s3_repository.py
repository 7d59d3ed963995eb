"""A model repository in S3, served by the real server from a real S3-compatible server (moto) on loopback: Triton's
`s3://host:port/bucket/path` form, credentials from the environment, polling for a new version, and a server with
wrong keys refusing to start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from tests.conftest import ServerFactory
from tests.e2e.test_model_control import OFFSET_MODEL, Stream, infer, offset_model, output, wait_for
from tests.s3_server import REGION, S3Server, running_s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3_server(tmp_path_factory.mktemp("moto"), enforce_auth=True) as server:
        yield server


def aws_env(access_key: str, secret_key: str) -> dict[str, str]:
    """The server's environment: the keys, the region, and nothing of the developer's own AWS set-up."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=access_key,
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def upload(s3: S3Server, bucket: str, prefix: str, folder: Path) -> None:
    client = s3.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
            )


def test_s3_repository_is_served_and_polled(s3: S3Server, naiad: ServerFactory, tmp_path: Path) -> None:
    local = tmp_path / "local"
    offset_model(local, "steady", 100.0)
    s3.client().create_bucket(Bucket="models")
    upload(s3, "models", "triton-store", local)
    server = naiad.start(
        f"s3://{s3.address}/models/triton-store",
        "--model-control-mode=poll",
        "--repository-poll-secs=0.3",
        env=aws_env(s3.admin.access_key, s3.admin.secret_key),
    )
    assert output(infer(server, "steady")) == 101.0
    stream = Stream(server, "steady")
    with stream.running():
        s3.client().put_object(
            Bucket="models", Key="triton-store/steady/2/model.py", Body=OFFSET_MODEL.format(offset=200.0).encode()
        )
        wait_for(lambda: stream.seen(201.0), "version 2 from S3 to serve")
    assert stream.failures == []
    index = requests.post(server.url + "/v2/repository/index", timeout=5).json()
    assert {"name": "steady", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index
    assert {"name": "steady", "version": "2", "state": "READY"} in index


def test_wrong_keys_stop_the_server_naming_the_repository(s3: S3Server, tmp_path: Path) -> None:
    uri = f"s3://{s3.address}/models/triton-store"
    s3.client().create_bucket(Bucket="keys-test")
    result = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", f"--model-repository={uri}", "--http-port=0", "--allow-grpc=false"],
        capture_output=True, text=True, timeout=60, check=False, env=aws_env(s3.admin.access_key, "wrong-secret"),
    )  # fmt: skip
    assert result.returncode == 1
    assert uri in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


READS_ITS_FILE = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.path = os.path.join(args["model_repository"], args["model_version"], "offset.txt")

    def execute(self, requests):
        offset = float(open(self.path).read())  # read on every request: the copy must stay while it serves
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (pb_utils.get_input_tensor_by_name(r, "INPUT0")
                                                                    .as_numpy() + offset).astype(np.float32))])
            for r in requests
        ]
"""


def test_a_kept_version_keeps_the_copy_it_serves_from(s3: S3Server, naiad: ServerFactory, tmp_path: Path) -> None:
    local = tmp_path / "local"
    folder = offset_model(local, "files", 0.0)
    config = (folder / "config.pbtxt").read_text() + "\nversion_policy: { all: {} }\n"
    (folder / "config.pbtxt").write_text(config)
    (folder / "1" / "model.py").write_text(READS_ITS_FILE)
    (folder / "1" / "offset.txt").write_text("10")
    s3.client().create_bucket(Bucket="kept")
    upload(s3, "kept", "store", local)
    server = naiad.start(
        f"s3://{s3.address}/kept/store",
        "--model-control-mode=poll",
        "--repository-poll-secs=0.3",
        env=aws_env(s3.admin.access_key, s3.admin.secret_key),
    )
    assert output(infer(server, "files", version="1")) == 11.0
    client = s3.client()
    client.put_object(Bucket="kept", Key="store/files/2/model.py", Body=READS_ITS_FILE.encode())
    client.put_object(Bucket="kept", Key="store/files/2/offset.txt", Body=b"20")
    wait_for(lambda: infer(server, "files", version="2").status_code == 200, "version 2 to load")
    assert output(infer(server, "files", version="2")) == 21.0
    assert output(infer(server, "files", version="1")) == 11.0, "version 1 was kept and must still find its files"
