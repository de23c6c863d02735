"""node/sysmetrics.py: parsers on real-format text, a fake /proc + /sys tree, missing files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from node.sysmetrics import (CpuTimes, SysMetricsSampler, cpu_busy_percent, parse_loadavg,
                             parse_meminfo, parse_proc_stat_cpu, read_cpu_temp_c)

# Formats as the Linux kernel writes them (proc(5)); values from a Raspberry Pi 4.
LOADAVG = "0.52 0.58 0.59 2/345 12345\n"
STAT_1 = ("cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0\n"
          "cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n"
          "intr 1462898 0 0\nctxt 3427374\nbtime 1700000000\n")
STAT_2 = ("cpu  10132253 290696 3084819 46829183 16683 0 25195 0 0 0\n"
          "cpu0 1393380 32966 572156 13343992 6130 0 17875 0 0 0\n")
MEMINFO = ("MemTotal:        3884328 kB\nMemFree:          207456 kB\n"
           "MemAvailable:    2968348 kB\nBuffers:           98884 kB\nCached:          2583028 kB\n")


def test_parse_loadavg():
    assert parse_loadavg(LOADAVG) == (0.52, 0.58, 0.59)
    with pytest.raises(ValueError, match="3 fields"):
        parse_loadavg("0.5\n")


def test_parse_stat_and_busy_percent():
    a, b = parse_proc_stat_cpu(STAT_1), parse_proc_stat_cpu(STAT_2)
    assert a.total == 10132153 + 290696 + 3084719 + 46828483 + 16683 + 0 + 25195 + 0
    assert a.busy == a.total - 46828483 - 16683
    # 100 user + 100 system busy, 700 idle → 200 / 900
    assert cpu_busy_percent(a, b) == pytest.approx(100 * 200 / 900)
    assert cpu_busy_percent(b, b) is None
    assert cpu_busy_percent(CpuTimes(0, 0), CpuTimes(5, 10)) == 50.0
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        parse_proc_stat_cpu("intr 1 2 3\n")


def test_parse_meminfo_with_and_without_memavailable():
    assert parse_meminfo(MEMINFO) == (3884328 * 1024, 2968348 * 1024)
    old = "\n".join(ln for ln in MEMINFO.splitlines() if not ln.startswith("MemAvailable"))
    assert parse_meminfo(old)[1] == (207456 + 98884 + 2583028) * 1024
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo("Foo: 1 kB\n")


def make_tree(root: Path, *, zones: dict[str, tuple[str, str]] | None = None) -> tuple[Path, Path]:
    proc, sysd = root / "proc", root / "sys"
    proc.mkdir(parents=True)
    (proc / "loadavg").write_text(LOADAVG)
    (proc / "stat").write_text(STAT_1)
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "uptime").write_text("12345.67 40000.00\n")
    therm = sysd / "class" / "thermal"
    therm.mkdir(parents=True)
    for name, (ztype, temp) in (zones or {}).items():
        z = therm / name
        z.mkdir()
        (z / "type").write_text(ztype + "\n")
        (z / "temp").write_text(temp)
    return proc, sysd


def test_sampler_on_a_fake_pi(tmp_path):
    proc, sysd = make_tree(tmp_path, zones={"thermal_zone0": ("cpu-thermal", "48686\n")})
    s = SysMetricsSampler(tmp_path, proc_root=proc, sys_root=sysd)
    m1 = s.sample()
    assert (m1.load1, m1.load5, m1.load15) == (0.52, 0.58, 0.59)
    assert m1.cpu_percent is None and m1.process_cpu_percent is None   # first sample: no rate
    assert m1.cpu_temp_c == pytest.approx(48.686)
    assert m1.mem_total_bytes == 3884328 * 1024
    assert m1.mem_used_percent == pytest.approx(100 * (3884328 - 2968348) / 3884328)
    assert m1.uptime_s == 12345.67
    assert m1.disk_total_bytes > 0 and 0 <= m1.disk_free_percent <= 100
    assert m1.problems == ()
    (proc / "stat").write_text(STAT_2)
    sum(i * i for i in range(200_000))                                # burn a little CPU
    m2 = s.sample()
    assert m2.cpu_percent == pytest.approx(100 * 200 / 900)
    assert m2.process_cpu_percent is not None and m2.process_cpu_percent > 0
    st = m2.to_status()
    assert st["sys_cpu_temp_c"] == 48.7 and st["sys_problems"] == ""
    assert all(k.startswith("sys_") for k in st)
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in st.values())


def test_cpu_zone_is_preferred_over_others(tmp_path):
    _, sysd = make_tree(tmp_path, zones={"thermal_zone0": ("acpitz", "30000"),
                                         "thermal_zone1": ("x86_pkg_temp", "61000"),
                                         "thermal_zone2": ("wifi", "40000")})
    assert read_cpu_temp_c(sysd) == (61.0, "")


def test_missing_files_give_none_and_reasons_never_raise(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    s = SysMetricsSampler(tmp_path / "no-such-dir", proc_root=empty, sys_root=empty)
    m = s.sample()
    assert m.load1 is None and m.cpu_temp_c is None and m.mem_total_bytes is None
    assert m.disk_free_bytes is None and m.uptime_s is None and m.cpu_percent is None
    text = "; ".join(m.problems)
    assert "loadavg" in text and "meminfo" in text and "CPU temperature unknown" in text
    assert "no-such-dir" in text
    assert len(m.to_status()["sys_problems"]) <= 256


def test_malformed_files_give_none_and_reasons(tmp_path):
    proc, sysd = make_tree(tmp_path, zones={"thermal_zone0": ("cpu-thermal", "hot\n")})
    (proc / "loadavg").write_text("garbage\n")
    (proc / "meminfo").write_text("nothing useful\n")
    (proc / "stat").write_text("cpu a b c d\n")
    m = SysMetricsSampler(tmp_path, proc_root=proc, sys_root=sysd).sample()
    assert m.load1 is None and m.mem_total_bytes is None and m.cpu_temp_c is None
    assert len(m.problems) == 4
    assert m.disk_free_bytes is not None                         # the rest still works


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the real /proc (Linux only)")
def test_real_system_sample():
    s = SysMetricsSampler("/")
    s.sample()
    m = s.sample()
    assert m.load1 is not None and m.load1 >= 0
    assert m.mem_total_bytes and m.mem_available_bytes is not None
    assert m.disk_free_bytes is not None and m.cpu_count == os.cpu_count()
    # a thermal zone may or may not exist (containers, VMs): either a value or a reason
    assert m.cpu_temp_c is not None or any("temperature" in p for p in m.problems)
