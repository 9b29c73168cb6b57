"""Memory and CPU of a (worker) process, sampled from /proc while a load runs.

Read from outside the process, so the figures include everything it holds: the Python heap, the
workflow sandboxes and the SDK's Rust core threads. `VmHWM` is the kernel's own peak RSS, so a
peak between two samples is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    rss_kb: int
    hwm_kb: int
    cpu_s: float  # user + system, since the process started


def read_sample(pid: int) -> Sample:
    """One reading of /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (utime + stime)."""
    status = Path(f"/proc/{pid}/status").read_text()
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return Sample(rss_kb=values["VmRSS"], hwm_kb=values["VmHWM"], cpu_s=(utime + stime) / CLOCK_TICKS)


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLOCK_TICKS, sum(ticks) / CLOCK_TICKS


@dataclass
class ProcSampler:
    """`async with ProcSampler(pid) as s:` samples every `every_s` until the block ends."""

    pid: int
    every_s: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _machine: tuple[float, float] = (0.0, 0.0)
    _machine_busy: float = 0.0

    async def __aenter__(self) -> ProcSampler:
        self.samples.append(read_sample(self.pid))
        self._machine = machine_cpu_s()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        busy, total = machine_cpu_s()
        self._machine_busy = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)
        with contextlib.suppress(OSError):  # the process may have died: keep what was sampled
            self.samples.append(read_sample(self.pid))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                self.samples.append(read_sample(self.pid))
            except OSError:
                return

    @property
    def first(self) -> Sample:
        return self.samples[0]

    @property
    def last(self) -> Sample:
        return self.samples[-1]

    @property
    def peak_rss_mb(self) -> float:
        """The highest RSS of the process so far (VmHWM: also between samples)."""
        return max(s.hwm_kb for s in self.samples) / 1024

    @property
    def cpu_s(self) -> float:
        """CPU time spent inside the block."""
        return self.last.cpu_s - self.first.cpu_s

    def summary(self, wall_s: float) -> str:
        return (
            f"worker RSS {self.first.rss_kb / 1024:.0f} MB before, peak {self.peak_rss_mb:.0f} MB, "
            f"{self.last.rss_kb / 1024:.0f} MB after; CPU {self.cpu_s:.1f} s in {wall_s:.1f} s "
            f"({100 * self.cpu_s / wall_s:.0f}% of one core); whole machine {100 * self.machine_busy:.0f}% busy "
            f"({os.cpu_count()} cores: dev server, dockerd, engines and test included)"
        )

    @property
    def machine_busy(self) -> float:
        """Share of all cores' time the machine was busy inside the block (0-1)."""
        return self._machine_busy
