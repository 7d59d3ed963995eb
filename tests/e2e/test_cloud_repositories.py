"""`gs://` and `as://` repositories served by the real server from real emulators on loopback (gcp-storage-emulator,
Azurite), with the credentials each cloud's users set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.test_model_control import infer, offset_model, output


def clean_environment() -> dict[str, str]:
    """The server's environment without the developer's own cloud set-up."""
    prefixes = ("GOOGLE_", "GCLOUD_", "CLOUDSDK_", "GCE_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_", "AWS_")
    return {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}


def model_files(tmp_path: Path) -> dict[str, bytes]:
    """A model repository's objects: one model that adds 3 to its input."""
    local = tmp_path / "local"
    offset_model(local, "cloudy", 3.0)
    return {path.relative_to(local).as_posix(): path.read_bytes() for path in local.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("google.cloud.storage")
    from tests.gcs_server import running_gcs_server

    with running_gcs_server(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def test_gcs_repository_is_served(gcs: object, naiad: ServerFactory, tmp_path: Path) -> None:
    from tests.gcs_server import GcsServer

    assert isinstance(gcs, GcsServer)
    bucket = gcs.client().create_bucket("naiad-models")
    for key, body in model_files(tmp_path).items():
        bucket.blob(f"store/{key}").upload_from_string(body)
    env = clean_environment()
    env.update(
        STORAGE_EMULATOR_HOST=gcs.url,
        CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"),
        GCE_METADATA_IP=f"127.0.0.1:{free_port()}",
        GCE_METADATA_HOST=f"127.0.0.1:{free_port()}",
    )
    server = naiad.start("gs://naiad-models/store", env=env)
    assert output(infer(server, "cloudy")) == 4.0


@pytest.fixture(scope="module")
def azurite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("azure.storage.blob")
    from tests.azure_server import azurite_or_skip

    with azurite_or_skip(request, tmp_path_factory) as server:
        yield server


def test_azure_repository_is_served(azurite: object, naiad: ServerFactory, tmp_path: Path) -> None:
    from tests.azure_server import AzuriteServer

    assert isinstance(azurite, AzuriteServer)
    container = azurite.client().create_container("models")
    for key, body in model_files(tmp_path).items():
        container.upload_blob(f"store/{key}", body)
    env = clean_environment()
    env.update(
        AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string(),
        AZURE_CONFIG_DIR=str(tmp_path / "no-azure-cli"),
        REQUESTS_CA_BUNDLE=str(azurite.ca_bundle),
    )
    server = naiad.start(f"as://{azurite.account}/models/store", env=env)
    assert output(infer(server, "cloudy")) == 4.0
