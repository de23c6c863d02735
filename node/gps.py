"""GPS position and time health from gpsd — the only module that talks to gpsd.

A small client of gpsd's documented JSON protocol over TCP: it sends
``?WATCH={"enable":true,"json":true,"pps":true}`` and reads newline-delimited JSON
reports (TPV fix, SKY satellites, GST error statistics, TOFF = GPS time of the
serial fix against the system clock, PPS = kernel PPS edge against the system
clock). A background thread keeps the connection, reconnecting with exponential
backoff; :meth:`GpsClient.state` returns the latest :class:`GpsState` at once and
never blocks on the network.

Why not ``gpsd-py3`` (the usual PyPI client): its last release (0.3.0) and commit
are from 2017; it keeps one module-global socket (one gpsd per process, no clean
reconnect); its reads have no timeouts, so a silent or half-open gpsd hangs the
caller; it exposes neither ``eph``/``epv`` error estimates nor PPS/TOFF reports, which
the node needs for survey weighting and clock health (see FIELD-NOTES). ``gpsdclient``
has timeouts but its WATCH does not ask for PPS. gpsd's protocol is a few JSON
lines, so a small client of our own, tested against a real gpsd, costs less than
working around either.

Layers, each testable alone:

* :func:`parse_line` — one gpsd line → a report dataclass (pure; raises
  :class:`GpsdProtocolError` with a one-line reason on bad input);
* :func:`apply_report` — fold a report into a :class:`GpsFeed`, the raw record of
  what gpsd has said (pure, time passed in);
* :func:`summarize` — a :class:`GpsFeed` plus "now" → the public :class:`GpsState`
  with ages and a one-line ``problem`` text (pure);
* :class:`GpsClient` — the socket and the thread.

Times: ``*_mono_ns`` are ``time.monotonic_ns()`` readings taken when a report
arrived (used for ages); ``*_utc_ns`` are UTC nanoseconds (see common/timefmt.py).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Union

from common.config import GpsConfig
from common.timefmt import NS_PER_S, iso_to_ns

log = logging.getLogger(__name__)

WATCH_COMMAND = b'?WATCH={"enable":true,"json":true,"pps":true}\n'
#: gpsd's longest reports (SKY with dozens of satellites) are a few kB.
MAX_LINE_BYTES = 64 * 1024
MAX_STATUS_TEXT = 256
#: ``GpsFeed.conn_error`` before the first connection attempt has finished.
CONNECTING = "connecting"


class GpsdProtocolError(ValueError):
    """A line from gpsd that is not a usable JSON report. The text says why."""


# ------------------------------------------------------------------ reports
@dataclass(frozen=True)
class TpvReport:
    """Time-position-velocity. ``mode``: 0 unknown, 1 no fix, 2 2-D, 3 3-D.

    Positions are WGS84 degrees; ``alt_hae_m`` is metres above the ellipsoid,
    ``alt_msl_m`` above mean sea level. ``eph_m``/``epv_m``/``epx_m``/``epy_m`` are
    gpsd's 95 % error estimates in metres, ``ept_s`` its time error estimate.
    """

    mode: int
    time_utc_ns: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt_hae_m: float | None = None
    alt_msl_m: float | None = None
    eph_m: float | None = None
    epv_m: float | None = None
    epx_m: float | None = None
    epy_m: float | None = None
    ept_s: float | None = None
    status: int | None = None
    device: str = ""


@dataclass(frozen=True)
class SkyReport:
    """Satellites: ``n_seen`` visible, ``n_used`` in the solution (None if not sent)."""

    n_seen: int | None = None
    n_used: int | None = None
    hdop: float | None = None
    device: str = ""


@dataclass(frozen=True)
class GstReport:
    """Pseudorange error statistics: 1-σ errors in metres."""

    time_utc_ns: int | None = None
    rms_m: float | None = None
    lat_err_m: float | None = None
    lon_err_m: float | None = None
    alt_err_m: float | None = None
    device: str = ""


@dataclass(frozen=True)
class ToffReport:
    """GPS time of a serial fix (``real_ns``) vs the system clock at its arrival
    (``clock_ns``), both UTC ns. ``offset_ns`` > 0: the system clock is behind."""

    real_ns: int
    clock_ns: int
    device: str = ""

    @property
    def offset_ns(self) -> int:
        return self.real_ns - self.clock_ns


@dataclass(frozen=True)
class PpsReport:
    """A PPS edge: the GPS second it marks (``real_ns``) vs the system clock at
    the edge (``clock_ns``). ``offset_ns`` > 0: the system clock is behind."""

    real_ns: int
    clock_ns: int
    precision: int | None = None
    device: str = ""

    @property
    def offset_ns(self) -> int:
        return self.real_ns - self.clock_ns


@dataclass(frozen=True)
class VersionReport:
    release: str
    proto_major: int | None = None
    proto_minor: int | None = None


@dataclass(frozen=True)
class DevicesReport:
    """The devices gpsd currently has open."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class DeviceReport:
    """One device appeared (``activated``) or went away."""

    path: str
    activated: bool
    driver: str = ""


