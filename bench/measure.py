"""What the benchmarks read off the machine: process-group CPU and memory, the CPU canary.

Everything here reads ``/proc`` once per call (no sampling thread), so asking costs little.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CANARY_LOOPS = 1_000_000


def _group_members(pgid: int) -> list[tuple[Path, list[str]]]:
    """(/proc/<pid>, the fields of its stat after the command name) of each group member."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
        except OSError:
            continue
        fields = line[line.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            members.append((stat.parent, fields))
    return members


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) the live processes of group ``pgid`` have used so far."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _proc, fields in _group_members(pgid))
    return ticks / CLOCK_TICKS_PER_S


def group_rss_mib(pgid: int) -> float:
    """Resident memory of the group's processes, summed (shared pages counted in each)."""
    total_kib = 0
    for proc, _fields in _group_members(pgid):
        try:
            for row in (proc / "status").read_text().splitlines():
                if row.startswith("VmRSS:"):
                    total_kib += int(row.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU counters (/proc/stat), to tell how busy all cores were in between."""

    busy: int
    total: int

    @classmethod
    def now(cls) -> MachineCpu:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[:8])
        busy = user + nice + system + irq + softirq + steal
        return cls(busy=busy, total=busy + idle + iowait)

    def busy_cores_since(self, earlier: MachineCpu) -> float | None:
        """Cores kept busy on average since ``earlier`` (by anything: fleet, broker, database,
        other people's work)."""
        elapsed = self.total - earlier.total
        if elapsed <= 0:
            return None
        return (self.busy - earlier.busy) / elapsed * (os.cpu_count() or 1)


def cpu_canary(repeat: int = 5) -> float:
    """CPU milliseconds of a fixed pure-Python loop (best of ``repeat``): how fast this machine
    runs Python, so that runs on different machines can be compared."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        total = 0
        for i in range(CANARY_LOOPS):
            total += i * i % 7
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), or "unknown"."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"
