"""Survey-in of a static node's position, and "node moved" / "fix lost" alerts.

No IO: the caller feeds fixes (:class:`Fix`, e.g. from :func:`fix_from_gps`) with
its own monotonic time ``t_s`` and asks for a :class:`SurveyStatus`.

Why survey at all: a single GPS fix is off by metres and wanders over minutes;
1 m of node position error is ~3 ms of arrival-time error. Averaging a static
antenna over ``survey_s`` (default 10 min) brings the horizontal error to about a
metre. A position surveyed by other means (RTK, a map) and set in the config
overrides the survey; fixes are then only used to detect that the node moved.

The estimate (:func:`estimate_position`):

* fixes go into a local East-North-Up frame (common/geodesy.py) around the first;
* each fix is weighted by 1/σ², with σ_h = eph/2 and σ_v = epv/2 (gpsd's eph/epv
  are 95 % estimates; /2 is the usual conversion to ~1 σ), or ``default_sigma_m``
  when the receiver gives no estimate;
* outliers are rejected iteratively: horizontal distances from the robust centre
  are Rayleigh-distributed for Gaussian errors, so σ is estimated as
  median(distance)/1.1774 and fixes beyond ``reject_k`` σ (default 4; a good fix
  falls there with probability e^-8 ≈ 3e-4) are dropped; height likewise with the
  MAD;
* GPS errors are correlated over minutes, so N fixes one second apart are not N
  independent samples: the uncertainty of the mean uses an effective count
  n_eff = span / ``corr_s`` (clipped to 1..N), and is the larger of the scatter-based
  and the eph-based value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

import numpy as np

from common.config import GpsConfig, Position
from common.geodesy import LocalFrame

#: Median of a Rayleigh distribution in units of its σ: sqrt(2 ln 2).
_RAYLEIGH_MEDIAN = 1.1774100225154747
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Fix:
    """One GPS fix. ``alt`` (m above the WGS84 ellipsoid) is None for a 2-D fix;
    ``eph_m``/``epv_m`` are 95 % error estimates (None when unknown);
    ``t_utc_ns`` identifies the fix (the same fix fed twice is counted once)."""

    lat: float
    lon: float
    alt: float | None = None
    eph_m: float | None = None
    epv_m: float | None = None
    t_utc_ns: int | None = None


class _GpsLike(Protocol):
    has_fix: bool
    lat: float | None
    lon: float | None
    alt_m: float | None
    eph_m: float | None
    epv_m: float | None
    fix_utc_ns: int | None


def fix_from_gps(state: _GpsLike) -> Fix | None:
    """A :class:`Fix` from a :class:`node.gps.GpsState`, or None without a current fix."""
    if not state.has_fix or state.lat is None or state.lon is None:
        return None
    return Fix(lat=state.lat, lon=state.lon, alt=state.alt_m, eph_m=state.eph_m,
               epv_m=state.epv_m, t_utc_ns=state.fix_utc_ns)


@dataclass(frozen=True)
class SurveyResult:
    """A surveyed position. ``sigma_h_m``: 1-σ horizontal (radial, √(σe²+σn²)) error
    of the mean; ``sigma_v_m``: 1-σ height error, None when only 2-D fixes were seen
    (``position.alt`` is then 0.0)."""

    position: Position
    sigma_h_m: float
    sigma_v_m: float | None
    n_used: int
    n_rejected: int
    span_s: float


@dataclass(frozen=True)
class MovedAlert:
    """Recent fixes are consistently far from the reference position.

    ``message`` is fixed for one kind of trouble (no running figures: the node
    logs it once per change and its heartbeats see no change of state); the
    figures are in the fields and in ``detail``."""

    distance_m: float
    limit_m: float
    window_s: float
    lat: float
    lon: float
    reference: Literal["configured", "surveyed"]

    @property
    def message(self) -> str:
        return (f"node moved: recent fixes are more than {self.limit_m:g} m from the "
                f"{self.reference} position — check the mounting, then re-survey or "
                f"correct [node.position]")

    @property
    def detail(self) -> str:
        """The running figures, for a log line."""
        return (f"fixes for the last {self.window_s:.0f} s are {self.distance_m:.0f} m "
                f"from the {self.reference} position")


@dataclass(frozen=True)
class FixLostAlert:
    """No usable fix for ``since_s`` seconds (``ever``: False if never had one).

    ``message`` does not count the seconds (see :class:`MovedAlert`); ``since_s``
    and ``detail`` do."""

    since_s: float
    ever: bool

    @property
    def message(self) -> str:
        if not self.ever:
            return "no GPS fix since start — check the antenna and gpsd"
        return "GPS fix lost — check the antenna and gpsd"

    @property
    def detail(self) -> str:
        """The running figures, for a log line."""
        if not self.ever:
            return f"no fix in the {self.since_s:.0f} s since start"
        return f"fix lost {self.since_s:.0f} s ago"


Alert = MovedAlert | FixLostAlert


@dataclass(frozen=True)
class SurveyStatus:
    """What the node should use as its position now.

    ``state``: "configured" (from the config), "surveyed" (survey complete),
    "surveying" (``position`` is a provisional running estimate) or "waiting" (no
    fix yet, ``position`` None). ``progress``: 0..1 of ``survey_s``.
    """

    state: Literal["configured", "surveyed", "surveying", "waiting"]
    position: Position | None
    sigma_h_m: float | None
    sigma_v_m: float | None
    progress: float
    n_fixes: int
    n_rejected: int
    alerts: tuple[Alert, ...] = ()

    @property
    def problem(self) -> str:
        """The alerts' messages in one line ("" without alerts); fixed while the
        same alerts stand."""
        return "; ".join(a.message for a in self.alerts)

    @property
    def detail(self) -> str:
        """The alerts' running figures in one line, for a log line."""
        return "; ".join(a.detail for a in self.alerts)

    def to_status(self) -> dict[str, Any]:
        """Flat scalar map for heartbeats (keys prefixed ``pos_``). ``pos_alert`` is
        :attr:`problem`; ``pos_fix_lost_s`` (seconds without a fix) and
        ``pos_moved_m`` (median distance of the recent fixes from the reference)
        are None without that alert."""
        lost = next((a for a in self.alerts if isinstance(a, FixLostAlert)), None)
        moved = next((a for a in self.alerts if isinstance(a, MovedAlert)), None)
        return {
            "pos_state": self.state,
            "pos_sigma_h_m": None if self.sigma_h_m is None else round(self.sigma_h_m, 2),
            "pos_progress": round(self.progress, 3),
            "pos_n_fixes": self.n_fixes,
            "pos_alert": self.problem[:256],
            "pos_fix_lost_s": None if lost is None else round(lost.since_s, 1),
            "pos_moved_m": None if moved is None else round(moved.distance_m, 1),
        }


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, 0.5 * cw[-1])])


