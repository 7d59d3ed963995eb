"""The environment of an instance process: the one GPU it sees and the Python environment it runs in."""

from __future__ import annotations

from pathlib import Path

import pytest

from naiad.config.environment import instance_environment


def test_a_gpu_instance_sees_only_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert instance_environment(1, None)["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_device_is_taken_from_the_servers_own_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-5f3a")
    assert instance_environment(0, None)["CUDA_VISIBLE_DEVICES"] == "2"
    assert instance_environment(1, None)["CUDA_VISIBLE_DEVICES"] == "GPU-5f3a"


def test_a_cpu_instance_keeps_the_servers_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert instance_environment(None, None)["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_venv_is_activated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("PYTHONHOME", "/opt/server-python")
    monkeypatch.setenv("PYTHONPATH", "/opt/server-python/lib/python3.11/site-packages")
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    environment = instance_environment(None, tmp_path)
    assert environment["PATH"] == f"{tmp_path}/bin:/usr/bin"
    assert environment["LD_LIBRARY_PATH"] == f"{tmp_path}/lib"
    assert environment["VIRTUAL_ENV"] == str(tmp_path)
    assert "PYTHONHOME" not in environment and "PYTHONPATH" not in environment and "CONDA_PREFIX" not in environment


def test_a_conda_environment_is_activated_as_conda_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conda-meta").mkdir()
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/cuda/lib64")
    environment = instance_environment(None, tmp_path)
    assert environment["CONDA_PREFIX"] == str(tmp_path)
    assert environment["LD_LIBRARY_PATH"] == f"{tmp_path}/lib:/usr/local/cuda/lib64"
    assert "VIRTUAL_ENV" not in environment
