"""The Python a model's instance processes run: a packed environment named by EXECUTION_ENV_PATH (a tarball unpacked
once into the cache, or a folder), one built by pip from the requirements.txt beside model.py (only when allowed), or
the server's own; and NAIAD_INSTANCE_PROCESS: false, which runs the instances as threads of the server."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
import requests

from tests.conftest import RunningServer, ServerFactory
from tests.models import write_model


def config(name: str, count: int = 1, parameters: dict[str, str] | None = None) -> str:
    params = "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in (parameters or {}).items()
    )
    return f"""
        name: "{name}"
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "WHERE" data_type: TYPE_STRING dims: [ 1 ] }},
                 {{ name: "EXECUTABLE" data_type: TYPE_STRING dims: [ 1 ] }},
                 {{ name: "PID" data_type: TYPE_INT64 dims: [ 1 ] }},
                 {{ name: "NUMPY" data_type: TYPE_STRING dims: [ 1 ] }} ]
        instance_group [ {{ count: {count} kind: KIND_CPU }} ]
        {params}
    """


# Says which marker package its Python finds (the packed environment's, the requirements', or none: the server's),
# which interpreter runs it, in which process, and the numpy it imported.
WHERE_MODEL = """
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def where():
    for name in ("envmark", "reqmark"):
        try:
            return __import__(name).WHERE
        except ImportError:
            pass
    return "server"


def text(value):
    return np.array([value.encode()], dtype=np.object_)


class TritonPythonModel:
    def execute(self, requests):
        outputs = [
            pb_utils.Tensor("WHERE", text(where())),
            pb_utils.Tensor("EXECUTABLE", text(sys.executable)),
            pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64)),
            pb_utils.Tensor("NUMPY", text(np.__file__)),
        ]
        return [pb_utils.InferenceResponse(outputs) for _ in requests]