def estimate_position(enu: np.ndarray, sigma_h: np.ndarray, sigma_v: np.ndarray,
                      has_alt: np.ndarray, t_s: np.ndarray, *, corr_s: float = 60.0,
                      reject_k: float = 4.0, iterations: int = 4
                      ) -> tuple[np.ndarray, float, float | None, np.ndarray]:
    """Robust weighted mean of fixes in a local frame.

    enu: (n, 3) m; sigma_h, sigma_v: (n,) 1-σ m; has_alt: (n,) bool (False: the
    up component is ignored); t_s: (n,) arrival times (s).
    Returns (centre (3,) m, σ_h of the mean (m), σ_v of the mean (m) or None
    without heights, inlier mask (n,) bool). Needs n ≥ 1.
    """
    enu = np.asarray(enu, dtype=float)
    n = enu.shape[0]
    if n == 0:
        raise ValueError("estimate_position needs at least one fix")
    sh = np.maximum(np.asarray(sigma_h, dtype=float), 1e-3)
    sv = np.maximum(np.asarray(sigma_v, dtype=float), 1e-3)
    has_alt = np.asarray(has_alt, dtype=bool)
    t_s = np.asarray(t_s, dtype=float)
    wh = 1.0 / sh**2
    wv = 1.0 / sv**2

    # Horizontal: start from the weighted median, reject, re-weight, repeat.
    c = np.array([_wmedian(enu[:, 0], wh), _wmedian(enu[:, 1], wh)])
    inl = np.ones(n, dtype=bool)
    for _ in range(iterations):
        d = np.hypot(enu[:, 0] - c[0], enu[:, 1] - c[1])
        scale = max(float(np.median(d[inl])) / _RAYLEIGH_MEDIAN, 0.05)
        new = d <= reject_k * scale
        if not new.any():
            new = d <= np.min(d)
        c = np.array([np.average(enu[new, 0], weights=wh[new]),
                      np.average(enu[new, 1], weights=wh[new])])
        if np.array_equal(new, inl):
            inl = new
            break
        inl = new

    m = int(inl.sum())
    span = float(np.ptp(t_s[inl])) if m > 1 else 0.0
    n_eff = float(np.clip(span / corr_s, 1.0, m))
    res = enu[inl, :2] - c
    var_scatter = float(np.sum(wh[inl, None] * res**2) / np.sum(wh[inl])) * (m / max(m - 1, 1))
    sig_h_scatter = np.sqrt(var_scatter / n_eff)
    # eph-based: the mean's per-axis σ is 1/sqrt(Σw) for independent fixes; with
    # correlation inflate by sqrt(m / n_eff); radial = √2 × per-axis.
    sig_h_model = np.sqrt(2.0 / np.sum(wh[inl]) * (m / n_eff))
    sig_h = float(max(sig_h_scatter, sig_h_model))

    up = enu[:, 2]
    va = has_alt & inl
    if not va.any():
        return np.array([c[0], c[1], 0.0]), sig_h, None, inl
    u0 = _wmedian(up[va], wv[va])
    mad = float(np.median(np.abs(up[va] - u0)))
    vscale = max(_MAD_TO_SIGMA * mad, 0.05)
    vin = va & (np.abs(up - u0) <= reject_k * vscale)
    if not vin.any():
        vin = va
    u = float(np.average(up[vin], weights=wv[vin]))
    mv = int(vin.sum())
    vspan = float(np.ptp(t_s[vin])) if mv > 1 else 0.0
    nv_eff = float(np.clip(vspan / corr_s, 1.0, mv))
    vvar = float(np.sum(wv[vin] * (up[vin] - u) ** 2) / np.sum(wv[vin])) * (mv / max(mv - 1, 1))
    sig_v = float(max(np.sqrt(vvar / nv_eff), np.sqrt(1.0 / np.sum(wv[vin]) * (mv / nv_eff))))
    return np.array([c[0], c[1], u]), sig_h, sig_v, inl


