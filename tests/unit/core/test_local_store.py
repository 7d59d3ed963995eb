"""The local store and the fingerprint arithmetic every store shares: what counts as a change of which version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from naiad.core.stores.base import StoreError, model_stamps, version_stamps, versions_on_disk
from naiad.core.stores.local import LocalStore
from naiad.core.stores.schemes import open_store


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write(root / "m" / "config.pbtxt", 'backend: "python"')
    write(root / "m" / "labels.txt", "a\nb\n")
    write(root / "m" / "1" / "model.py", "one")
    write(root / "m" / "2" / "model.py", "two")
    (root / "m" / "3").mkdir()  # an empty version folder still counts, as in Triton
    write(root / "m" / "1" / "__pycache__" / "model.cpython-311.pyc", "compiled")
    write(root / "m" / ".hidden", "x")
    (root / "other").mkdir()
    (root / ".git").mkdir()
    return root


def test_models_are_the_visible_folders(repository: Path) -> None:
    assert LocalStore(str(repository)).models() == ["m", "other"]


def test_fingerprint_lists_files_and_top_level_folders(repository: Path) -> None:
    fingerprint = LocalStore(str(repository)).fingerprint("m")
    assert sorted(fingerprint) == ["1/", "1/model.py", "2/", "2/model.py", "3/", "config.pbtxt", "labels.txt"]
    assert versions_on_disk(fingerprint) == [1, 2, 3]
    assert LocalStore(str(repository)).fingerprint("gone") == {}


def test_a_change_is_placed_in_its_version_or_the_whole_model(repository: Path) -> None:
    store = LocalStore(str(repository))
    before = store.fingerprint("m")
    path = repository / "m" / "2" / "model.py"
    path.write_text("two, changed")
    os.utime(path, ns=(1, 1))
    after = store.fingerprint("m")
    assert model_stamps(before) == model_stamps(after)
    changed = version_stamps(before), version_stamps(after)
    assert changed[0][1] == changed[1][1] and changed[0][2] != changed[1][2]

    (repository / "m" / "labels.txt").write_text("a\nb\nc\n")
    assert model_stamps(store.fingerprint("m")) != model_stamps(after)


def test_fetch_is_the_folder_itself_and_release_keeps_it(repository: Path) -> None:
    store = LocalStore(str(repository))
    folder = store.fetch("m", store.fingerprint("m"))
    assert folder == (repository / "m").resolve()
    store.release(folder)
    assert folder.is_dir()


def test_a_model_folder_given_as_the_repository_is_refused_naming_the_fix(repository: Path) -> None:
    with pytest.raises(StoreError, match=r"is a model folder \(it holds config.pbtxt\)") as caught:
        LocalStore(str(repository / "m"))
    assert str(repository.resolve()) in str(caught.value)


def test_schemes(tmp_path: Path, repository: Path) -> None:
    assert isinstance(open_store(str(repository), tmp_path), LocalStore)
    with pytest.raises(StoreError, match="not a directory"):
        open_store(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(StoreError, match="unknown scheme 'ftp://'"):
        open_store("ftp://host/models", tmp_path)
