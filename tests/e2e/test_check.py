"""`naiad check REPOSITORY` as a user runs it: every problem reported with its fix, exit status 0 only when every
model would load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import models

torch = pytest.importorskip("torch")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "naiad", "check", *args], capture_output=True, text=True, timeout=120, check=False
    )


def traced_linear(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 3).eval(), (torch.zeros(1, 4),)), str(path))


LINEAR_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def test_a_good_repository_passes_with_a_warning_for_a_stray_folder(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    traced_linear(repo / "linear" / "1" / "model.pt")
    (repo / "linear" / "config.pbtxt").write_text(LINEAR_CONFIG)
    (repo / "linear" / "v2").mkdir()
    result = run_check(str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    add_sub: version 1 (python)" in result.stdout
    assert "ok    linear: version 1 (pytorch_libtorch)" in result.stdout
    assert "warn  linear/v2: is not a version folder, so it is ignored" in result.stdout
    assert "fix: name version folders with positive integers" in result.stdout
    assert "2 model(s): all would load." in result.stdout


def test_every_problem_is_reported_with_its_fix_and_the_status_is_1(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    models.write_model(repo, "renamed", models.add_sub_config(name="add_sub_v2"), models.ADD_SUB)
    (repo / "state_dict" / "1").mkdir(parents=True)
    torch.save(torch.nn.Linear(4, 3).state_dict(), repo / "state_dict" / "1" / "model.pt")
    (repo / "state_dict" / "config.pbtxt").write_text(LINEAR_CONFIG)
    traced_linear(repo / "wrong_inputs" / "1" / "model.pt")
    second = '{ name: "input__1" data_type: TYPE_FP32 dims: [ 4 ] }'
    two_inputs = LINEAR_CONFIG.replace("dims: [ 4 ] } ]", f"dims: [ 4 ] }}, {second} ]")
    (repo / "wrong_inputs" / "config.pbtxt").write_text(two_inputs)
    (repo / "no_version").mkdir()
    (repo / "no_version" / "config.pbtxt").write_text(LINEAR_CONFIG)
    result = run_check(str(repo))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "ok    add_sub: version 1 (python)" in out
    assert "FAIL  renamed: model configuration name 'add_sub_v2' does not match the model directory name" in out
    assert "fix: make the config's `name` and the folder's name the same" in out
    assert "FAIL  state_dict" in out and "written by torch.save" in out and "torch.jit.trace" in out
    assert "FAIL  wrong_inputs" in out and "configuration expects 2 inputs, model provides 1" in out
    assert "fix: list in config.pbtxt exactly the inputs the model takes" in out
    assert "FAIL  no_version" in out and "fix: add a version folder such as 1/" in out
    assert "5 model(s): 4 would not load." in out


def test_a_model_folder_given_as_the_repository_is_named_as_the_mistake(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    models.write_model(repo, "add_sub", models.add_sub_config(), models.ADD_SUB)
    result = run_check(str(repo / "add_sub"))
    assert result.returncode == 1
    assert "this is a model folder (it holds config.pbtxt), not a model repository" in result.stdout
    assert f"fix: point --model-repository at the folder that holds it: {repo.resolve()}" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_check(str(empty))
    assert result.returncode == 1 and "holds no model folders" in result.stdout
