"""The CPU and GPU gauges: CPU utilization and memory from /proc, and each GPU's utilization, memory, power and
energy through NVML, sampled on a background thread every --metrics-interval-ms."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

logger = logging.getLogger("naiad.metrics")

_PROC_STAT = Path("/proc/stat")
_PROC_MEMINFO = Path("/proc/meminfo")


class CpuReading(NamedTuple):
    """The machine's CPU utilization (0..1) over the last interval and its memory in bytes."""

    utilization: float
    memory_total: int
    memory_used: int


class GpuReading(NamedTuple):
    """One GPU, as Triton reports it: utilization 0..1, memory in bytes, power in watts, energy in joules."""

    uuid: str
    utilization: float
    memory_total: int
    memory_used: int
    power_usage: float
    power_limit: float
    energy: float


class SystemReading(NamedTuple):
    """The latest sample: the CPU (None when CPU metrics are off) and each GPU NVML reports."""

    cpu: CpuReading | None
    gpus: tuple[GpuReading, ...]


class CpuSampler:
    """Reads /proc/stat and /proc/meminfo; utilization is measured between two samples."""

    def __init__(self, stat: Path = _PROC_STAT, meminfo: Path = _PROC_MEMINFO) -> None:
        self._stat = stat
        self._meminfo = meminfo
        _cpu_times(stat)  # raise OSError or ValueError now where /proc cannot be read
        _memory(meminfo)
        self._last: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def sample(self) -> CpuReading:
        """Utilization since the previous sample (0 at the first), and memory now; zeros if /proc fails."""
        try:
            times = _cpu_times(self._stat)
            total, used = _memory(self._meminfo)
        except (OSError, ValueError) as exc:
            logger.warning("cannot read CPU metrics from /proc: %s", exc)
            return CpuReading(0.0, 0, 0)
        last, self._last = self._last, times
        if last is None:
            return CpuReading(0.0, total, used)
        busy = sum(max(new - old, 0) for new, old in zip(times[0], last[0], strict=True))
        idle = sum(max(new - old, 0) for new, old in zip(times[1], last[1], strict=True))
        return CpuReading(busy / (busy + idle) if busy + idle else 0.0, total, used)


def _cpu_times(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(busy, idle) jiffies of the aggregate `cpu` line: user, nice, system, irq, softirq, steal / idle, iowait."""
    with path.open() as stat:
        line = stat.readline().split()
    if len(line) < 9 or line[0] != "cpu":
        raise ValueError(f"no aggregate cpu line in {path}")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(field) for field in line[1:9])
    return (user, nice, system, irq, softirq, steal), (idle, iowait)


def _memory(path: Path) -> tuple[int, int]:
    """(total, used) bytes, used being total less available, as Triton counts it."""
    fields: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        raise ValueError(f"no MemTotal or MemAvailable in {path}")
    return fields["MemTotal"], max(fields["MemTotal"] - fields["MemAvailable"], 0)


class GpuSampler:
    """Every GPU NVML sees. A reading NVML refuses (a power limit some boards lack) reads 0, as in Triton."""

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self._uuids: list[str] = []
        self._energy_start: list[int | None] = []
        self._refused: set[tuple[int, str]] = set()
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._handles.append(handle)
            self._uuids.append(_text(nvml.nvmlDeviceGetUUID(handle)))
            self._energy_start.append(self._read(index, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, None))
            logger.info("Collecting metrics for GPU %d: %s", index, _text(nvml.nvmlDeviceGetName(handle)))

    @classmethod
    def open(cls) -> GpuSampler | None:
        """The sampler, or None (with one info line saying why) when NVML cannot start or sees no GPU."""
        try:
            import pynvml
        except ImportError:
            logger.info("GPU metrics are off: nvidia-ml-py (pynvml) is not installed")
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses, or OSError from a broken driver library
            logger.info("GPU metrics are off: NVML could not start (%s)", exc)
            return None
        try:
            sampler = cls(pynvml)
        except Exception as exc:
            logger.info("GPU metrics are off: NVML could not list the GPUs (%s)", exc)
            pynvml.nvmlShutdown()
            return None
        if not sampler._handles:
            logger.info("GPU metrics are off: NVML sees no GPU")
            sampler.close()
            return None
        return sampler

    def sample(self) -> tuple[GpuReading, ...]:
        """One reading per GPU."""
        nvml = self._nvml
        readings = []
        for index in range(len(self._handles)):
            utilization = self._read(index, "utilization", nvml.nvmlDeviceGetUtilizationRates, None)
            memory = self._read(index, "memory", nvml.nvmlDeviceGetMemoryInfo, None)
            power = self._read(index, "power usage", nvml.nvmlDeviceGetPowerUsage, 0)
            limit = self._read(index, "power limit", nvml.nvmlDeviceGetPowerManagementLimit, 0)
            energy = self._read(index, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, None)
            start = self._energy_start[index]
            if start is None:
                self._energy_start[index] = start = energy
            readings.append(
                GpuReading(
                    uuid=self._uuids[index],
                    utilization=utilization.gpu * 0.01 if utilization is not None else 0.0,
                    memory_total=int(memory.total) if memory is not None else 0,
                    memory_used=int(memory.used) if memory is not None else 0,
                    power_usage=power * 0.001,  # milliwatts
                    power_limit=limit * 0.001,
                    energy=(energy - start) * 0.001 if energy is not None and start is not None else 0.0,  # mJ
                )
            )
        return tuple(readings)

    def _read(self, index: int, what: str, call: Any, default: Any) -> Any:
        try:
            return call(self._handles[index])
        except self._nvml.NVMLError as exc:
            if (index, what) not in self._refused:  # say it once per GPU and reading, not every interval
                self._refused.add((index, what))
                logger.warning("GPU %d: NVML cannot read the %s (%s); it reads 0", index, what, exc)
            return default

    def close(self) -> None:
        """Shut NVML down."""
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SystemMetrics:
    """Samples the CPU and GPUs at once on `start`, then every `interval_ms` on a daemon thread; `reading` is
    always the latest sample, replaced whole, so a scrape never sees half of one."""

    def __init__(self, interval_ms: int, cpu: bool, gpu: bool) -> None:
        self._interval = interval_ms / 1000
        self._cpu: CpuSampler | None = None
        if cpu:
            try:
                self._cpu = CpuSampler()
            except (OSError, ValueError) as exc:
                logger.warning("CPU metrics are off: cannot read /proc (%s)", exc)
            else:
                logger.info("Collecting CPU metrics")
        self._gpu = GpuSampler.open() if gpu else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reading = SystemReading(None, ())

    @property
    def active(self) -> bool:
        """Whether there is anything to sample."""
        return self._cpu is not None or self._gpu is not None

    def start(self) -> None:
        """Take the first sample now and keep sampling in the background."""
        if not self.active:
            return
        self.reading = self._sample()
        self._thread = threading.Thread(target=self._run, name="naiad-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the sampling thread and release NVML."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.reading = self._sample()
            except Exception:  # keep the last reading; a bad sample must not end the thread
                logger.exception("sampling CPU and GPU metrics failed")

    def _sample(self) -> SystemReading:
        cpu = self._cpu.sample() if self._cpu is not None else None
        gpus = self._gpu.sample() if self._gpu is not None else ()
        return SystemReading(cpu, gpus)
