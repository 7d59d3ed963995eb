"""A model's `auto_complete_config` in a throw-away process of the model's environment, as Triton runs it: the
model file may import what only that environment has, or crash, without taking the server with it. Blocking: the
config is prepared on a worker thread."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from pathlib import Path
from typing import Any

from naiad.domain.errors import internal
from naiad.processes import messages as m
from naiad.processes.exits import how_it_ended
from naiad.processes.frames import FrameBuffer, Message, pack, send_blocking
from naiad.processes.launch import Launch


def auto_complete_in_process(
    launch: Launch, backend: str, raw: dict[str, Any], model_dir: Path, version_dir: Path, default_max_batch_size: int
) -> dict[str, Any]:
    """The config the backend's auto-complete makes of `raw`; raises `ServerError` with the reason."""
    name = str(raw.get("name") or model_dir.name)
    try:
        process, sock = launch.start()
    except OSError as exc:
        raise internal(f"auto-complete failed for model '{name}': cannot start {launch.python}: {exc}") from None
    sock.setblocking(True)
    frames = FrameBuffer(plain=True)
    pending: list[Message] = []

    def next_message(timeout: float | None) -> Message:
        sock.settimeout(timeout)
        while not pending:
            try:
                messages = frames.receive(sock)
            except TimeoutError:
                process.kill()
                raise internal(
                    f"auto-complete failed for model '{name}': its process did not start within {timeout} s "
                    "(--backend-config=python,stub-timeout-seconds)"
                ) from None
            if messages is None:
                raise internal(
                    f"auto-complete failed for model '{name}': Stub process of model '{name}' is not healthy: it "
                    f"{how_it_ended(process.wait())} while running auto_complete_config"
                )
            pending.extend(messages)
        return pending.pop(0)

    try:
        answer = next_message(launch.settings.stub_timeout_seconds)
        if answer[0] != m.FAILED:
            send_blocking(sock, pack((m.AUTO_COMPLETE, (), backend, raw, str(model_dir), str(version_dir),
                                      default_max_batch_size)))  # fmt: skip
            answer = next_message(None)
            while answer[0] == m.LOG:
                _, _, logger_name, level, text = answer
                logging.getLogger(str(logger_name)).log(int(level), "%s", text)
                answer = next_message(None)
        if answer[0] == m.FAILED:
            raise m.server_error(answer[2])
        if answer[0] != m.COMPLETED or not isinstance(answer[2], dict):
            raise internal(f"auto-complete failed for model '{name}': its process answered {answer[0]!r}")
        config: dict[str, Any] = answer[2]
        return config
    finally:
        sock.close()
        frames.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(launch.settings.stub_timeout_seconds)
        process.kill()
        process.wait()
