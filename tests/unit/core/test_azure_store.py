"""The Azure Blob store against Azurite over HTTPS on loopback: listing, fingerprints, copies, and what goes wrong."""

# Azurite checks every shared-key signature, and a bearer token's issuer, audience and lifetime (not its signature):
# the tokens come from a managed identity endpoint on loopback, as App Service runs one.

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("azure.storage.blob")

from naiad.core.stores import azure_blob
from naiad.core.stores.azure_blob import AzureBlobStore, parse_azure_uri
from naiad.core.stores.base import StoreError
from naiad.core.stores.schemes import open_store
from tests.azure_server import AzuriteServer, IdentityEndpoint, azurite_or_skip, running_identity_endpoint
from tests.conftest import free_port
from tests.object_repository import REPOSITORY

_VARIABLES = ("AZURE_", "IDENTITY_", "MSI_", "IMDS_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@pytest.fixture(scope="session")
def azurite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """One Azurite for the module's tests; the first run on a machine installs it from npm (about 10s)."""
    with azurite_or_skip(request, tmp_path_factory) as server:
        yield server


@pytest.fixture(autouse=True)
def azure_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing of the developer's own Azure setup leaks in: no storage variables, no managed identity endpoint, no
    Azure CLI login."""
    for name in list(os.environ):
        if name.startswith(_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure-cli"))


@pytest.fixture
def server(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzuriteServer:
    """Azurite, with the connection string (the account key in it) and its certificate trusted."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite.ca_bundle))
    return azurite


@pytest.fixture
def identity(server: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    """A managed identity endpoint as App Service has one, and a connection string that names only the endpoint."""
    with running_identity_endpoint() as endpoint:
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
        monkeypatch.setenv("IDENTITY_HEADER", endpoint.secret)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string(key=""))
        yield endpoint


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def new_container(server: AzuriteServer, objects: dict[str, bytes], *, public: bool = False) -> str:
    """A fresh container holding `objects` (name -> bytes), readable anonymously when `public`."""
    name = f"naiad-{uuid.uuid4().hex[:16]}"
    container = server.client().create_container(name, public_access="container" if public else None)
    for key, body in objects.items():
        container.upload_blob(key, body)
    return name


def put(server: AzuriteServer, container: str, key: str, body: bytes) -> None:
    server.client().get_container_client(container).upload_blob(key, body, overwrite=True)


def delete(server: AzuriteServer, container: str, key: str) -> None:
    server.client().get_container_client(container).delete_blob(key)


def stamp(server: AzuriteServer, container: str, key: str) -> str:
    """What a blob's fingerprint entry is: its size and its ETag."""
    properties = server.client().get_blob_client(container, key).get_blob_properties()
    etag = properties.etag.strip('"')
    return f"{properties.size}:{etag}"


@pytest.fixture
def container(server: AzuriteServer) -> str:
    return new_container(server, REPOSITORY)


def uri(server: AzuriteServer, path: str) -> str:
    return f"as://{server.account}/{path}"


def error_of(uri: str, cache: Path) -> str:
    with pytest.raises(StoreError) as caught:
        AzureBlobStore(uri, cache)
    message = str(caught.value)
    assert uri in message
    return message


# URI forms


@pytest.mark.parametrize(
    ("uri", "account", "container", "prefix", "base"),
    [
        ("as://acct/ctr", "acct", "ctr", "", "as://acct/ctr"),
        ("as://acct/ctr/", "acct", "ctr", "", "as://acct/ctr"),
        ("as://acct/ctr/models", "acct", "ctr", "models/", "as://acct/ctr"),
        ("as://acct/ctr/a/b/", "acct", "ctr", "a/b/", "as://acct/ctr"),
        ("as://acct.blob.core.windows.net/ctr/m", "acct", "ctr", "m/", "as://acct.blob.core.windows.net/ctr"),
    ],
)
def test_uri_names_account_container_and_folder(uri: str, account: str, container: str, prefix: str, base: str) -> None:
    where = parse_azure_uri(uri)
    assert (where.account, where.container, where.prefix, where.base) == (account, container, prefix, base)


@pytest.mark.parametrize("uri", ["as://", "as://acct", "as://acct/", "as:///ctr/models"])
def test_uri_without_account_or_container_is_refused(uri: str) -> None:
    with pytest.raises(StoreError, match="as://account/container/path"):
        parse_azure_uri(uri)


def test_lists_the_model_folders(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    assert store.uri == uri(server, f"{container}/models")
    assert store.models() == ["other", "simple"]  # hidden folders and loose files left out


def test_container_root_is_a_repository(server: AzuriteServer, cache: Path) -> None:
    container = new_container(server, {"a/config.pbtxt": b"", "b/1/model.onnx": b"", ".keep": b""})
    assert AzureBlobStore(uri(server, container), cache).models() == ["a", "b"]


def test_open_store_routes_as_uris_here(server: AzuriteServer, container: str, cache: Path) -> None:
    assert isinstance(open_store(uri(server, f"{container}/models"), cache), AzureBlobStore)


def test_account_variable_wins_over_the_uri_as_in_triton(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", server.account)
    assert AzureBlobStore(f"as://someotherhost/{container}/models", cache).models() == ["other", "simple"]


# fingerprints


def test_fingerprint_lists_files_and_top_level_folders(server: AzuriteServer, container: str, cache: Path) -> None:
    fingerprint = AzureBlobStore(uri(server, f"{container}/models"), cache).fingerprint("simple")
    assert fingerprint == {
        "1/": "folder",
        "1/model.py": stamp(server, container, "models/simple/1/model.py"),
        "2/": "folder",  # only a folder marker blob: still a version folder, and no file
        "3/": "folder",
        "config.pbtxt": stamp(server, container, "models/simple/config.pbtxt"),
        "labels/": "folder",
        "labels/classes.txt": stamp(server, container, "models/simple/labels/classes.txt"),
    }
    assert fingerprint["config.pbtxt"].startswith(f"{len(REPOSITORY['models/simple/config.pbtxt'])}:0x")


def test_fingerprint_changes_when_a_blob_is_rewritten(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    before = store.fingerprint("simple")
    put(server, container, "models/simple/config.pbtxt", b'name: "simple"\nmax_batch_size: 8\n')
    after = store.fingerprint("simple")
    assert after["config.pbtxt"] != before["config.pbtxt"]
    assert {path: stamp for path, stamp in after.items() if path != "config.pbtxt"} == {
        path: stamp for path, stamp in before.items() if path != "config.pbtxt"
    }


def test_fingerprint_of_a_removed_model_is_empty(server: AzuriteServer, container: str, cache: Path) -> None:
    assert AzureBlobStore(uri(server, f"{container}/models"), cache).fingerprint("gone") == {}


def test_model_names_that_leave_the_repository_are_refused(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    for name in ["..", "../models/simple", "", ".trash"]:
        with pytest.raises(StoreError, match="not a model folder name"):
            store.fingerprint(name)


# copies


def test_fetch_copies_exactly_the_listed_files(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    folder = store.fetch("simple", store.fingerprint("simple"))
    assert folder.parent == cache.resolve()
    assert folder.name.startswith("simple-")
    on_disk = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))
    assert on_disk == ["1", "1/model.py", "2", "3", "config.pbtxt", "labels", "labels/classes.txt"]
    for relative in ["config.pbtxt", "1/model.py", "labels/classes.txt"]:
        assert (folder / relative).read_bytes() == REPOSITORY[f"models/simple/{relative}"]
    assert [path.name for path in cache.iterdir()] == [folder.name]  # no partial copy left behind


def test_fetch_reuses_a_complete_copy(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    fingerprint = store.fingerprint("other")
    first = store.fetch("other", fingerprint)
    delete(server, container, "models/other/config.pbtxt")
    assert store.fetch("other", fingerprint) == first  # nothing downloaded: the blob is gone by now
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_fetch_after_a_change_makes_a_new_copy(server: AzuriteServer, container: str, cache: Path) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    first = store.fetch("other", store.fingerprint("other"))
    put(server, container, "models/other/config.pbtxt", b'name: "other"\nmax_batch_size: 4\n')
    second = store.fetch("other", store.fingerprint("other"))
    assert second != first
    assert (second / "config.pbtxt").read_bytes().endswith(b"max_batch_size: 4\n")
    assert (first / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]  # still serving


def test_fetch_of_a_vanished_blob_fails_without_leaving_a_copy(
    server: AzuriteServer, container: str, cache: Path
) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    fingerprint = store.fingerprint("simple")
    delete(server, container, "models/simple/1/model.py")
    with pytest.raises(StoreError, match=r"1/model\.py.*gone"):
        store.fetch("simple", fingerprint)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("path", ["../escaped.txt", "1/../../escaped.txt", "/etc/escaped", "1//model.py", "./x"])
def test_fetch_refuses_paths_outside_the_model_folder(
    server: AzuriteServer, container: str, cache: Path, path: str
) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    with pytest.raises(StoreError, match="refusing object"):
        store.fetch("simple", {"config.pbtxt": "1:x", path: "1:x"})
    assert not cache.exists() or list(cache.iterdir()) == []
    assert not (cache.parent / "escaped.txt").exists()


def test_release_deletes_copies_and_nothing_else(
    server: AzuriteServer, container: str, cache: Path, tmp_path: Path
) -> None:
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
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


def test_missing_container_is_named(server: AzuriteServer, cache: Path) -> None:
    message = error_of(uri(server, "no-such-container/models"), cache)
    assert f"container 'no-such-container' does not exist in account '{server.account}'" in message


def test_connection_string_for_another_account_is_named(server: AzuriteServer, container: str, cache: Path) -> None:
    message = error_of(f"as://otheraccount/{container}/models", cache)
    assert f"AZURE_STORAGE_CONNECTION_STRING is for account '{server.account}'" in message
    assert "account 'otheraccount' (from the URI)" in message


def test_unreachable_endpoint_is_named(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(azure_blob, "_RETRIES", 0)  # retried for about 10s in earnest
    port = free_port()  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}/acct"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=acct;AccountKey=a2V5;BlobEndpoint={endpoint};")
    message = error_of("as://acct/ctr/models", cache)
    assert f"the Azure endpoint {endpoint} cannot be reached" in message


def test_untrusted_certificate_is_named(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azure_blob, "_RETRIES", 0)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert "certificate" in error_of(uri(server, f"{container}/models"), cache).lower()


def test_model_folder_given_as_repository_points_at_its_parent(
    server: AzuriteServer, container: str, cache: Path
) -> None:
    message = error_of(uri(server, f"{container}/models/simple"), cache)
    assert "this is a model folder (it holds config.pbtxt)" in message
    assert message.endswith(f"point the URI at its parent: {uri(server, container)}/models")


def test_model_folder_without_config_is_recognised_by_its_versions(server: AzuriteServer, cache: Path) -> None:
    container = new_container(server, {"repo/auto/1/model.onnx": b"onnx", "repo/auto/2/model.onnx": b"onnx"})
    message = error_of(uri(server, f"{container}/repo/auto"), cache)
    assert "this is a model folder (it holds 1/model.onnx)" in message
    assert message.endswith(uri(server, f"{container}/repo"))


def test_model_folder_at_the_container_root_says_to_move_it(server: AzuriteServer, cache: Path) -> None:
    container = new_container(server, {"config.pbtxt": b"", "1/model.py": b""})
    message = error_of(uri(server, container), cache)
    assert f"folder named after the model, {uri(server, container)}/<model>/" in message


def test_version_folder_given_as_repository_points_two_levels_up(
    server: AzuriteServer, container: str, cache: Path
) -> None:
    message = error_of(uri(server, f"{container}/models/simple/1"), cache)
    assert "version folder of model 'simple'" in message
    assert message.endswith(uri(server, f"{container}/models"))


def test_path_with_nothing_under_it_says_so(server: AzuriteServer, container: str, cache: Path) -> None:
    assert "nothing is stored under" in error_of(uri(server, f"{container}/modles"), cache)
    empty = new_container(server, {})
    message = error_of(uri(server, empty), cache)
    assert f"nothing is stored under {uri(server, empty)} (check the container and the path)" in message


def test_path_with_only_files_says_it_holds_no_model_folders(server: AzuriteServer, cache: Path) -> None:
    container = new_container(server, {"docs/readme.md": b"", "docs/.hidden/config.pbtxt": b""})
    message = error_of(uri(server, f"{container}/docs"), cache)
    assert "holds no model folders, only files (readme.md)" in message


# shared keys: Azurite checks every request's signature


def test_wrong_key_in_the_connection_string_is_refused(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = server.connection_string(key="d3Jvbmcta2V5LW9mLXRoZS1yaWdodC1sZW5ndGgtZm9yLWEtc2hhcmVkLWtleQ==")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    message = error_of(uri(server, f"{container}/models"), cache)
    assert f"access to container '{container}' of account '{server.account}' is refused" in message
    assert "AZURE_STORAGE_KEY" in message


def test_account_key_variable_signs_instead_of_the_connection_string(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string(key=""))
    monkeypatch.setenv("AZURE_STORAGE_KEY", server.key)
    assert AzureBlobStore(uri(server, f"{container}/models"), cache).models() == ["other", "simple"]
    monkeypatch.setenv("AZURE_STORAGE_KEY", "bm90LXRoZS1rZXk=")
    assert "is refused" in error_of(uri(server, f"{container}/models"), cache)


def test_key_that_is_not_base64_is_named(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_KEY", "not base64!")
    message = error_of(uri(server, f"{container}/models"), cache)
    assert "the account key cannot sign requests (Invalid base64-encoded string" in message
    assert "AZURE_STORAGE_KEY" in message


def test_key_auth_type_without_a_key_says_so(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "key")
    assert "AZURE_STORAGE_KEY is not set" in error_of(uri(server, f"{container}/models"), cache)


def test_unknown_auth_type_lists_the_known_ones(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "sas")
    message = error_of("as://acct/ctr/models", cache)
    assert "AZURE_STORAGE_AUTH_TYPE is 'sas', not one of key, managed_identity, default" in message


# anonymous access: what Triton does without credentials


def test_public_container_is_read_anonymously(
    server: AzuriteServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = new_container(server, REPOSITORY, public=True)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string(key=""))
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    assert store.models() == ["other", "simple"]
    folder = store.fetch("other", store.fingerprint("other"))
    assert (folder / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]


def test_private_container_read_anonymously_says_what_to_set(
    server: AzuriteServer, container: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string(key=""))
    message = error_of(uri(server, f"{container}/models"), cache)
    assert "read anonymously" in message
    for setting in ["AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_AUTH_TYPE"]:
        assert setting in message


# tokens: a managed identity, alone or through DefaultAzureCredential


def test_managed_identity_token_is_accepted(
    server: AzuriteServer, container: str, identity: IdentityEndpoint, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    store = AzureBlobStore(uri(server, f"{container}/models"), cache)
    assert store.models() == ["other", "simple"]
    folder = store.fetch("other", store.fingerprint("other"))
    assert (folder / "config.pbtxt").read_bytes() == REPOSITORY["models/other/config.pbtxt"]
    assert identity.asked[0]["resource"] == "https://storage.azure.com"
    assert "client_id" not in identity.asked[0]  # the system-assigned identity


def test_user_assigned_identity_is_asked_for_by_client_id(
    server: AzuriteServer, container: str, identity: IdentityEndpoint, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_id = str(uuid.uuid4())
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    monkeypatch.setenv("AZURE_STORAGE_CLIENT_ID", client_id)
    assert AzureBlobStore(uri(server, f"{container}/models"), cache).models() == ["other", "simple"]
    assert identity.asked[0]["client_id"] == client_id


def test_default_credential_finds_the_managed_identity(
    server: AzuriteServer, container: str, identity: IdentityEndpoint, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "default")
    assert AzureBlobStore(uri(server, f"{container}/models"), cache).models() == ["other", "simple"]
    assert identity.asked


def test_identity_endpoint_refusing_says_no_token(
    server: AzuriteServer, container: str, identity: IdentityEndpoint, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azure_blob, "_RETRIES", 0)  # each try asks the endpoint again
    identity.refuse = True
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    message = error_of(uri(server, f"{container}/models"), cache)
    assert "no token could be had from the managed identity" in message


def test_token_for_another_service_is_refused(
    server: AzuriteServer, container: str, identity: IdentityEndpoint, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity.audience = "https://vault.azure.net"
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    message = error_of(uri(server, f"{container}/models"), cache)
    assert "is refused (AuthenticationFailed" in message
    assert "Invalid token audience" in message  # Azurite's reason, as the service gives its own
    assert "Storage Blob Data Reader" in message


def test_token_over_plain_http_is_refused_before_sending(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "BlobEndpoint=http://127.0.0.1:10000/acct;")
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "managed_identity")
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{free_port()}/msi/token")  # never asked
    monkeypatch.setenv("IDENTITY_HEADER", "unused")
    assert "only over HTTPS" in error_of("as://acct/ctr/models", cache)


# missing packages


def test_missing_azure_storage_blob_names_the_extra(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)  # what an interpreter without it finds
    with pytest.raises(StoreError, match=r"pip install 'naiad\[azure\]'"):
        AzureBlobStore("as://acct/ctr/models", cache)


def test_missing_azure_identity_names_the_extra(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)
    monkeypatch.setenv("AZURE_STORAGE_AUTH_TYPE", "default")
    with pytest.raises(StoreError, match=r"AZURE_STORAGE_AUTH_TYPE=default needs azure-identity: pip install"):
        AzureBlobStore("as://acct/ctr/models", cache)
