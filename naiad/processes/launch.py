"""How an instance process is started: its interpreter (the server's, or a model's own environment), its
environment variables, and the command that runs naiad's child entry in it; and the settings, under Triton's
names, that shape it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from naiad.processes import child

CHILD = str(Path(child.__file__).resolve())


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    """`--backend-config=python,...` as Triton's Python backend reads it, and naiad's own environment settings."""

    shm_default_byte_size: int = 1024 * 1024  # the first segment of each direction
    shm_growth_byte_size: int = 1024 * 1024  # each further segment (or a tensor's own size, if larger)
    stub_timeout_seconds: int = 30  # to start (until the hello) and to finalize
    shm_region_prefix_name: str = "naiad_python_backend_shm_region_"  # names the segments (memfd names)
    environment_cache: Path = Path("/tmp/naiad-environments")  # unpacked EXECUTION_ENV_PATH and built environments
    allow_requirements: bool = False  # build an environment from a model's requirements.txt


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one instance process."""

    python: str
    environment: Mapping[str, str]
    settings: ProcessSettings
    label: str  # the instance, as its segments are named
    device_id: int | None = None  # its GPU's id inside the process (0: it sees that one only); None: the server's

    def start(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Start the process; it and the server's end of its socket (non-blocking)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            settings = self.settings
            command = [
                self.python, "-u", CHILD, self.label, str(theirs.fileno()), str(settings.shm_default_byte_size),
                str(settings.shm_growth_byte_size), f"{settings.shm_region_prefix_name}{self.label}",
            ]  # fmt: skip
            process = subprocess.Popen(  # a session of its own: what the model starts can be ended with it
                command,
                pass_fds=(theirs.fileno(),),
                env=dict(self.environment),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return process, ours


def server_python() -> str:
    """The interpreter the server runs on, which instance processes run on unless a model has its own."""
    return sys.executable
