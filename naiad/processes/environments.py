"""The Python a model's instance processes run: the server's own, a packed environment the model names
(`EXECUTION_ENV_PATH`, a conda-pack or venv-pack tarball or an unpacked folder, as in Triton), or one built from the
`requirements.txt` beside its model.py (`--allow-model-requirements`).

Tarballs are unpacked once into a cache keyed by their content (a changed tarball is a new key; two servers
unpacking the same one wait for each other), refusing entries that would land outside the folder. A requirements
environment is a venv with the requirements installed by pip, logging pip's progress, and the server's own packages
behind them, so the instance process still finds numpy."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from naiad.backends.base import InstanceContext
from naiad.config.environment import instance_environment
from naiad.domain.errors import invalid
from naiad.processes.launch import Launch, ProcessSettings, server_python

logger = logging.getLogger("naiad.processes")

ENV_PARAMETER = "EXECUTION_ENV_PATH"
_MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
_PIP_LINES_KEPT = 20


class EnvironmentBuilder:
    """Finds or builds each model's Python environment, once per content, and says how to launch in it."""

    def __init__(self, settings: ProcessSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._keys: dict[str, threading.Lock] = {}
        self._digests: dict[tuple[str, int, int], str] = {}
        self._warned: set[str] = set()

    def launch(self, context: InstanceContext) -> Launch:
        """How to start an instance (blocking: it may unpack or build the environment first)."""
        name = context.config.name
        root = self.environment(context.config.parameters, name, context.model_dir, context.version_dir)
        gpu = context.device_id if context.kind in ("GPU", "AUTO") else None
        python = _interpreter(root, name) if root is not None else server_python()
        environment = instance_environment(gpu, root)
        inside = None if gpu is None else 0  # the one device the process sees
        return Launch(python, environment, self._settings, _label(context.instance_name), inside)

    def launch_for_folder(self, parameters: Mapping[str, str], name: str, model_dir: Path, version_dir: Path) -> Launch:
        """How to start a throw-away process for a model (its auto-complete), on no particular device."""
        root = self.environment(parameters, name, model_dir, version_dir)
        python = _interpreter(root, name) if root is not None else server_python()
        return Launch(python, instance_environment(None, root), self._settings, _label(f"{name}-auto-complete"))

    def environment(self, parameters: Mapping[str, str], name: str, model_dir: Path, version_dir: Path) -> Path | None:
        """The folder of the model's own environment, or None for the server's."""
        packed = parameters.get(ENV_PARAMETER, "")
        requirements = version_dir / "requirements.txt"
        has_requirements = requirements.is_file()
        if has_requirements and not self._settings.allow_requirements:
            if str(requirements) not in self._warned:
                self._warned.add(str(requirements))
                logger.warning(
                    "model '%s' has a requirements.txt (%s), which naiad installs only with "
                    "--allow-model-requirements=true; its instances run with the server's packages",
                    name, requirements,
                )  # fmt: skip
            has_requirements = False
        if packed and has_requirements:
            raise invalid(
                f"model '{name}' has both {ENV_PARAMETER} and a requirements.txt beside its model.py; naiad uses "
                "one or the other: pack the requirements into the environment, or drop the parameter"
            )
        if packed:
            return self._packed(packed, name, model_dir)
        if has_requirements:
            return self._built(requirements, name)
        return None

    # EXECUTION_ENV_PATH

    def _packed(self, value: str, name: str, model_dir: Path) -> Path:
        path = Path(value.replace(_MODEL_DIRECTORY, str(model_dir)))
        if not path.is_absolute():
            path = model_dir / path
        where = f"{ENV_PARAMETER} '{value}' of model '{name}'"
        if path.is_dir():
            return path
        if not path.is_file():
            raise invalid(f"{where} names {path}, which does not exist")
        if not path.name.endswith(_ARCHIVES):
            raise invalid(f"{where} names {path}, which is neither a folder nor a .tar.gz (or .tar, .tar.xz) archive")
        digest = self._digest(path)
        target = self._settings.environment_cache / f"packed-{digest[:32]}"
        with self._exclusive(target):
            if not target.is_dir():
                logger.info("unpacking %s for model '%s' into %s", path, name, target)
                _unpack(path, target, where)
        return target

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(key)
        if digest is None:
            hasher = hashlib.sha256()
            with path.open("rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    hasher.update(chunk)
            digest = self._digests[key] = hasher.hexdigest()
        return digest

    # requirements.txt

    def _built(self, requirements: Path, name: str) -> Path:
        content = requirements.read_bytes()
        key = hashlib.sha256(content + sys.version.encode() + server_python().encode()).hexdigest()[:32]
        target = self._settings.environment_cache / f"requirements-{key}"
        with self._exclusive(target):
            if not target.is_dir():
                _build(requirements, target, name)
        return target

    @contextlib.contextmanager
    def _exclusive(self, target: Path) -> Iterator[None]:
        """One builder of `target` at a time, in this server (threads) and across servers (a lock file)."""
        with self._lock:
            lock = self._keys.setdefault(str(target), threading.Lock())
        with lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{target}.lock", "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(held, fcntl.LOCK_UN)


def _label(instance: str) -> str:
    return instance.replace("/", "_")


def _interpreter(root: Path, name: str) -> str:
    for candidate in ("python3", "python"):
        python = root / "bin" / candidate
        if os.access(python, os.X_OK):
            return str(python)
    raise invalid(f"the Python environment {root} of model '{name}' has no bin/python3 or bin/python")


def _unpack(archive: Path, target: Path, where: str) -> None:
    """Unpack `archive` as `target`, whole or not at all."""
    try:
        with _made_whole(target) as scratch, tarfile.open(archive) as tar:
            scratch.mkdir(parents=True)
            root = os.path.realpath(scratch)
            for member in tar:
                _check_member(member, root, where)
                if hasattr(tarfile, "data_filter"):  # Python 3.12+, and security releases of 3.10 and 3.11
                    tar.extract(member, scratch, filter="fully_trusted")  # checked above; symlinks may be absolute
                else:  # pragma: no cover
                    tar.extract(member, scratch)
    except tarfile.TarError as exc:
        raise invalid(f"{where}: the archive cannot be read: {exc}") from None


@contextlib.contextmanager
def _made_whole(target: Path) -> Iterator[Path]:
    """A scratch folder beside `target` to make it in, renamed into place when the block ends without an error, so
    that `target` appears whole or not at all; what is left of the scratch folder is removed either way."""
    scratch = target.with_name(f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        yield scratch
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_member(member: tarfile.TarInfo, root: str, where: str) -> None:
    """Refuse an entry that would be written outside the folder (the zip-slip Triton's env test probes)."""
    for path, what in ((member.name, "entry"), (member.linkname if member.islnk() else "", "hard link")):
        if not path:
            continue
        parts = path.replace("\\", "/").split("/")
        if path.startswith(("/", "\\")) or ".." in parts:
            raise invalid(f"{where}: the archive's {what} '{path}' would be written outside the environment's folder")
    if member.isdev():
        raise invalid(f"{where}: the archive's entry '{member.name}' is a device file")
    parent = os.path.realpath(os.path.join(root, os.path.dirname(member.name)))
    if parent != root and not parent.startswith(root + os.sep):
        raise invalid(f"{where}: the archive's entry '{member.name}' would be written through a link outside it")
    if os.path.islink(os.path.join(root, member.name)):  # an earlier entry made it a link: writing would follow it
        raise invalid(f"{where}: the archive's entry '{member.name}' would be written through a link it holds")


def _build(requirements: Path, target: Path, name: str) -> None:
    """A venv with the requirements installed, the server's packages behind them."""
    logger.info("model '%s': building a Python environment from %s in %s", name, requirements, target)
    try:
        with _made_whole(target) as scratch:
            _run([server_python(), "-m", "venv", str(scratch)], name, "creating the venv", requirements.parent)
            _run(
                [str(scratch / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                 str(requirements)],
                name, "pip install -r requirements.txt", requirements.parent,
            )  # fmt: skip
            # Installed first, then the server's packages behind them: pip never sees (or touches) the server's own.
            purelib = Path(
                subprocess.run(
                    [str(scratch / "bin" / "python"), "-c",
                     "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                    capture_output=True, text=True, check=True,
                ).stdout.strip()
            )  # fmt: skip
            server_paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
            (purelib / "zz-naiad-server-packages.pth").write_text("".join(f"{path}\n" for path in server_paths))
    except subprocess.CalledProcessError as exc:
        raise invalid(f"the venv built from the requirements.txt of model '{name}' is broken: {exc}") from None


def _run(command: list[str], name: str, what: str, cwd: Path) -> None:
    """Run a build step, its output going to the log line by line; raises `ServerError` with its last lines."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    last: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        if line:
            logger.info("model '%s': %s: %s", name, what.split()[0], line)
            last = [*last[-(_PIP_LINES_KEPT - 1) :], line]
    if process.wait() != 0:
        output = "\n".join(last)
        raise invalid(f"model '{name}': {what} failed (exit status {process.returncode}):\n{output}")