class Survey:
    """Survey-in, then watch for movement and fix loss. Pure (no IO, no clock).

    Feed every GPS poll with :meth:`update` (``fix`` None when there is no fix);
    read :meth:`status`. ``configured`` (a surveyed position from the config)
    overrides the survey. After the reference is known, a :class:`MovedAlert` is
    raised when, over the last ``move_window_s``, at least ``move_fraction`` of the
    fixes (and their median) lie more than ``move_alert_m`` from it; a
    :class:`FixLostAlert` when no fix came for ``fix_lost_s``.
    """

    def __init__(self, *, survey_s: float, move_alert_m: float,
                 configured: Position | None = None, move_window_s: float = 60.0,
                 move_fraction: float = 0.8, fix_lost_s: float = 30.0, corr_s: float = 60.0,
                 min_fixes: int = 10, default_sigma_m: float = 5.0, reject_k: float = 4.0,
                 max_fixes: int = 20_000) -> None:
        if survey_s < 0 or move_alert_m <= 0 or move_window_s <= 0 or fix_lost_s <= 0:
            raise ValueError("survey_s must be ≥ 0 and move_alert_m, move_window_s, fix_lost_s > 0")
        if not 0 < move_fraction <= 1:
            raise ValueError(f"move_fraction must be in (0, 1], got {move_fraction}")
        self.survey_s = float(survey_s)
        self.move_alert_m = float(move_alert_m)
        self.configured = configured
        self.move_window_s = float(move_window_s)
        self.move_fraction = float(move_fraction)
        self.fix_lost_s = float(fix_lost_s)
        self.corr_s = float(corr_s)
        self.min_fixes = int(min_fixes)
        self.default_sigma_m = float(default_sigma_m)
        self.reject_k = float(reject_k)
        self.max_fixes = int(max_fixes)
        self.restart()

    @classmethod
    def from_config(cls, gps: GpsConfig, configured: Position | None, **kwargs: Any) -> "Survey":
        return cls(survey_s=gps.survey_s, move_alert_m=gps.move_alert_m, configured=configured, **kwargs)

    def restart(self) -> None:
        """Forget the survey (not a configured position) and start again."""
        self._frame: LocalFrame | None = (
            LocalFrame(self.configured.lat, self.configured.lon, self.configured.alt)
            if self.configured is not None else None)
        self._rows: list[_Row] = []
        self._result: SurveyResult | None = None
        self._recent: deque[tuple[float, float]] = deque()   # (t_s, distance from reference m)
        self._recent_pos: deque[tuple[float, float, float]] = deque()   # (t_s, lat, lon)
        self._t_first: float | None = None
        self._t_last_fix: float | None = None
        self._t_start: float | None = None
        self._last_id: int | None = None

    # -- feeding -----------------------------------------------------------
    def update(self, fix: Fix | None, t_s: float) -> None:
        """Record one poll at caller time ``t_s`` (monotonic seconds)."""
        if self._t_start is None:
            self._t_start = t_s
        if fix is None:
            return
        if fix.t_utc_ns is not None and fix.t_utc_ns == self._last_id:
            return
        self._last_id = fix.t_utc_ns
        self._t_last_fix = t_s
        if self._frame is None:
            self._frame = _frame_at(fix)
        row = _fix_row(self._frame, fix, t_s, self.default_sigma_m)
        e, n = row[1], row[2]

        ref = self._reference_enu()
        if ref is None:
            if self._t_first is None:
                self._t_first = t_s
            if len(self._rows) < self.max_fixes:
                self._rows.append(row)
            if (t_s - self._t_first >= self.survey_s and len(self._rows) >= self.min_fixes):
                self._result = self._estimate()
                self._recent.clear()
                self._recent_pos.clear()
            return
        d = float(np.hypot(e - ref[0], n - ref[1]))
        self._recent.append((t_s, d))
        self._recent_pos.append((t_s, fix.lat, fix.lon))
        while self._recent and self._recent[0][0] < t_s - self.move_window_s:
            self._recent.popleft()
            self._recent_pos.popleft()

    # -- reading -----------------------------------------------------------
    def _reference_enu(self) -> tuple[float, float] | None:
        if self.configured is not None:
            return (0.0, 0.0)      # the frame is centred on the configured position
        if self._result is not None and self._frame is not None:
            p = self._result.position
            e, n, _ = self._frame.to_enu(p.lat, p.lon, p.alt)
            return (float(e), float(n))
        return None

    def _estimate(self) -> SurveyResult:
        assert self._frame is not None and self._rows
        return _result_from_rows(self._frame, self._rows, corr_s=self.corr_s, reject_k=self.reject_k)

    def result(self) -> SurveyResult | None:
        """The completed survey, or None while surveying (or when configured)."""
        return self._result

    def alerts(self, t_s: float) -> tuple[Alert, ...]:
        out: list[Alert] = []
        if self._t_last_fix is None:
            if self._t_start is not None and t_s - self._t_start >= self.fix_lost_s:
                out.append(FixLostAlert(since_s=t_s - self._t_start, ever=False))
        elif t_s - self._t_last_fix >= self.fix_lost_s:
            out.append(FixLostAlert(since_s=t_s - self._t_last_fix, ever=True))
        if self._recent and self._reference_enu() is not None:
            ts = np.array([r[0] for r in self._recent])
            d = np.array([r[1] for r in self._recent])
            covers = ts[-1] - ts[0] >= 0.8 * self.move_window_s and len(d) >= 5
            far = d > self.move_alert_m
            if covers and far.mean() >= self.move_fraction and np.median(d) > self.move_alert_m:
                lats = np.array([p[1] for p in self._recent_pos])
                lons = np.array([p[2] for p in self._recent_pos])
                out.append(MovedAlert(
                    distance_m=float(np.median(d)), limit_m=self.move_alert_m,
                    window_s=float(ts[-1] - ts[0]), lat=float(np.median(lats)),
                    lon=float(np.median(lons)),
                    reference="configured" if self.configured is not None else "surveyed"))
        return tuple(out)

    def status(self, t_s: float) -> SurveyStatus:
        alerts = self.alerts(t_s)
        n = len(self._rows)
        if self.configured is not None:
            return SurveyStatus("configured", self.configured, None, None, 1.0, n, 0, alerts)
        if self._result is not None:
            r = self._result
            return SurveyStatus("surveyed", r.position, r.sigma_h_m, r.sigma_v_m, 1.0,
                                r.n_used + r.n_rejected, r.n_rejected, alerts)
        if n == 0 or self._t_first is None:
            return SurveyStatus("waiting", None, None, None, 0.0, 0, 0, alerts)
        prov = self._estimate()
        progress = 1.0 if self.survey_s == 0 else min(1.0, (self._rows[-1][0] - self._t_first) / self.survey_s)
        return SurveyStatus("surveying", prov.position, prov.sigma_h_m, prov.sigma_v_m, progress,
                            n, prov.n_rejected, alerts)


