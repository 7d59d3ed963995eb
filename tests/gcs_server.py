"""A real GCS-compatible server for tests: gcp-storage-emulator in a subprocess on loopback, in memory."""

from __future__ import annotations

import shutil
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

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.conftest import free_port
from tests.emulators import stop


@dataclass(frozen=True)
class GcsServer:
    """One running emulator: where it answers. It serves the JSON and download APIs and checks no credentials."""

    url: str  # http://127.0.0.1:port, what STORAGE_EMULATOR_HOST is set to

    def client(self) -> Any:
        """A client pointed at the emulator, to put test data in place."""
        return storage.Client(
            project="naiad-tests", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url}
        )

    def environment(self, folder: Path) -> dict[str, str]:
        """What a naiad process needs to reach the emulator, and nothing of gcloud or a metadata server (`folder`
        stands for an empty gcloud configuration)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "CLOUDSDK_CONFIG": str(folder / "no-gcloud"),
            "GCE_METADATA_IP": f"127.0.0.1:{free_port()}",
            "GCE_METADATA_HOST": f"127.0.0.1:{free_port()}",
        }


def emulator_command() -> list[str]:
    """The emulator's console script, installed beside this interpreter by `pip install gcp-storage-emulator`."""
    script = Path(sys.executable).with_name("gcp-storage-emulator")
    return [str(script)] if script.exists() else [shutil.which("gcp-storage-emulator") or "gcp-storage-emulator"]


@contextmanager
def running_gcs_server(folder: Path) -> Iterator[GcsServer]:
    """Start the emulator on a free loopback port (its log under `folder`), stop it after."""
    port = free_port()
    command = [*emulator_command(), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "gcp-storage-emulator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    try:
        _wait_until_answering(process, url, log_path)
        yield GcsServer(url)
    finally:
        stop(process)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"GCS emulator exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"GCS emulator did not answer at {url} within 60s:\n{log.read_text(errors='replace')}")
