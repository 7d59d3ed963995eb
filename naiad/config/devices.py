"""The GPUs this process may place model instances on: those NVML sees, narrowed by `CUDA_VISIBLE_DEVICES`, numbered
as CUDA numbers them (0, 1, ... in the order the variable lists them)."""

from __future__ import annotations

import os
from typing import Any


def visible_gpus() -> tuple[int, ...]:
    """CUDA device ids usable here; empty without an NVIDIA driver (or with CUDA_VISIBLE_DEVICES empty or -1)."""
    present = _nvml_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return tuple(range(present))
    usable = 0
    for item in (part.strip() for part in listed.split(",")):
        # CUDA stops at the first entry that names no device; UUIDs (GPU-...) name one when any GPU is present
        if (item.isdigit() and int(item) < present) or (item.startswith(("GPU-", "MIG-")) and present > 0):
            usable += 1
        else:
            break
    return tuple(range(usable))


def _nvml_count() -> int:
    try:
        import pynvml
    except ImportError:
        return 0
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no device: NVMLError_LibraryNotFound and friends
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        nvml.nvmlShutdown()


def cuda_device(device_id: int) -> str:
    """What `CUDA_VISIBLE_DEVICES` must say for a process to see CUDA device `device_id` of this one, and no other:
    the entry of this process's own list, or the id itself when there is no list."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return str(device_id)
    entries = [part.strip() for part in listed.split(",")]
    return entries[device_id] if device_id < len(entries) else str(device_id)
