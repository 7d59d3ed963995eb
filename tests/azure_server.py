"""Azurite (the Azure Storage emulator, from npm) in a subprocess on loopback, and a managed identity endpoint."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import free_port
from tests.emulators import install_once, self_signed_certificate, stop

# The last Azurite that runs on Node 20 (3.36 wants Node 22); --skipApiVersionCheck lets newer SDKs talk to it.
AZURITE_VERSION = "3.35.0"
ACCOUNT = "naiadtests"
STORAGE_AUDIENCE = "https://storage.azure.com"


class AzuriteUnavailableError(Exception):
    """Azurite cannot be installed or run here: the reason, for a skip."""


@dataclass(frozen=True)
class AzuriteServer:
    """One running Azurite: where its blob service answers, the account it knows and the certificate to trust."""

    url: str  # https://127.0.0.1:port/<account>, the account's blob endpoint
    account: str
    key: str  # the account's key, base64
    ca_bundle: Path

    def connection_string(self, *, key: str | None = None) -> str:
        """A connection string for the account (with `key` instead of its own, or "" for none at all)."""
        used = self.key if key is None else key
        account_key = f"AccountKey={used};" if used else ""
        return f"DefaultEndpointsProtocol=https;AccountName={self.account};{account_key}BlobEndpoint={self.url};"

    def client(self) -> Any:
        """A client holding the account key, to put test data in place."""
        return BlobServiceClient.from_connection_string(self.connection_string(), connection_verify=str(self.ca_bundle))


@contextmanager
def azurite_or_skip(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AzuriteServer]:
    """A running Azurite for a session or module fixture; the first run on a machine installs it from npm (about 10s)
    into pytest's cache folder. The test is skipped, saying why, where node or npm is missing."""
    cache = getattr(request.config, "cache", None)
    install_root = cache.mkdir("npm") if cache is not None else tmp_path_factory.mktemp("npm")
    try:
        script = azurite_blob_script(install_root)
    except AzuriteUnavailableError as exc:
        pytest.skip(str(exc))
    with running_azurite(tmp_path_factory.mktemp("azurite"), script) as server:
        yield server


def azurite_blob_script(install_root: Path) -> Path:
    """Azurite's blob service script, `npm install`ed once into a folder of `install_root` named after its version;
    raises `AzuriteUnavailableError` when node or npm is missing or the install fails."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise AzuriteUnavailableError(
            "Azurite, the Azure Storage emulator, runs on Node.js: install node and npm (apt-get install nodejs npm)"
        )
    folder = install_root / f"azurite-{AZURITE_VERSION}"
    script = folder / "node_modules" / ".bin" / "azurite-blob"
    if script.exists():
        return script

    def npm_install(scratch: Path) -> Path:
        command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(scratch), f"azurite@{AZURITE_VERSION}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AzuriteUnavailableError(f"npm install azurite@{AZURITE_VERSION} took over 300s") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise AzuriteUnavailableError(f"npm install azurite@{AZURITE_VERSION} failed: {' | '.join(tail)}")
        return scratch

    install_once(folder, script, npm_install)
    return script


@contextmanager
def running_azurite(folder: Path, script: Path) -> Iterator[AzuriteServer]:
    """Start Azurite's blob service on a free loopback port, over HTTPS, with one account of a fresh key and OAuth
    checks on (its log and certificate under `folder`); stop it after."""
    port = free_port()
    certificate, private_key = self_signed_certificate(folder)
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    command = [
        str(script),
        *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
        *("--cert", str(certificate), "--key", str(private_key), "--oauth", "basic"),
        *("--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"),
    ]
    environment = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{key}"}
    log_path = folder / "azurite.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=environment)
    try:
        url = f"https://127.0.0.1:{port}"
        _wait_until_answering(process, url, certificate, log_path)
        yield AzuriteServer(f"{url}/{ACCOUNT}", ACCOUNT, key, certificate)
    finally:
        stop(process)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, ca_bundle: Path, log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_bundle))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except urllib.error.HTTPError:  # an answer, if only to say that / is no blob request
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"Azurite did not answer at {url} within 60s:\n{log.read_text(errors='replace')}")


def token(audience: str = STORAGE_AUDIENCE, lifetime_s: int = 3600) -> str:
    """A JWT with the claims Azurite's basic OAuth check reads (issuer, audience, lifetime); it checks no
    signature, so there is none worth the name."""

    def part(claims: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime_s,
        "oid": "00000000-0000-0000-0000-000000000001",
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{part({'signature': 'none'})}"


@dataclass
class IdentityEndpoint:
    """A managed identity endpoint as App Service runs one (IDENTITY_ENDPOINT and IDENTITY_HEADER): what it was
    asked, and what it answers."""

    url: str
    secret: str
    audience: str = STORAGE_AUDIENCE  # the audience of the tokens it hands out
    refuse: bool = False  # answer 400, as for an identity not assigned
    asked: list[dict[str, str]] = field(default_factory=list)  # each request's query parameters


@contextmanager
def running_identity_endpoint() -> Iterator[IdentityEndpoint]:
    """Serve tokens on a free loopback port until the block ends."""
    endpoint = IdentityEndpoint(url="", secret=secrets.token_hex(16))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = {name: values[0] for name, values in parse_qs(urlparse(self.path).query).items()}
            endpoint.asked.append(query)
            if self.headers.get("X-IDENTITY-HEADER") != endpoint.secret or endpoint.refuse:
                self._answer(400, {"error": "invalid_request", "error_description": "Identity not found"})
                return
            expires = int(time.time()) + 3600
            self._answer(
                200,
                {
                    "access_token": token(endpoint.audience),
                    "expires_on": str(expires),
                    "resource": query.get("resource", ""),
                    "token_type": "Bearer",
                    "client_id": query.get("client_id", "00000000-0000-0000-0000-000000000002"),
                },
            )

        def _answer(self, status: int, body: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/msi/token"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
