"""Clock health from chrony: ``chronyc -c tracking`` → :class:`ClockHealth`.

In the ``system`` timebase mode every event time is the chrony-disciplined system
clock, so the node reports how good that clock is: which reference it follows
(``GPS``/``PPS`` for the Pi's PPS refclock, an NTP server otherwise), the current
offset, and chrony's bound on the clock error,
``|offset| + root dispersion + root delay / 2``.

``chronyc -c tracking`` prints one CSV line (chrony's client.c): reference ID (hex),
reference name or address, stratum, reference time (Unix s), system time offset
(s; positive = system clock slow, behind true time), last offset (s), RMS offset
(s), frequency (ppm; positive = clock runs fast when uncorrected), residual
frequency (ppm), skew (ppm), root delay (s), root dispersion (s), update interval
(s), leap status ("Normal", "Insert second", "Delete second", "Not synchronised").

The ``problem`` texts carry no running figures (the error bound itself is in
``clock_error_bound_us``), so the same trouble gives the same text at every
reading: the node logs it once, and its heartbeats see no change of state.

:func:`timebase_clock_error` turns a reading into what the ``system`` timebase
adds to each event's σ and whether it marks events degraded.

Monitoring needs no privileges: as a non-root user chronyc falls back from the Unix
socket to 127.0.0.1:323, which chronyd answers for ``tracking`` by default.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Sequence

CHRONYC_ARGS = ("-n", "-c", "tracking")
LEAP_STATUSES = ("Normal", "Insert second", "Delete second", "Not synchronised")
_N_FIELDS = 14
#: 1-σ error (ns) given to the system clock while chrony is not synchronised or
#: cannot be read (or its error bound is larger still). Its real error is then
#: unknown — seconds or more after a boot without a real-time clock — so this
#: only has to be large: at 0.1 s (34 m of sound) the server gives such arrivals
#: next to no weight, while an event's σ stays within the protocol's 1e9 ns.
UNSYNCED_CLOCK_SIGMA_NS = 1e8


class ChronyParseError(ValueError):
    """``chronyc -c tracking`` output that is not the expected CSV line."""


@dataclass(frozen=True)
class ClockHealth:
    """The system clock's synchronisation state (all times in seconds).

    ``synced``: chronyd follows a reference (leap status not "Not synchronised",
    stratum 1–15). ``offset_s``: system time offset, positive = system clock behind.
    ``error_bound_s`` = |offset| + root dispersion + root delay / 2 (None if
    unknown). ``problem``: one line saying what is wrong and what to check; "" when
    healthy. Fields other than ``problem`` and ``synced`` are None when chronyc gave
    nothing usable.
    """

    synced: bool
    problem: str
    ref_id: str | None = None
    ref_name: str | None = None
    stratum: int | None = None
    ref_time_s: float | None = None
    offset_s: float | None = None
    last_offset_s: float | None = None
    rms_offset_s: float | None = None
    freq_ppm: float | None = None
    residual_freq_ppm: float | None = None
    skew_ppm: float | None = None
    root_delay_s: float | None = None
    root_dispersion_s: float | None = None
    update_interval_s: float | None = None
    leap_status: str | None = None
    error_bound_s: float | None = None

    @property
    def refclock(self) -> bool:
        """Synchronised directly to a local reference clock (stratum 1: GPS/PPS)."""
        return self.synced and self.stratum == 1

    def to_status(self) -> dict[str, Any]:
        """Flat scalar map for heartbeats (keys prefixed ``clock_``)."""
        def us(v: float | None) -> float | None:
            return None if v is None else round(v * 1e6, 3)
        return {
            "clock_synced": self.synced,
            "clock_ref": self.ref_name,
            "clock_stratum": self.stratum,
            "clock_offset_us": us(self.offset_s),
            "clock_rms_offset_us": us(self.rms_offset_s),
            "clock_error_bound_us": us(self.error_bound_s),
            "clock_freq_ppm": self.freq_ppm,
            "clock_problem": self.problem[:256],
        }


def _float(parts: Sequence[str], i: int, name: str) -> float:
    try:
        v = float(parts[i])
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise ChronyParseError(f"chronyc tracking field {i + 1} ({name}) is not a finite "
                               f"number: {parts[i]!r}")
    return v


def parse_tracking(text: str, *, max_error_s: float = 0.001) -> ClockHealth:
    """Parse the output of ``chronyc -c tracking`` (first non-empty line).

    ``max_error_s``: an error bound above this is reported as a problem (the clock
    is synchronised but too loosely for acoustic timing: 1 ms ≈ 34 cm).
    Raises :class:`ChronyParseError` if the line is not chrony's 14-field CSV.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ChronyParseError("chronyc printed nothing")
    line = lines[0]
    parts = line.split(",")
    if len(parts) != _N_FIELDS:
        shown = line if len(line) <= 120 else line[:120] + "…"
        raise ChronyParseError(f"expected {_N_FIELDS} comma-separated fields from "
                               f"'chronyc -c tracking', got {len(parts)}: {shown!r}")
    ref_id = parts[0].strip().upper()
    try:
        int(ref_id, 16)
    except ValueError:
        raise ChronyParseError(f"chronyc tracking reference ID is not hex: {parts[0]!r}") from None
    try:
        stratum = int(parts[2])
    except ValueError:
        raise ChronyParseError(f"chronyc tracking stratum is not an integer: {parts[2]!r}") from None
    names = ("ref time", "system time", "last offset", "RMS offset", "frequency",
             "residual frequency", "skew", "root delay", "root dispersion", "update interval")
    v = [_float(parts, 3 + k, nm) for k, nm in enumerate(names)]
    ref_time, offset, last_off, rms, freq, resid, skew, delay, disp, interval = v
    leap = parts[13].strip()
    if leap not in LEAP_STATUSES:
        raise ChronyParseError(f"chronyc tracking leap status {leap!r} is not one of "
                               f"{', '.join(LEAP_STATUSES)}")
    synced = leap != "Not synchronised" and 1 <= stratum <= 15 and int(ref_id, 16) != 0
    bound = abs(offset) + disp + delay / 2.0
    name = parts[1].strip()
    if not synced:
        problem = ("chrony is not synchronised to any source — check 'chronyc sources -v' "
                   "(GPS/PPS refclock or NTP server reachable?)")
    elif bound > max_error_s:
        problem = (f"clock error bound exceeds {max_error_s * 1e3:g} ms "
                   f"(following {name or ref_id}, stratum {stratum}) — is the GPS PPS "
                   f"refclock selected? check 'chronyc sources -v'")
    else:
        problem = ""
    return ClockHealth(
        synced=synced, problem=problem, ref_id=ref_id, ref_name=name, stratum=stratum,
        ref_time_s=ref_time, offset_s=offset, last_offset_s=last_off, rms_offset_s=rms,
        freq_ppm=freq, residual_freq_ppm=resid, skew_ppm=skew, root_delay_s=delay,
        root_dispersion_s=disp, update_interval_s=interval, leap_status=leap,
        error_bound_s=bound if synced else None)


