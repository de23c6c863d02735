"""System health of the node: CPU load and use, CPU temperature, memory, disk.

Linux only, read from ``/proc`` and ``/sys`` (both roots are parameters so tests can
point them at a fake tree). Nothing here raises for a missing or odd file: the
value becomes None and ``problems`` says which file and why — a node on an
unusual board still reports what it can.

Parsing is pure (``parse_*`` take file text). :class:`SysMetricsSampler` keeps the
previous ``/proc/stat`` and process-time readings, because CPU use is a rate: the
first sample has ``cpu_percent`` None.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate jiffies from the ``cpu`` line of /proc/stat."""

    busy: int
    total: int


@dataclass(frozen=True)
class SysMetrics:
    """One sample. Percentages are 0–100; ``process_cpu_percent`` is per core
    (100 = one core fully used, as ``top`` shows). None = unknown, see ``problems``."""

    load1: float | None
    load5: float | None
    load15: float | None
    cpu_count: int | None
    cpu_percent: float | None
    process_cpu_percent: float | None
    cpu_temp_c: float | None
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    mem_used_percent: float | None
    disk_path: str
    disk_total_bytes: int | None
    disk_free_bytes: int | None
    disk_free_percent: float | None
    uptime_s: float | None
    problems: tuple[str, ...] = ()

    def to_status(self) -> dict[str, Any]:
        """Flat scalar map for heartbeats (keys prefixed ``sys_``)."""
        def r(v: float | None, nd: int = 1) -> float | None:
            return None if v is None else round(v, nd)
        return {
            "sys_load1": r(self.load1, 2),
            "sys_cpu_pct": r(self.cpu_percent),
            "sys_proc_cpu_pct": r(self.process_cpu_percent),
            "sys_cpu_temp_c": r(self.cpu_temp_c),
            "sys_mem_used_pct": r(self.mem_used_percent),
            "sys_disk_free_pct": r(self.disk_free_percent),
            "sys_disk_free_mb": None if self.disk_free_bytes is None else self.disk_free_bytes // 2**20,
            "sys_uptime_s": None if self.uptime_s is None else int(self.uptime_s),
            "sys_problems": "; ".join(self.problems)[:256],
        }


# ------------------------------------------------------------------ parsers
def parse_loadavg(text: str) -> tuple[float, float, float]:
    """/proc/loadavg → (1, 5, 15 min load averages). ValueError on odd text."""
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"expected at least 3 fields, got {text.strip()[:60]!r}")
    return float(parts[0]), float(parts[1]), float(parts[2])