"""

PACKED = {"EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env.tar.gz"}


def ask(url: str, model: str) -> dict[str, object]:
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [0]}]}
    reply = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return {output["name"]: output["data"][0] for output in reply.json()["outputs"]}


def index(server: RunningServer) -> dict[str, dict[str, str]]:
    reply = requests.post(f"{server.url}/v2/repository/index", timeout=10)
    assert reply.status_code == 200, reply.text
    return {entry["name"]: entry for entry in reply.json()}


def reason_of(server: RunningServer, model: str) -> str:
    entry = index(server)[model]
    assert entry["state"] == "UNAVAILABLE", (entry, server.log())
    return entry["reason"]


def cache_flag(cache: Path) -> str:
    return f"--model-environment-cache={cache}"


def folders(cache: Path, prefix: str) -> list[Path]:
    return sorted(path for path in cache.glob(f"{prefix}-*") if path.is_dir()) if cache.is_dir() else []


def make_venv(root: Path) -> Path:
    """A venv without pip (nor numpy) at `root`; its site-packages folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = subprocess.run(
        [str(root / "bin" / "python3"), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(purelib)


def make_packed_venv(root: Path) -> Path:
    """A venv with the server's numpy (linked in) and a marker package `envmark` the server lacks."""
    site = make_venv(root)
    packages = Path(numpy.__file__).parent.parent
    for entry in packages.iterdir():
        if entry.name in ("numpy", "numpy.libs") or (
            entry.name.startswith("numpy-") and entry.name.endswith(".dist-info")
        ):
            (site / entry.name).symlink_to(entry)
    (site / "envmark").mkdir()
    (site / "envmark" / "__init__.py").write_text('WHERE = "packed"\n')
    return root


def tar_folder(root: Path, archive: Path) -> Path:
    """`root`'s content as a .tar.gz, paths relative to `root` (symlinks kept as links)."""
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name)
    return archive


def tar_with(archive: Path, name: str, content: bytes = b"evil\n") -> Path:
    """A .tar.gz holding a harmless file, then an entry named exactly `name`."""
    with tarfile.open(archive, "w:gz") as tar:
        for entry_name, data in (("bin/readme.txt", b"fine\n"), (name, content)):
            info = tarfile.TarInfo(entry_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def make_wheel(folder: Path) -> Path:
    """A pure-Python wheel `reqmark-1.0-py3-none-any.whl` whose package says WHERE = "requirements"."""
    files = {
        "reqmark/__init__.py": b'WHERE = "requirements"\n',
        "reqmark-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: reqmark\nVersion: 1.0\n",
        "reqmark-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: naiad-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("reqmark-1.0.dist-info/RECORD,,")
    wheel = folder / "reqmark-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("reqmark-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


# 1. A packed venv tarball


def test_a_packed_tarball_is_unpacked_once_and_its_python_runs_the_instances(
    tmp_path: Path, naiad: ServerFactory
) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    first = write_model(repo, "packed_a", config("packed_a", count=2, parameters=PACKED), WHERE_MODEL)
    second = write_model(repo, "packed_b", config("packed_b", parameters=PACKED), WHERE_MODEL)
    tar_folder(make_packed_venv(tmp_path / "venv"), first / "env.tar.gz")
    shutil.copyfile(first / "env.tar.gz", second / "env.tar.gz")  # the same bytes: the same cache key
    digest = hashlib.sha256((first / "env.tar.gz").read_bytes()).hexdigest()

    server = naiad.start(repo, cache_flag(cache))
    assert folders(cache, "packed") == [cache / f"packed-{digest[:32]}"]
    target = folders(cache, "packed")[0]
    log = server.log()
    assert log.count("unpacking ") == 1, log
    assert f"into {target}" in log
    pids = set()
    for model in ("packed_a", "packed_a", "packed_b"):
        answer = ask(server.url, model)
        assert answer["WHERE"] == "packed"
        executable = Path(str(answer["EXECUTABLE"]))
        assert executable.parent == target / "bin", executable
        assert answer["PID"] != server.process.pid
        pids.add(answer["PID"])
    assert len(pids) >= 2  # each model's instances are processes of their own
    assert server.stop() == 0

    again = naiad.start(repo, cache_flag(cache))
    assert "unpacking " not in again.log()
    assert ask(again.url, "packed_b")["WHERE"] == "packed"
    assert Path(str(ask(again.url, "packed_a")["EXECUTABLE"])).parent == target / "bin"
    assert folders(cache, "packed") == [target]


# 2. Archive entries outside the environment's folder


def test_archive_entries_outside_the_folder_are_refused(tmp_path: Path, naiad: ServerFactory) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    outside = tmp_path / "absolute-evil.txt"
    dotdot = write_model(repo, "dotdot", config("dotdot", parameters=PACKED), WHERE_MODEL)
    absolute = write_model(repo, "absolute", config("absolute", parameters=PACKED), WHERE_MODEL)
    write_model(repo, "plain", config("plain"), WHERE_MODEL)
    tar_with(dotdot / "env.tar.gz", "../evil.txt")
    tar_with(absolute / "env.tar.gz", str(outside))
    with tarfile.open(absolute / "env.tar.gz") as tar:
        assert tar.getnames()[-1] == str(outside)  # the entry really is absolute

    server = naiad.start(repo, cache_flag(cache), "--exit-on-error=false", until="started")
    phrase = "would be written outside the environment's folder"
    assert phrase in reason_of(server, "dotdot")
    assert "'../evil.txt'" in reason_of(server, "dotdot")
    assert phrase in reason_of(server, "absolute")
    assert f"'{outside}'" in reason_of(server, "absolute")
    assert index(server)["plain"]["state"] == "READY"
    assert ask(server.url, "plain")["WHERE"] == "server"

    assert not outside.exists()
    assert not (cache / "evil.txt").exists()  # `..` of the unpacking folder
    assert not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert not [path for path in cache.iterdir() if path.is_dir()]  # nothing half unpacked is left


# 3. An environment without numpy


def test_an_environment_without_numpy_is_refused_with_the_fix(tmp_path: Path, naiad: ServerFactory) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    folder = write_model(
        repo, "bare_folder", config("bare_folder", parameters={"EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env"}),
        WHERE_MODEL,
    )  # fmt: skip
    tarball = write_model(repo, "bare_tarball", config("bare_tarball", parameters=PACKED), WHERE_MODEL)
    make_venv(folder / "env")
    tar_folder(folder / "env", tarball / "env.tar.gz")
    write_model(repo, "plain", config("plain"), WHERE_MODEL)

    server = naiad.start(repo, cache_flag(cache), "--exit-on-error=false", until="started")
    for model, root in (("bare_folder", folder / "env"), ("bare_tarball", folders(cache, "packed")[0])):
        reason = reason_of(server, model)
        assert "cannot import what naiad needs" in reason, reason
        assert "install numpy in it" in reason, reason
        assert str(root / "bin") in reason, reason  # names the Python that lacks it
    assert index(server)["plain"]["state"] == "READY"


# 4. A missing EXECUTION_ENV_PATH


def test_a_missing_environment_is_named_in_the_reason(tmp_path: Path, naiad: ServerFactory) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    folder = write_model(repo, "missing", config("missing", parameters=PACKED), WHERE_MODEL)
    write_model(repo, "plain", config("plain"), WHERE_MODEL)

    server = naiad.start(repo, cache_flag(cache), "--exit-on-error=false", until="started")
    reason = reason_of(server, "missing")
    assert str(folder / "env.tar.gz") in reason, reason
    assert "does not exist" in reason, reason
    assert "EXECUTION_ENV_PATH" in reason, reason
    assert index(server)["plain"]["state"] == "READY"
    assert not folders(cache, "packed")


# 5 and 6. requirements.txt with --allow-model-requirements=true: one server, building two venvs with pip


@pytest.fixture(scope="module")
def requirements_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    base = tmp_path_factory.mktemp("requirements")
    cache = base / "cache"
    repo = base / "models"
    wheel = make_wheel(base)
    good = write_model(repo, "req_good", config("req_good", count=2), WHERE_MODEL)
    (good / "1" / "requirements.txt").write_text(f"--no-index\n{wheel}\n")
    bad = write_model(repo, "req_bad", config("req_bad"), WHERE_MODEL)
    (bad / "1" / "requirements.txt").write_text("--no-index\nnaiad-no-such-package-anywhere==1.0\n")
    factory = ServerFactory(base)
    try:
        server = factory.start(
            repo, cache_flag(cache), "--allow-model-requirements=true", "--exit-on-error=false", until="started"
        )
        yield server, cache
    finally:
        factory.close()


def test_requirements_are_installed_into_a_venv_with_the_servers_packages_behind(
    requirements_server: tuple[RunningServer, Path],
) -> None:
    server, cache = requirements_server
    assert index(server)["req_good"]["state"] == "READY", server.log()
    answer = ask(server.url, "req_good")
    assert answer["WHERE"] == "requirements"
    built = [path for path in folders(cache, "requirements") if (path / "bin").is_dir()]
    assert len(built) == 1, built
    assert Path(str(answer["EXECUTABLE"])).parent == built[0] / "bin"
    assert answer["PID"] != server.process.pid
    assert Path(str(answer["NUMPY"])).parent == Path(numpy.__file__).parent  # the server's numpy, behind the venv
    log = server.log()
    assert "model 'req_good': pip: " in log
    assert "Successfully installed reqmark-1.0" in log
    assert log.count("model 'req_good': building a Python environment from") == 1


def test_requirements_that_cannot_be_installed_fail_the_load_with_pips_message(
    requirements_server: tuple[RunningServer, Path],
) -> None:
    server, cache = requirements_server
    reason = reason_of(server, "req_bad")
    assert reason.startswith("model 'req_bad': pip install -r requirements.txt failed (exit status 1):"), reason
    assert "No matching distribution found" in reason, reason
    assert "naiad-no-such-package-anywhere" in reason, reason
    assert "model 'req_bad': pip: " in server.log()
    assert not [path for path in cache.glob("*.partial-*")]  # the broken venv is not left behind


# 7. requirements.txt without the flag


def test_without_the_flag_requirements_are_ignored_with_one_warning(tmp_path: Path, naiad: ServerFactory) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    model = write_model(repo, "unbuilt", config("unbuilt", count=2), WHERE_MODEL)
    requirements = model / "1" / "requirements.txt"
    requirements.write_text(f"--no-index\n{make_wheel(tmp_path)}\n")

    server = naiad.start(repo, cache_flag(cache))
    answer = ask(server.url, "unbuilt")
    assert answer["WHERE"] == "server"
    assert answer["EXECUTABLE"] == sys.executable
    assert Path(str(answer["NUMPY"])).parent == Path(numpy.__file__).parent
    log = server.log()
    warning = (
        f"model 'unbuilt' has a requirements.txt ({requirements}), which naiad installs only with "
        "--allow-model-requirements=true"
    )
    assert log.count(warning) == 1, log
    assert log.count("has a requirements.txt") == 1, log
    assert "pip: " not in log
    assert not folders(cache, "requirements")


# 8. NAIAD_INSTANCE_PROCESS: false


def test_instance_process_false_runs_in_the_server_and_refuses_an_environment(
    tmp_path: Path, naiad: ServerFactory
) -> None:
    cache = tmp_path / "cache"
    repo = tmp_path / "models"
    write_model(repo, "threaded", config("threaded", parameters={"NAIAD_INSTANCE_PROCESS": "false"}), WHERE_MODEL)
    write_model(repo, "isolated", config("isolated"), WHERE_MODEL)
    both = write_model(
        repo, "both", config("both", parameters={"NAIAD_INSTANCE_PROCESS": "false", **PACKED}), WHERE_MODEL
    )
    tar_folder(make_packed_venv(tmp_path / "venv"), both / "env.tar.gz")

    server = naiad.start(repo, cache_flag(cache), "--exit-on-error=false", until="started")
    threaded = ask(server.url, "threaded")
    assert threaded["PID"] == server.process.pid
    assert threaded["EXECUTABLE"] == sys.executable
    isolated = ask(server.url, "isolated")
    assert isolated["PID"] != server.process.pid
    assert parent_of(int(str(isolated["PID"]))) == server.process.pid

    reason = reason_of(server, "both")
    assert "EXECUTION_ENV_PATH" in reason, reason
    assert "NAIAD_INSTANCE_PROCESS" in reason, reason
    assert "model 'both'" in reason, reason
    assert not folders(cache, "packed")  # refused before anything was unpacked


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