_Row = tuple[float, float, float, float, float, float, bool]   # t, e, n, u, σh, σv, has_alt


def _frame_at(fix: Fix) -> LocalFrame:
    return LocalFrame(fix.lat, fix.lon, fix.alt if fix.alt is not None else 0.0)


def _fix_row(frame: LocalFrame, fix: Fix, t_s: float, default_sigma_m: float) -> _Row:
    e, n, u = (float(v) for v in frame.to_enu(
        fix.lat, fix.lon, fix.alt if fix.alt is not None else frame.alt0))
    sh = fix.eph_m / 2.0 if fix.eph_m else default_sigma_m
    sv = fix.epv_m / 2.0 if fix.epv_m else 2.0 * sh
    return (float(t_s), e, n, u, sh, sv, fix.alt is not None)


def _result_from_rows(frame: LocalFrame, rows: Sequence[_Row], *, corr_s: float,
                      reject_k: float) -> SurveyResult:
    a = np.array([r[:6] for r in rows], dtype=float)
    has_alt = np.array([r[6] for r in rows], dtype=bool)
    c, sh, sv, inl = estimate_position(a[:, 1:4], a[:, 4], a[:, 5], has_alt, a[:, 0],
                                       corr_s=corr_s, reject_k=reject_k)
    lat, lon, alt = frame.to_wgs84(c)
    span = float(np.ptp(a[inl, 0])) if inl.sum() > 1 else 0.0
    return SurveyResult(position=Position(float(lat), float(lon), float(alt) if sv is not None else 0.0),
                        sigma_h_m=sh, sigma_v_m=sv, n_used=int(inl.sum()),
                        n_rejected=int((~inl).sum()), span_s=span)


def survey_fixes(fixes: Sequence[Fix], t_s: Sequence[float], *, corr_s: float = 60.0,
                 default_sigma_m: float = 5.0, reject_k: float = 4.0) -> SurveyResult:
    """One-shot survey of ``fixes`` taken at times ``t_s`` (s); pure."""
    if len(fixes) == 0 or len(fixes) != len(t_s):
        raise ValueError(f"need at least one fix and one time per fix, "
                         f"got {len(fixes)} fixes and {len(t_s)} times")
    frame = _frame_at(fixes[0])
    rows = [_fix_row(frame, f, t, default_sigma_m) for f, t in zip(fixes, t_s)]
    return _result_from_rows(frame, rows, corr_s=corr_s, reject_k=reject_k)