def parse_proc_stat_cpu(text: str) -> CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat → busy and total jiffies.

    Idle time is ``idle + iowait``; guest time is already inside user/nice and is
    not counted twice.
    """
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            vals = [int(v) for v in parts[1:]]
            if len(vals) < 4:
                raise ValueError(f"the cpu line has {len(vals)} fields, expected ≥ 4")
            total = sum(vals[:8])        # user nice system idle iowait irq softirq steal
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return CpuTimes(busy=total - idle, total=total)
    raise ValueError("no aggregate 'cpu' line")


def cpu_busy_percent(prev: CpuTimes, cur: CpuTimes) -> float | None:
    """System-wide CPU use between two samples (0–100), None if no time passed."""
    dt = cur.total - prev.total
    if dt <= 0:
        return None
    return max(0.0, min(100.0, 100.0 * (cur.busy - prev.busy) / dt))


def parse_meminfo(text: str) -> tuple[int, int]:
    """/proc/meminfo → (MemTotal, MemAvailable) in bytes. ValueError if missing."""
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        f = rest.split()
        if f and key in ("MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"):
            vals[key] = int(f[0]) * (1024 if len(f) > 1 and f[1] == "kB" else 1)
    if "MemTotal" not in vals:
        raise ValueError("no MemTotal line")
    avail = vals.get("MemAvailable")
    if avail is None:   # kernels before 3.14
        avail = vals.get("MemFree", 0) + vals.get("Buffers", 0) + vals.get("Cached", 0)
    return vals["MemTotal"], avail


def parse_thermal_millideg(text: str) -> float:
    """A thermal_zone ``temp`` file (millidegrees Celsius) → °C."""
    return int(text.strip()) / 1000.0


#: Zone types that are the SoC/CPU, best first (Raspberry Pi: "cpu-thermal").
_CPU_ZONE_TYPES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp", "coretemp",
                   "cpu0-thermal", "acpitz")


def read_cpu_temp_c(sys_root: str | Path = "/sys") -> tuple[float | None, str]:
    """CPU temperature from /sys/class/thermal/thermal_zone*/temp.

    Prefers a zone whose ``type`` names the CPU/SoC, else the first readable zone.
    Returns (°C or None, reason when None).
    """
    base = Path(sys_root) / "class" / "thermal"
    try:
        zones = sorted(p for p in base.glob("thermal_zone*") if p.is_dir() or p.is_symlink())
    except OSError as exc:
        return None, f"cannot list {base}: {exc.strerror or exc}"
    if not zones:
        return None, f"no thermal zones under {base}"
    found: list[tuple[int, float]] = []
    errors: list[str] = []
    for z in zones:
        try:
            temp = parse_thermal_millideg((z / "temp").read_text())
        except (OSError, ValueError) as exc:
            errors.append(f"{z / 'temp'}: {getattr(exc, 'strerror', None) or exc}")
            continue
        try:
            ztype = (z / "type").read_text().strip()
        except OSError:
            ztype = ""
        rank = _CPU_ZONE_TYPES.index(ztype) if ztype in _CPU_ZONE_TYPES else len(_CPU_ZONE_TYPES)
        found.append((rank, temp))
    if not found:
        return None, "no readable thermal zone temp (" + "; ".join(errors)[:120] + ")"
    return min(found, key=lambda rt: rt[0])[1], ""


# ------------------------------------------------------------------ sampler
class SysMetricsSampler:
    """Takes :class:`SysMetrics` samples; keeps the previous CPU counters for rates.

    ``disk_path``: the filesystem to watch (the node's data directory).
    """

    def __init__(self, disk_path: str | Path = "/", *, proc_root: str | Path = "/proc",
                 sys_root: str | Path = "/sys",
                 process_time_ns: Callable[[], int] = time.process_time_ns,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.disk_path = str(disk_path)
        self.proc_root = Path(proc_root)
        self.sys_root = Path(sys_root)
        self._process_time_ns = process_time_ns
        self._monotonic_ns = monotonic_ns
        self._prev_cpu: CpuTimes | None = None
        self._prev_proc: tuple[int, int] | None = None

    def _read(self, name: str, problems: list[str]) -> str | None:
        path = self.proc_root / name
        try:
            return path.read_text()
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            return None

    def sample(self) -> SysMetrics:
        """A new sample. Never raises for missing or malformed files."""
        problems: list[str] = []

        load: tuple[float | None, float | None, float | None] = (None, None, None)
        text = self._read("loadavg", problems)
        if text is not None:
            try:
                load = parse_loadavg(text)
            except ValueError as exc:
                problems.append(f"{self.proc_root / 'loadavg'}: {exc}")

        cpu_pct = None
        text = self._read("stat", problems)
        if text is not None:
            try:
                cur = parse_proc_stat_cpu(text)
            except ValueError as exc:
                problems.append(f"{self.proc_root / 'stat'}: {exc}")
            else:
                if self._prev_cpu is not None:
                    cpu_pct = cpu_busy_percent(self._prev_cpu, cur)
                self._prev_cpu = cur

        now_proc, now_mono = self._process_time_ns(), self._monotonic_ns()
        proc_pct = None
        if self._prev_proc is not None and now_mono > self._prev_proc[1]:
            proc_pct = max(0.0, 100.0 * (now_proc - self._prev_proc[0]) / (now_mono - self._prev_proc[1]))
        self._prev_proc = (now_proc, now_mono)

        temp, why = read_cpu_temp_c(self.sys_root)
        if temp is None:
            problems.append(f"CPU temperature unknown: {why}")

        mem_total = mem_avail = None
        mem_pct = None
        text = self._read("meminfo", problems)
        if text is not None:
            try:
                mem_total, mem_avail = parse_meminfo(text)
                if mem_total > 0:
                    mem_pct = 100.0 * (mem_total - mem_avail) / mem_total
            except ValueError as exc:
                problems.append(f"{self.proc_root / 'meminfo'}: {exc}")

        disk_total = disk_free = None
        disk_pct = None
        try:
            du = shutil.disk_usage(self.disk_path)
            disk_total, disk_free = du.total, du.free
            disk_pct = 100.0 * du.free / du.total if du.total > 0 else None
        except OSError as exc:
            problems.append(f"disk usage of {self.disk_path}: {exc.strerror or exc}")

        uptime = None
        text = self._read("uptime", problems)
        if text is not None:
            try:
                uptime = float(text.split()[0])
            except (ValueError, IndexError):
                problems.append(f"{self.proc_root / 'uptime'}: not a number: {text.strip()[:40]!r}")

        return SysMetrics(
            load1=load[0], load5=load[1], load15=load[2], cpu_count=os.cpu_count(),
            cpu_percent=cpu_pct, process_cpu_percent=proc_pct, cpu_temp_c=temp,
            mem_total_bytes=mem_total, mem_available_bytes=mem_avail, mem_used_percent=mem_pct,
            disk_path=self.disk_path, disk_total_bytes=disk_total, disk_free_bytes=disk_free,
            disk_free_percent=disk_pct, uptime_s=uptime, problems=tuple(problems))
