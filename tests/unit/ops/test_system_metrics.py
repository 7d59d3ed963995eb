"""The CPU gauges from /proc files and the GPU sampler's start-up through NVML."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from naiad.ops.system_metrics import CpuSampler, GpuSampler, SystemMetrics

MEMINFO = (
    "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\nHugePages_Total:       0\n"
)


def write_stat(path: Path, user: int, system: int, idle: int, iowait: int) -> None:
    path.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")


def test_cpu_utilization_and_memory_from_proc_files(tmp_path: Path) -> None:
    stat, meminfo = tmp_path / "stat", tmp_path / "meminfo"
    write_stat(stat, user=100, system=50, idle=800, iowait=50)
    meminfo.write_text(MEMINFO)
    sampler = CpuSampler(stat, meminfo)
    first = sampler.sample()
    assert first.utilization == 0.0  # nothing to compare with yet
    assert first.memory_total == 16_000_000 * 1024
    assert first.memory_used == 4_000_000 * 1024  # total less available, as Triton counts it
    write_stat(stat, user=160, system=70, idle=900, iowait=70)  # 80 busy, 120 idle since
    assert sampler.sample().utilization == pytest.approx(0.4)


def test_unreadable_proc_is_refused_at_start(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("intr 1 2 3\n")
    (tmp_path / "meminfo").write_text(MEMINFO)
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        CpuSampler(stat, tmp_path / "meminfo")
    with pytest.raises(OSError):
        CpuSampler(tmp_path / "missing", tmp_path / "meminfo")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_the_machines_own_proc_reads_sanely() -> None:
    metrics = SystemMetrics(interval_ms=50, cpu=True, gpu=False)
    metrics.start()
    try:
        cpu = metrics.reading.cpu
        assert cpu is not None
        assert 0 < cpu.memory_used < cpu.memory_total
        meminfo = Path("/proc/meminfo").read_text().split()
        assert cpu.memory_total == int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    finally:
        metrics.stop()


def test_gpu_sampler_starts_or_says_why_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="naiad.metrics"):
        sampler = GpuSampler.open()
    if sampler is None:  # no NVIDIA driver here: one info line, no GPU metrics
        assert [r.levelname for r in caplog.records] == ["INFO"]
        assert caplog.records[0].getMessage().startswith("GPU metrics are off:")
        return
    try:
        readings = sampler.sample()
        assert readings
        for gpu in readings:
            assert gpu.uuid.startswith(("GPU-", "MIG-"))
            assert 0.0 <= gpu.utilization <= 1.0
            assert 0 <= gpu.memory_used <= gpu.memory_total and gpu.memory_total > 0
            assert gpu.energy >= 0.0
    finally:
        sampler.close()
