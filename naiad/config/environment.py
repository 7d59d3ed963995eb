"""The environment variables of an instance process: the server's own, with the one GPU it may see and the
Python environment it runs in."""

from __future__ import annotations

import os
from pathlib import Path

from naiad.config.devices import cuda_device


def instance_environment(gpu: int | None, python_environment: Path | None) -> dict[str, str]:
    """The server's variables for a child that sees only CUDA device `gpu` (all of them when None) and, with
    `python_environment`, runs in that environment as its `bin/activate` would set it up, without the server's
    PYTHONHOME and PYTHONPATH."""
    environment = dict(os.environ)
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = cuda_device(gpu)
    if python_environment is not None:
        root = str(python_environment)
        environment["PATH"] = os.pathsep.join([os.path.join(root, "bin"), environment.get("PATH", "")])
        library = os.path.join(root, "lib")
        current = environment.get("LD_LIBRARY_PATH")
        environment["LD_LIBRARY_PATH"] = os.pathsep.join([library, current]) if current else library
        marker = "CONDA_PREFIX" if (python_environment / "conda-meta").is_dir() else "VIRTUAL_ENV"
        environment[marker] = root
        environment.pop("PYTHONHOME", None)
        environment.pop("PYTHONPATH", None)  # the server's packages, which may not even be for this Python
    return environment