def timebase_clock_error(health: ClockHealth) -> tuple[float, str]:
    """What the ``system`` timebase needs from a chrony reading:
    (the clock's 1-σ error in ns, why it is not fit for GPS-grade timing or "").

    The σ is chrony's error bound, |offset| + root dispersion + root delay / 2: a
    bound, so as a σ it errs on the safe side. Not synchronised, unreadable, or a
    bound above :data:`UNSYNCED_CLOCK_SIGMA_NS`: that value. The reason is
    non-empty whenever ``health.problem`` is (not synchronised, or the bound is
    beyond the ``max_error_s`` it was read with); it is a short fixed text
    pointing at the heartbeat's ``clock_problem``. Pure.
    """
    if not health.synced or health.error_bound_s is None:
        return UNSYNCED_CLOCK_SIGMA_NS, "system clock not synchronised by chrony (see clock_problem)"
    sigma = min(max(0.0, health.error_bound_s) * 1e9, UNSYNCED_CLOCK_SIGMA_NS)
    if health.problem:
        return sigma, "system clock error bound too large for GPS-grade timing (see clock_problem)"
    return sigma, ""


def read_clock_health(run: Callable[..., subprocess.CompletedProcess] = subprocess.run, *,
                      chronyc: str = "chronyc", timeout_s: float = 2.0,
                      max_error_s: float = 0.001, host: str | None = None,
                      port: int | None = None) -> ClockHealth:
    """Run ``chronyc -n -c tracking`` (bounded by ``timeout_s``) and parse it.

    ``host``/``port`` (chronyc's ``-h``/``-p``) select another chronyd; by default
    chronyc tries its Unix socket, then 127.0.0.1:323.

    Never raises for a missing chronyc, a stopped chronyd, a timeout or odd
    output: it returns an unsynced :class:`ClockHealth` whose ``problem`` says what
    to do. ``run`` is ``subprocess.run`` or a stand-in with the same signature.
    """
    cmd = [chronyc]
    if host is not None:
        cmd += ["-h", host]
    if port is not None:
        cmd += ["-p", str(int(port))]
    cmd += list(CHRONYC_ARGS)
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        return ClockHealth(False, f"{chronyc} not found — install chrony "
                                  f"(apt-get install chrony) or check PATH")
    except PermissionError:
        return ClockHealth(False, f"{chronyc} is not executable — check its permissions")
    except subprocess.TimeoutExpired:
        return ClockHealth(False, f"'chronyc tracking' did not answer within {timeout_s:g} s — "
                                  f"is chronyd hung? (systemctl status chrony)")
    except OSError as exc:
        return ClockHealth(False, f"could not run {chronyc}: {exc}")
    out = (proc.stdout or "").strip()
    err = (proc.stderr or "").strip()
    said = " ".join(x for x in (out, err) if x).splitlines()
    first = said[0][:120] if said else ""
    if "Cannot talk to daemon" in out + err or "Could not open connection to daemon" in out + err:
        return ClockHealth(False, f"chronyd is not running or not reachable (chronyc: {first}) — "
                                  f"systemctl status chrony")
    if proc.returncode != 0:
        return ClockHealth(False, f"chronyc failed (exit {proc.returncode}): {first or 'no output'}")
    try:
        return parse_tracking(out, max_error_s=max_error_s)
    except ChronyParseError as exc:
        return ClockHealth(False, f"unexpected chronyc output: {exc}")