@dataclass(frozen=True)
class ErrorReport:
    message: str


@dataclass(frozen=True)
class OtherReport:
    """A report class this client does not use (WATCH, ATT, …)."""

    cls: str


GpsReport = Union[TpvReport, SkyReport, GstReport, ToffReport, PpsReport, VersionReport,
                  DevicesReport, DeviceReport, ErrorReport, OtherReport]


def _short(line: str | bytes, n: int = 80) -> str:
    text = line if isinstance(line, str) else line.decode("utf-8", "replace")
    text = text.strip()
    return repr(text if len(text) <= n else text[:n] + "…")


def _num(d: dict, key: str, cls: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise GpsdProtocolError(f"gpsd {cls} report: field {key!r} is not a finite number: {v!r}")
    return float(v)


def _int(d: dict, key: str, cls: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise GpsdProtocolError(f"gpsd {cls} report: field {key!r} is not an integer: {v!r}")
    return v


def _str(d: dict, key: str) -> str:
    v = d.get(key, "")
    return v if isinstance(v, str) else str(v)


def _time(d: dict, key: str, cls: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise GpsdProtocolError(f"gpsd {cls} report: field {key!r} is not a time string: {v!r}")
    try:
        return iso_to_ns(v)
    except ValueError as exc:
        raise GpsdProtocolError(f"gpsd {cls} report: {exc}") from None


def _sec_nsec(d: dict, prefix: str, cls: str) -> int:
    sec = _int(d, f"{prefix}_sec", cls)
    nsec = _int(d, f"{prefix}_nsec", cls)
    if sec is None or nsec is None:
        raise GpsdProtocolError(f"gpsd {cls} report lacks {prefix}_sec/{prefix}_nsec")
    return sec * NS_PER_S + nsec


def parse_line(line: str | bytes) -> GpsReport:
    """Parse one line of gpsd JSON into a report.

    Raises :class:`GpsdProtocolError` (a ``ValueError``) naming what is wrong when
    the line is not JSON, not an object, has no ``class`` or has a field of the
    wrong type. Unknown report classes are returned as :class:`OtherReport`.
    """
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GpsdProtocolError(f"gpsd sent a line that is not JSON: {_short(line)}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
        raise GpsdProtocolError(f"gpsd sent JSON without a \"class\": {_short(line)}")
    cls = obj["class"]
    dev = _str(obj, "device")
    if cls == "TPV":
        mode = _int(obj, "mode", cls)
        alt_hae = _num(obj, "altHAE", cls)
        alt_msl = _num(obj, "altMSL", cls)
        alt_old = _num(obj, "alt", cls)      # gpsd < 3.20: MSL; kept as a fallback
        geoid = _num(obj, "geoidSep", cls)
        if alt_msl is None:
            alt_msl = alt_old
        if alt_hae is None and alt_msl is not None and geoid is not None:
            alt_hae = alt_msl + geoid
        return TpvReport(
            mode=mode if mode is not None else 0,
            time_utc_ns=_time(obj, "time", cls),
            lat=_num(obj, "lat", cls), lon=_num(obj, "lon", cls),
            alt_hae_m=alt_hae, alt_msl_m=alt_msl,
            eph_m=_num(obj, "eph", cls), epv_m=_num(obj, "epv", cls),
            epx_m=_num(obj, "epx", cls), epy_m=_num(obj, "epy", cls),
            ept_s=_num(obj, "ept", cls), status=_int(obj, "status", cls), device=dev)
    if cls == "SKY":
        n_seen = _int(obj, "nSat", cls)
        n_used = _int(obj, "uSat", cls)
        sats = obj.get("satellites")
        if isinstance(sats, list):
            if n_seen is None:
                n_seen = len(sats)
            if n_used is None:
                n_used = sum(1 for s in sats if isinstance(s, dict) and s.get("used") is True)
        return SkyReport(n_seen=n_seen, n_used=n_used, hdop=_num(obj, "hdop", cls), device=dev)
    if cls == "GST":
        return GstReport(time_utc_ns=_time(obj, "time", cls), rms_m=_num(obj, "rms", cls),
                         lat_err_m=_num(obj, "lat", cls), lon_err_m=_num(obj, "lon", cls),
                         alt_err_m=_num(obj, "alt", cls), device=dev)
    if cls == "TOFF":
        return ToffReport(real_ns=_sec_nsec(obj, "real", cls),
                          clock_ns=_sec_nsec(obj, "clock", cls), device=dev)
    if cls == "PPS":
        return PpsReport(real_ns=_sec_nsec(obj, "real", cls), clock_ns=_sec_nsec(obj, "clock", cls),
                         precision=_int(obj, "precision", cls), device=dev)
    if cls == "VERSION":
        return VersionReport(release=_str(obj, "release"), proto_major=_int(obj, "proto_major", cls),
                             proto_minor=_int(obj, "proto_minor", cls))
    if cls == "DEVICES":
        devs = obj.get("devices")
        if not isinstance(devs, list):
            raise GpsdProtocolError(f"gpsd DEVICES report without a device list: {_short(line)}")
        return DevicesReport(paths=tuple(_str(d, "path") for d in devs if isinstance(d, dict)))
    if cls == "DEVICE":
        # gpsd omits "activated" (or sends 0) for a device that went away.
        act = obj.get("activated")
        return DeviceReport(path=dev or _str(obj, "path"), activated=bool(act) and act != 0,
                            driver=_str(obj, "driver"))
    if cls == "ERROR":
        return ErrorReport(message=_str(obj, "message"))
    return OtherReport(cls=cls)


# --------------------------------------------------------------- raw feed
@dataclass(frozen=True)
class GpsFeed:
    """Everything gpsd has told this client so far (raw; see :func:`summarize`).

    ``*_mono_ns`` are monotonic arrival times; None means "never".
    """

    connected: bool = False
    #: Why the last connection attempt failed or ended ("" if none).
    conn_error: str = ""
    #: When the current connection (or disconnection) began.
    since_mono_ns: int | None = None
    started_mono_ns: int | None = None
    gpsd_release: str = ""
    devices: tuple[str, ...] | None = None
    last_report_mono_ns: int | None = None
    tpv_mono_ns: int | None = None
    mode: int = 0
    fix_mono_ns: int | None = None
    fix_utc_ns: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    alt_msl_m: float | None = None
    eph_m: float | None = None
    epv_m: float | None = None
    sats_used: int | None = None
    sats_seen: int | None = None
    gst_lat_err_m: float | None = None
    gst_lon_err_m: float | None = None
    toff_offset_ns: int | None = None
    toff_mono_ns: int | None = None
    pps_offset_ns: int | None = None
    pps_mono_ns: int | None = None
    n_reports: int = 0
    n_fixes: int = 0
    bad_lines: int = 0
    last_bad_line: str = ""
    gpsd_error: str = ""


def apply_report(feed: GpsFeed, report: GpsReport, now_mono_ns: int) -> GpsFeed:
    """Fold one report into the feed (pure)."""
    base: dict[str, Any] = {"last_report_mono_ns": now_mono_ns, "n_reports": feed.n_reports + 1}
    if isinstance(report, TpvReport):
        base.update(tpv_mono_ns=now_mono_ns, mode=report.mode)
        if report.mode >= 2 and report.lat is not None and report.lon is not None:
            eph = report.eph_m
            if eph is None and report.epx_m is not None and report.epy_m is not None:
                eph = math.hypot(report.epx_m, report.epy_m)
            base.update(
                fix_mono_ns=now_mono_ns, fix_utc_ns=report.time_utc_ns,
                lat=report.lat, lon=report.lon,
                alt_m=report.alt_hae_m if report.mode >= 3 else None,
                alt_msl_m=report.alt_msl_m if report.mode >= 3 else None,
                eph_m=eph, epv_m=report.epv_m if report.mode >= 3 else None,
                n_fixes=feed.n_fixes + 1)
    elif isinstance(report, SkyReport):
        if report.n_seen is not None:
            base["sats_seen"] = report.n_seen
        if report.n_used is not None:
            base["sats_used"] = report.n_used
    elif isinstance(report, GstReport):
        base.update(gst_lat_err_m=report.lat_err_m, gst_lon_err_m=report.lon_err_m)
    elif isinstance(report, ToffReport):
        base.update(toff_offset_ns=report.offset_ns, toff_mono_ns=now_mono_ns)
    elif isinstance(report, PpsReport):
        base.update(pps_offset_ns=report.offset_ns, pps_mono_ns=now_mono_ns)
    elif isinstance(report, VersionReport):
        base["gpsd_release"] = report.release
    elif isinstance(report, DevicesReport):
        base["devices"] = report.paths
    elif isinstance(report, DeviceReport):
        devs = set(feed.devices or ())
        if report.activated:
            devs.add(report.path)
        else:
            devs.discard(report.path)
        base["devices"] = tuple(sorted(devs))
    elif isinstance(report, ErrorReport):
        base["gpsd_error"] = report.message[:MAX_STATUS_TEXT]
    return replace(feed, **base)


def note_bad_line(feed: GpsFeed, reason: str) -> GpsFeed:
    """Count a line that could not be parsed (it is never silently dropped)."""
    return replace(feed, bad_lines=feed.bad_lines + 1, last_bad_line=reason[:MAX_STATUS_TEXT])


def note_connection(feed: GpsFeed, connected: bool, now_mono_ns: int, error: str = "") -> GpsFeed:
    """Record a connection coming up or going down (pure)."""
    if connected == feed.connected and feed.since_mono_ns is not None:
        return replace(feed, conn_error=error or feed.conn_error)
    return replace(feed, connected=connected, conn_error=error, since_mono_ns=now_mono_ns,
                   started_mono_ns=feed.started_mono_ns if feed.started_mono_ns is not None
                   else now_mono_ns)


# ------------------------------------------------------------ public state
@dataclass(frozen=True)
class GpsState:
    """The node's view of its GPS at one instant.

    ``mode``: 0 unknown (not connected, or no report for ``stale_fix_s``), 1 no fix,
    2 2-D, 3 3-D.
    ``lat``/``lon``/``alt_m`` (WGS84, metres above the ellipsoid) are the last fix,
    kept when the fix is lost (see ``has_fix`` and ``age_s``). ``eph_m``/``epv_m``
    are gpsd's 95 % horizontal/vertical error estimates (m). ``age_s``: seconds
    since that fix arrived. ``pps_offset_ns``/``toff_offset_ns``: GPS time minus
    system time at the last PPS edge / serial fix (> 0: system clock behind).
    ``problem``: one line saying what is wrong and what to check; "" when healthy.
    It holds no running figures, so the same trouble keeps the same text (the
    node logs it once; heartbeats see no change of state): how long there has
    been no fix is ``no_fix_s``, and ``detail`` has the figures for a log line.
    ``no_fix_s``: seconds since the last fix (or since the client started, if
    there was none), None while there is a fix.
    """

    connected: bool
    endpoint: str
    mode: int
    has_fix: bool
    lat: float | None
    lon: float | None
    alt_m: float | None
    alt_msl_m: float | None
    eph_m: float | None
    epv_m: float | None
    sats_used: int | None
    sats_seen: int | None
    fix_utc_ns: int | None
    age_s: float | None
    n_fixes: int
    pps_offset_ns: int | None
    pps_age_s: float | None
    toff_offset_ns: int | None
    toff_age_s: float | None
    devices: tuple[str, ...] | None
    gpsd_release: str
    bad_lines: int
    problem: str
    no_fix_s: float | None = None

    @property
    def detail(self) -> str:
        """The figures behind a "no fix" problem for a log line ("no fix for 35 s,
        9 satellites seen, 7 used"); "" with a fix. Changes at every reading,
        so it is not part of the problem text."""
        if self.no_fix_s is None:
            return ""
        sats = ""
        if self.sats_seen is not None or self.sats_used is not None:
            sats = (f", {self.sats_seen if self.sats_seen is not None else '?'} satellites seen, "
                    f"{self.sats_used if self.sats_used is not None else '?'} used")
        return f"no fix for {self.no_fix_s:.0f} s{sats}"

    def to_status(self) -> dict[str, Any]:
        """Flat scalar map for heartbeats (keys prefixed ``gps_``)."""
        def r(v: float | None, nd: int) -> float | None:
            return None if v is None else round(v, nd)
        return {
            "gps_connected": self.connected,
            "gps_mode": self.mode,
            "gps_eph_m": r(self.eph_m, 2),
            "gps_epv_m": r(self.epv_m, 2),
            "gps_sats_used": self.sats_used,
            "gps_sats_seen": self.sats_seen,
            "gps_age_s": r(self.age_s, 2),
            "gps_no_fix_s": r(self.no_fix_s, 1),
            "gps_pps_offset_us": None if self.pps_offset_ns is None else round(self.pps_offset_ns / 1e3, 3),
            "gps_pps_age_s": r(self.pps_age_s, 2),
            "gps_toff_offset_ms": None if self.toff_offset_ns is None else round(self.toff_offset_ns / 1e6, 3),
            "gps_problem": self.problem[:MAX_STATUS_TEXT],
        }


def _age(then: int | None, now: int) -> float | None:
    return None if then is None else max(0.0, (now - then) / NS_PER_S)


def summarize(feed: GpsFeed, now_mono_ns: int, *, endpoint: str, stale_fix_s: float = 3.0) -> GpsState:
    """The public state at ``now_mono_ns`` (pure).

    A fix counts (``has_fix``) while connected, when the last TPV had mode ≥ 2 and
    arrived within ``stale_fix_s``. The problem text, in order of precedence:
    still connecting; gpsd not reachable; gpsd has no receiver; no fix (with what
    to check: the antenna's sky view, or the receiver's cable when it sends no
    position reports at all); 2-D fix only; gpsd's own last ERROR message. How
    long without a fix is ``no_fix_s``, not part of the text.
    """
    tpv_age = _age(feed.tpv_mono_ns, now_mono_ns)
    fresh = feed.connected and tpv_age is not None and tpv_age <= stale_fix_s
    mode = feed.mode if fresh else 0
    fix_age = _age(feed.fix_mono_ns, now_mono_ns)
    has_fix = fresh and feed.mode >= 2 and fix_age is not None and fix_age <= stale_fix_s
    no_fix_s = None
    if not has_fix:
        no_fix_s = fix_age if fix_age is not None else _age(feed.started_mono_ns, now_mono_ns) or 0.0

    if not feed.connected and feed.conn_error == CONNECTING:
        problem = f"connecting to gpsd at {endpoint}"
    elif not feed.connected:
        why = f" ({feed.conn_error})" if feed.conn_error else ""
        problem = (f"gpsd not reachable at {endpoint}{why} — is gpsd running? "
                   f"(systemctl status gpsd)")
    elif feed.devices == () and not fresh:
        problem = (f"gpsd at {endpoint} has no GPS receiver open — check the cable and "
                   f"DEVICES in /etc/default/gpsd")
    elif not has_fix:
        hint = " — is the antenna connected and does it see the sky?"
        if tpv_age is None or not fresh:
            hint = " — no position reports from the receiver; check its cable and baud rate"
        problem = f"no fix{hint}"
    elif mode == 2:
        problem = "2-D fix only (altitude unknown) — give the antenna a clearer view of the sky"
    elif feed.gpsd_error:
        problem = f"gpsd reported an error: {feed.gpsd_error}"
    else:
        problem = ""

    return GpsState(
        connected=feed.connected, endpoint=endpoint, mode=mode, has_fix=has_fix,
        lat=feed.lat, lon=feed.lon, alt_m=feed.alt_m, alt_msl_m=feed.alt_msl_m,
        eph_m=feed.eph_m, epv_m=feed.epv_m, sats_used=feed.sats_used, sats_seen=feed.sats_seen,
        fix_utc_ns=feed.fix_utc_ns, age_s=fix_age, n_fixes=feed.n_fixes,
        pps_offset_ns=feed.pps_offset_ns, pps_age_s=_age(feed.pps_mono_ns, now_mono_ns),
        toff_offset_ns=feed.toff_offset_ns, toff_age_s=_age(feed.toff_mono_ns, now_mono_ns),
        devices=feed.devices, gpsd_release=feed.gpsd_release, bad_lines=feed.bad_lines,
        problem=problem[:MAX_STATUS_TEXT], no_fix_s=no_fix_s)


# ------------------------------------------------------------------ client
class GpsClient:
    """Keeps a connection to gpsd in a daemon thread; :meth:`state` is instant.

    ``connect_timeout_s`` bounds each connection attempt; reads poll every
    ``poll_s`` so :meth:`stop` returns promptly; a connection silent for
    ``silence_s`` is dropped and re-opened (guards against half-open TCP).
    Failed or ended connections are retried after ``backoff_initial_s``, doubling up
    to ``backoff_max_s``; the backoff resets after a connection that delivered data.
    ``on_report`` (optional) is called in the client thread for every report; its
    exceptions are logged, never propagated.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2947, *,
                 connect_timeout_s: float = 2.0, poll_s: float = 0.25, silence_s: float = 30.0,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 stale_fix_s: float = 3.0,
                 on_report: Callable[[GpsReport], None] | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if not (0 < port < 65536):
            raise ValueError(f"gpsd port must be 1..65535, got {port}")
        for name, v in (("connect_timeout_s", connect_timeout_s), ("poll_s", poll_s),
                        ("silence_s", silence_s), ("backoff_initial_s", backoff_initial_s),
                        ("backoff_max_s", backoff_max_s), ("stale_fix_s", stale_fix_s)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        self.host, self.port = host, int(port)
        self.endpoint = f"{host}:{port}"
        self._connect_timeout_s = connect_timeout_s
        self._poll_s = poll_s
        self._silence_ns = int(silence_s * NS_PER_S)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stale_fix_s = stale_fix_s
        self._on_report = on_report
        self._clock_ns = clock_ns
        self._cond = threading.Condition()
        self._feed = GpsFeed()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, gps: GpsConfig, **kwargs: Any) -> "GpsClient":
        return cls(gps.host, gps.port, **kwargs)

    # -- public API ------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        with self._cond:
            self._feed = note_connection(self._feed, False, self._clock_ns(), CONNECTING)
        self._thread = threading.Thread(target=self._run, name=f"gpsd-{self.endpoint}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop the thread and close the socket; returns within about ``timeout_s``."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t = self._thread
        if t is not None:
            t.join(timeout_s)
        self._thread = None

    def __enter__(self) -> "GpsClient":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def state(self) -> GpsState:
        """The latest state (never blocks on the network)."""
        with self._cond:
            feed = self._feed
        return summarize(feed, self._clock_ns(), endpoint=self.endpoint, stale_fix_s=self._stale_fix_s)

    def wait_for(self, predicate: Callable[[GpsState], bool], timeout_s: float) -> GpsState | None:
        """Wait until ``predicate(state)`` holds; the state, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                st = summarize(self._feed, self._clock_ns(), endpoint=self.endpoint,
                               stale_fix_s=self._stale_fix_s)
                if predicate(st):
                    return st
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                # Re-check at least every 0.2 s: ages and staleness change with time.
                self._cond.wait(min(left, 0.2))

    # -- thread ------------------------------------------------------------
    def _update(self, fn: Callable[[GpsFeed], GpsFeed]) -> None:
        with self._cond:
            self._feed = fn(self._feed)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = self._backoff_initial_s
        was_down_logged = False
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout_s)
            except OSError as exc:
                if isinstance(exc, socket.timeout):
                    reason = f"connect timed out after {self._connect_timeout_s:g} s"
                else:
                    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
                self._update(lambda f: note_connection(f, False, self._clock_ns(), reason))
                if not was_down_logged:
                    log.warning("gpsd not reachable at %s (%s); retrying", self.endpoint, reason)
                    was_down_logged = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
                continue
            got_data, reason = self._session(sock)
            self._update(lambda f: note_connection(f, False, self._clock_ns(), reason))
            if not self._stop.is_set():
                # A silent gpsd (no receiver) is re-opened every silence_s: not a warning.
                level = logging.INFO if reason.startswith("no data") else logging.WARNING
                log.log(level, "gpsd connection to %s ended (%s); reconnecting", self.endpoint, reason)
            was_down_logged = False
            if got_data:
                backoff = self._backoff_initial_s
            self._stop.wait(backoff)
            if not got_data:
                backoff = min(backoff * 2, self._backoff_max_s)

    def _session(self, sock: socket.socket) -> tuple[bool, str]:
        """Talk to one gpsd connection until it ends; (delivered data?, why it ended)."""
        got_data = False
        with sock:
            try:
                sock.settimeout(self._poll_s)
                sock.sendall(WATCH_COMMAND)
            except OSError as exc:
                return False, f"sending WATCH failed: {exc}"
            self._update(lambda f: note_connection(f, True, self._clock_ns()))
            log.debug("connected to gpsd at %s", self.endpoint)
            buf = bytearray()
            last_rx = self._clock_ns()
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    if self._clock_ns() - last_rx > self._silence_ns:
                        return got_data, f"no data from gpsd for {self._silence_ns / NS_PER_S:g} s"
                    continue
                except OSError as exc:
                    return got_data, f"read failed: {exc.strerror or exc}"
                if not chunk:
                    return got_data, "gpsd closed the connection"
                got_data = True
                last_rx = self._clock_ns()
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line = bytes(buf[:nl]).strip()
                    del buf[:nl + 1]
                    if line:
                        self._handle(line)
                if len(buf) > MAX_LINE_BYTES:
                    n = len(buf)
                    buf.clear()
                    self._update(lambda f: note_bad_line(
                        f, f"gpsd sent {n} bytes without a newline; discarded"))
            return got_data, "stopped"

    def _handle(self, line: bytes) -> None:
        now = self._clock_ns()
        try:
            report = parse_line(line)
        except GpsdProtocolError as exc:
            msg = str(exc)
            log.warning("%s", msg)
            self._update(lambda f: note_bad_line(f, msg))
            return
        self._update(lambda f: apply_report(f, report, now))
        if self._on_report is not None:
            try:
                self._on_report(report)
            except Exception:  # a listener's bug must not kill the GPS thread
                log.exception("GPS on_report callback failed")
