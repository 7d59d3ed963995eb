"""Unpacking a model's packed environment: entries that would write outside its folder are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from naiad.backends.base import InstanceContext
from naiad.config.model_config import build
from naiad.domain.errors import ServerError
from naiad.processes.environments import EnvironmentBuilder
from naiad.processes.launch import ProcessSettings


def packed(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry, data in entries:
            if data is not None:
                entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data) if data is not None else None)
    return path


def link(name: str, target: str) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = tarfile.SYMTYPE
    entry.linkname = target
    return entry


def unpack(tmp_path: Path, archive: Path) -> Path | None:
    builder = EnvironmentBuilder(ProcessSettings(environment_cache=tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "1").mkdir(parents=True, exist_ok=True)
    return builder.environment({"EXECUTION_ENV_PATH": str(archive)}, "m", model, model / "1")


def test_a_file_written_over_a_link_the_archive_made_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original\n")
    archive = packed(
        tmp_path / "env.tar.gz", [(link("x", str(victim)), None), (tarfile.TarInfo("x"), b"overwritten\n")]
    )
    with pytest.raises(ServerError) as caught:
        unpack(tmp_path, archive)
    assert "the archive's entry 'x' would be written through a link it holds" in caught.value.message
    assert victim.read_text() == "original\n"
    assert not [path for path in (tmp_path / "cache").glob("packed-*") if path.is_dir()]


def test_links_inside_the_environment_are_kept(tmp_path: Path) -> None:
    python = tarfile.TarInfo("bin/python3.11")
    python.mode = 0o755
    entries = [(python, b"#!/bin/sh\n"), (link("bin/python3", "python3.11"), None), (link("lib64", "lib"), None)]
    archive = packed(tmp_path / "env.tar.gz", entries)
    root = unpack(tmp_path, archive)
    assert root is not None and root.name.startswith("packed-")
    assert (root / "bin" / "python3").resolve() == (root / "bin" / "python3.11").resolve()
    assert (root / "bin" / "python3").read_bytes() == b"#!/bin/sh\n"


def test_a_gpu_instance_sees_its_device_alone_as_device_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    config = build({"name": "m", "backend": "python"}, "m")
    builder = EnvironmentBuilder(ProcessSettings(environment_cache=tmp_path / "cache"))
    context = InstanceContext(config, 1, model, model / "1", "m_0_0", "GPU", 2, None)  # type: ignore[arg-type]
    launch = builder.launch(context)
    assert launch.environment["CUDA_VISIBLE_DEVICES"] == "6"
    assert launch.device_id == 0  # so that the model's cuda:{model_instance_device_id} is that device
    cpu = builder.launch(InstanceContext(config, 1, model, model / "1", "m_0_0", "CPU", 0, None))  # type: ignore[arg-type]
    assert cpu.environment["CUDA_VISIBLE_DEVICES"] == "4,5,6" and cpu.device_id is None
