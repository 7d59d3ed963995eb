"""A real S3-compatible server for tests: moto's server in a subprocess on loopback, optionally over TLS and with
IAM authentication enforced, and the keys that it accepts and refuses."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.conftest import free_port
from tests.emulators import self_signed_certificate, stop

REGION = "us-east-1"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class Keys:
    """An access key pair."""

    access_key: str
    secret_key: str


@dataclass
class S3Server:
    """One running moto server: where it answers, and the keys it knows once authentication is on."""

    address: str  # host:port
    url: str  # the endpoint URL, http:// or https://
    ca_bundle: Path | None  # the certificate to trust for https://
    admin: Keys  # allowed everything
    powerless: Keys  # a known user with no permission at all

    def client(self, service: str = "s3") -> Any:
        """A boto3 client that the server accepts, to put test data in place."""
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.admin.access_key,
            aws_secret_access_key=self.admin.secret_key,
            verify=str(self.ca_bundle) if self.ca_bundle else None,
        )


@contextmanager
def running_s3_server(folder: Path, *, tls: bool = False, enforce_auth: bool = False) -> Iterator[S3Server]:
    """Start moto's server on a free loopback port (its log and certificate under `folder`), stop it after."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    ca_bundle = None
    if tls:
        ca_bundle, key = self_signed_certificate(folder)
        command += ["-c", str(ca_bundle), "-k", str(key)]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    log_path = folder / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_answering(process, url, ca_bundle, log_path)
        server = S3Server(f"127.0.0.1:{port}", url, ca_bundle, Keys("unused", "unused"), Keys("unused", "unused"))
        if enforce_auth:
            server.admin = _create_user(server, "naiad-admin", ALLOW_ALL)
            server.powerless = _create_user(server, "naiad-powerless", None)
            _post(url, "/moto-api/reset-auth", b"0", ca_bundle)  # from now on every request must be signed right
        yield server
    finally:
        stop(process)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, ca_bundle: Path | None, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2, context=_context(ca_bundle)):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within 60s:\n{log.read_text(errors='replace')}")


def _create_user(server: S3Server, name: str, policy: dict[str, Any] | None) -> Keys:
    iam = boto3.session.Session().client(
        "iam", endpoint_url=server.url, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup"
    )
    iam.create_user(UserName=name)
    if policy is not None:
        iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
    created = iam.create_access_key(UserName=name)["AccessKey"]
    return Keys(created["AccessKeyId"], created["SecretAccessKey"])


def _post(url: str, path: str, body: bytes, ca_bundle: Path | None) -> None:
    # text/plain: moto reads the raw body, which a form content type would hide from it
    request = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10, context=_context(ca_bundle)):
        pass


def _context(ca_bundle: Path | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle else None
