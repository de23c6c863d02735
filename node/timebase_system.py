"""Timebase from the chrony-disciplined system clock (``TimebaseConfig.mode = "system"``).

Each audio block brings its first frame index, PortAudio's ADC time of that frame
(in a clock that depends on the device) and the callback's ``monotonic_ns`` /
``time_ns``. This module turns them into ``t_utc = a + n / fs_eff``:

1. **Which clock is the ADC time in?** Per block, :func:`classify_adc_time` says
   whether ``adc_time_s`` is plausible as CLOCK_REALTIME or CLOCK_MONOTONIC (the
   first frame must have been captured at most ``max_age_s`` before, and not after,
   the callback). Anything else is stream-relative (JACK: it advances with the frames
   but from ~0) or garbage (0, NaN, jumps). The timebase uses the ADC time when at
   least 80 % of the last 50 blocks agree on one real clock, and falls back to the
   callback's wall time otherwise (switching costs a re-anchor, see 4).
2. **Observations.** ADC time: frame ``first_frame`` ↔ the ADC time in UTC (a
   monotonic ADC time is moved to UTC with the same callback's ``wall_ns −
   mono_ns``). Callback time: frame ``first_frame + frames`` (the block's end, which
   the callback cannot precede) ↔ ``wall_ns``.
3. **Robust fit.** Callback and driver delays are one-sided and heavy-tailed, so the
   fit follows the *lower envelope*: observations are grouped in ``bin_s`` bins of
   audio, the earliest observation of each bin (relative to the current line) is
   kept, and a line is fitted through the bin minima of the last ``fit_window_s``
   with iterated 4-σ (MAD) clipping. The fit is redone whenever a bin closes, so the
   slope (the true sample rate) follows the oscillator's drift.
4. **Steps.** An observation more than ``step_threshold_s`` from the line is set
   aside. ``step_blocks`` such observations in a row that agree with each other
   (spread < ``step_threshold_s``/2) are a clock step, lost frames or a device
   restart: the window is cleared and the fit re-anchors on new data with the old
   slope, which gives a usable offset after ``reanchor_s`` of audio. Isolated outliers
   (a late callback) are simply dropped. After a block flagged ``overflow`` the status
   is unlocked until ``step_blocks`` observations agree with the fit again.
5. **Status.** Locked once the window spans ``min_lock_s`` (or ``reanchor_s`` after a
   re-anchor with a known rate). ``sigma_ns`` = √(se² + s² + clock²): se = the line's
   standard error at the newest frame, s = the scatter of the bin minima about the
   line (the envelope's unknown bias is of that order), clock = the system clock's
   own error against UTC. The fit only follows the system clock, so it cannot see
   that clock's error: :meth:`SystemClockTimebase.set_clock_error` supplies it (the
   node's health thread feeds chrony's error bound there every refresh, see
   ``NodeServices`` in node/main.py; ``clock_sigma_ns`` until then). Degraded while
   unlocked, and while the clock has a problem (chrony not synchronised, or its
   error bound beyond the limit); ``detail`` then says which. The constant ADC/USB
   latency ``cfg.latency_s`` is subtracted and assumed exact.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from common.config import TimebaseConfig
from common.timefmt import NS_PER_S
from node.audio import AudioBlock
from node.timebase import TimingStatus

#: ADC-time classes, see :func:`classify_adc_time`.
ADC_REALTIME = "realtime"
ADC_MONOTONIC = "monotonic"
ADC_OTHER = "other"
ADC_INVALID = "invalid"

#: Observation sources the timebase can use.
SOURCE_CALLBACK = "callback"
SOURCE_ADC_REALTIME = "adc-realtime"
SOURCE_ADC_MONOTONIC = "adc-monotonic"


def classify_adc_time(adc_time_s: float | None, mono_ns: int, wall_ns: int, *,
                      max_age_s: float = 1.0, future_s: float = 0.002) -> str:
    """Which clock a block's ADC time can be in.

    ``"realtime"`` / ``"monotonic"``: ``adc_time_s`` lies within ``max_age_s`` before
    (and at most ``future_s`` after) the callback's ``wall_ns`` / ``mono_ns``;
    ``"invalid"``: None, not finite or <= 0; ``"other"``: finite but in neither clock
    (stream-relative, or a wrong clock).
    """
    if adc_time_s is None:
        return ADC_INVALID
    adc = float(adc_time_s)
    if not math.isfinite(adc) or adc <= 0.0:
        return ADC_INVALID
    if wall_ns > 0 and -max_age_s <= adc - wall_ns / NS_PER_S <= future_s:
        return ADC_REALTIME
    if mono_ns > 0 and -max_age_s <= adc - mono_ns / NS_PER_S <= future_s:
        return ADC_MONOTONIC
    return ADC_OTHER


def _clipped_line(x: np.ndarray, y: np.ndarray, slope: float | None,
                  iterations: int = 4, k: float = 4.0,
                  floor: float = 100.0) -> tuple[float, float, np.ndarray, float]:
    """Fit y = c0 + c1·x (or only c0 with c1 = ``slope`` fixed) with MAD clipping.

    x, y: (m,) float. Returns (c0, c1, inlier mask, residual scale) where the scale is
    the std of the inlier residuals (at least ``floor``, in y's units).
    """
    inl = np.ones(x.shape[0], dtype=bool)
    c0, c1 = 0.0, 0.0 if slope is None else float(slope)
    for _ in range(iterations):
        xi, yi = x[inl], y[inl]
        if slope is None and xi.shape[0] >= 2 and np.ptp(xi) > 0:
            c1, c0 = np.polyfit(xi, yi, 1)
        else:
            c0 = float(np.median(yi - c1 * xi))
        r = y - (c0 + c1 * x)
        mad = float(np.median(np.abs(r[inl] - np.median(r[inl]))))
        scale = max(1.4826 * mad, floor)
        new = np.abs(r) <= k * scale
        if new.sum() < max(2, inl.sum() // 2) or np.array_equal(new, inl):
            break
        inl = new
    r = y - (c0 + c1 * x)
    dof = max(1, int(inl.sum()) - (1 if slope is not None else 2))
    s = math.sqrt(float(np.sum(r[inl] ** 2)) / dof) if inl.sum() > 1 else floor
    return float(c0), float(c1), inl, max(s, floor)


class SystemClockTimebase:
    """Sample index → UTC from the disciplined system clock (see the module docstring).

    ``sample_rate``: nominal rate (Hz). Keyword tuning values are in seconds of audio:
    ``bin_s`` (lower-envelope bin), ``min_lock_s`` (data span needed for a fresh lock;
    default max(5 s, fit_window_s / 4), at most half the window), ``reanchor_s`` (span
    needed after a step when the rate is known), ``step_threshold_s`` / ``step_blocks``
    (step detection), ``clock_sigma_ns`` (the system clock's 1-σ error, added to σ,
    until :meth:`set_clock_error` gives a current one), ``max_rate_error_ppm`` (a fitted rate further off than this is not a lock).
    """

    #: Move the origin when the newest point is this far (ns, ~11.6 days) from it, so
    #: times relative to the origin stay exact in float64.
    _REBASE_NS = 1e15

    def __init__(self, cfg: TimebaseConfig, sample_rate: float, *,
                 bin_s: float = 0.5, min_lock_s: float | None = None,
                 reanchor_s: float = 1.0, step_threshold_s: float = 0.002,
                 step_blocks: int = 10, clock_sigma_ns: float = 1000.0,
                 max_rate_error_ppm: float = 1000.0) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        if cfg.fit_window_s < 4 * bin_s:
            raise ValueError(
                f"timebase.fit_window_s = {cfg.fit_window_s} s is too short; "
                f"use at least {4 * bin_s:g} s (30-120 s recommended)")
        if bin_s <= 0 or reanchor_s <= 0 or step_threshold_s <= 0 or step_blocks < 2:
            raise ValueError("bin_s, reanchor_s, step_threshold_s must be > 0 and step_blocks >= 2")
        self.cfg = cfg
        self.mode = "system"
        self._fs = float(sample_rate)
        self._ns_per_frame = NS_PER_S / self._fs
        self._bin_frames = max(1, round(bin_s * self._fs))
        self._window_frames = cfg.fit_window_s * self._fs
        lock_s = min_lock_s if min_lock_s is not None else max(5.0, 0.25 * cfg.fit_window_s)
        self._min_lock_frames = min(lock_s * self._fs, 0.5 * self._window_frames)
        self._reanchor_frames = reanchor_s * self._fs
        self._gate_ns = step_threshold_s * NS_PER_S
        self._step_blocks = int(step_blocks)
        # (σ ns, problem) of the system clock; one tuple, see set_clock_error.
        self._clock: tuple[float, str] = (0.0, "")
        self.set_clock_error(clock_sigma_ns)
        self._max_ppm = float(max_rate_error_ppm)
        self._latency_ns = round(cfg.latency_s * NS_PER_S)

        self._classes: deque[str] = deque(maxlen=50)
        self._prev_adc: tuple[int, float] | None = None
        self._adc_first: float | None = None
        self._stream_like = 0
        self.source = SOURCE_CALLBACK
        self._counts = {"blocks": 0, "observations": 0, "outliers": 0, "steps": 0,
                        "source_switches": 0, "no_clock": 0}
        self._event = "waiting for audio"
        self._prior_slope: float | None = None  # ns per frame, kept across re-anchors
        self._last_frame: int | None = None
        self._suspect = 0
        self._reset(None)

    # ------------------------------------------------------------ state
    def _reset(self, reason: str | None) -> None:
        """Forget the window (keeps the slope as a prior for a quick re-anchor)."""
        if reason is not None:
            self._event = reason
            if self._fit is not None and self._fit_free:
                self._prior_slope = self._fit[2]
        self._n0: int | None = None
        self._t0: int = 0
        self._bx: deque[float] = deque()
        self._by: deque[float] = deque()
        self._cur_bin: int | None = None
        self._cur_best: tuple[float, float, float] | None = None  # (resid, x, y)
        self._suspects: list[tuple[int, int, float]] = []
        self._fit: tuple[float, float, float] | None = None  # (x_ref, c0 at x_ref, slope)
        self._fit_free = False
        self._fit_stats = (0, 0.0, 0.0, 0.0, math.inf)  # (m, xbar, sxx, span, s)

    def set_clock_error(self, sigma_ns: float, problem: str = "") -> None:
        """The system clock's current error against UTC (e.g. from chrony).

        ``sigma_ns``: its 1-σ error (ns, finite, ≥ 0), added to every σ from now on.
        ``problem``: why the clock is not fit for GPS-grade timing ("" when it is);
        while it is non-empty :meth:`status` is degraded and its ``detail`` says so.
        Raises ValueError for a negative or non-finite ``sigma_ns`` (nothing changes).

        May be called from another thread than the audio thread (the node calls it
        from its health thread): both values are replaced by one assignment of a
        tuple, which is atomic in CPython, and :meth:`status` reads that attribute
        once, so it sees the old pair or the new one, never a mix, and no lock is
        needed that could make the audio thread wait.
        """
        sigma = float(sigma_ns)
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"clock sigma_ns must be a finite number ≥ 0, got {sigma_ns!r}")
        if not isinstance(problem, str):
            raise ValueError(f"clock problem must be a text, got {problem!r}")
        self._clock = (sigma, problem)

    # ------------------------------------------------------------ observe
    def _update_source(self, block: AudioBlock) -> str:
        """Track the ADC clock class, switch source if needed; return this block's class."""
        cls = classify_adc_time(block.adc_time_s, block.mono_ns, block.wall_ns)
        if cls == ADC_OTHER and self._prev_adc is not None:
            # Stream-relative clocks advance with the frames; garbage does not.
            f_prev, a_prev = self._prev_adc
            expect = (block.first_frame - f_prev) / self._fs
            ok = expect > 0 and abs((float(block.adc_time_s) - a_prev) - expect) < 0.5 * expect
            self._stream_like = self._stream_like + 1 if ok else 0
        if cls != ADC_INVALID:
            self._prev_adc = (block.first_frame, float(block.adc_time_s))
            if self._adc_first is None:
                self._adc_first = float(block.adc_time_s)
        self._classes.append(cls)
        n = len(self._classes)
        if n < 10:
            return cls
        frac = {c: self._classes.count(c) / n for c in (ADC_REALTIME, ADC_MONOTONIC)}
        best = max(frac, key=frac.get)
        wanted = self.source
        if self.source == SOURCE_CALLBACK:
            if frac[best] >= 0.8:
                wanted = SOURCE_ADC_REALTIME if best == ADC_REALTIME else SOURCE_ADC_MONOTONIC
        else:
            mine = ADC_REALTIME if self.source == SOURCE_ADC_REALTIME else ADC_MONOTONIC
            if frac[mine] < 0.5:
                wanted = SOURCE_CALLBACK
        if wanted != self.source:
            self.source = wanted
            self._counts["source_switches"] += 1
            self._reset(f"timing source changed to {wanted}")
        return cls

    def adc_clock(self) -> str:
        """What the recent ADC times look like: realtime, monotonic, stream-relative
        (started near 0 and advancing with the frames), garbage (any other finite
        value), invalid (None/0/NaN) or mixed."""
        if not self._classes:
            return "unknown"
        top = max(set(self._classes), key=self._classes.count)
        if self._classes.count(top) < 0.8 * len(self._classes):
            return "mixed"
        if top == ADC_OTHER:
            starts_at_zero = self._adc_first is not None and self._adc_first < 10.0
            return "stream-relative" if self._stream_like >= 5 and starts_at_zero else "garbage"
        return top

    def observe(self, block: AudioBlock) -> None:
        """Learn from one block's timestamps (samples are not looked at)."""
        self._counts["blocks"] += 1
        if block.overflow:
            self._suspect = self._step_blocks  # frames may be lost: confirm before trusting
        end = block.first_frame + block.frames
        self._last_frame = end if self._last_frame is None else max(self._last_frame, end)
        cls = self._update_source(block)
        if self.source == SOURCE_CALLBACK:
            if block.wall_ns <= 0:
                self._counts["no_clock"] += 1
                return
            n, t = end, int(block.wall_ns)
        else:
            mine = ADC_REALTIME if self.source == SOURCE_ADC_REALTIME else ADC_MONOTONIC
            if cls != mine:
                self._counts["outliers"] += 1
                return
            t = round(float(block.adc_time_s) * NS_PER_S)
            if mine == ADC_MONOTONIC:
                t += int(block.wall_ns) - int(block.mono_ns)
            n = block.first_frame
        self._add(int(n), int(t))

    def _predict_rel(self, x: float) -> float:
        """Line value (ns after t0) at x frames after n0."""
        if self._fit is not None:
            x_ref, c0, c1 = self._fit
            return c0 + c1 * (x - x_ref)
        return x * (self._prior_slope or self._ns_per_frame)

    def _add(self, n: int, t: int) -> None:
        self._counts["observations"] += 1
        if self._n0 is None:
            self._n0, self._t0 = n, t
        x = float(n - self._n0)
        y = float(t - self._t0)
        r = y - self._predict_rel(x)
        if abs(r) > self._gate_ns:
            self._suspects.append((n, t, r))
            del self._suspects[:-self._step_blocks]
            rs = [s[2] for s in self._suspects[-self._step_blocks:]]
            if len(rs) >= self._step_blocks and max(rs) - min(rs) < self._gate_ns / 2:
                keep = self._suspects[-self._step_blocks:]
                self._counts["steps"] += 1
                self._suspect = 0
                self._reset(f"clock step or lost frames ({np.median(rs) / 1e6:+.3f} ms); "
                            "re-anchoring")
                for n_s, t_s, _ in keep:
                    self._add_point(n_s, t_s)
            else:
                self._counts["outliers"] += 1
            return
        self._suspects.clear()
        if self._suspect:
            self._suspect -= 1
        self._add_point(n, t)

    def _add_point(self, n: int, t: int) -> None:
        if self._n0 is None:
            self._n0, self._t0 = n, t
        if t - self._t0 > self._REBASE_NS and self._bx:
            self._rebase()
        x = float(n - self._n0)
        y = float(t - self._t0)
        b = int(x // self._bin_frames)
        if self._cur_bin is not None and b != self._cur_bin:
            self._close_bin()
        self._cur_bin = b
        r = y - self._predict_rel(x)
        if self._cur_best is None or r < self._cur_best[0]:
            self._cur_best = (r, x, y)

    def _close_bin(self) -> None:
        if self._cur_best is None:
            return
        _, x, y = self._cur_best
        self._cur_best = None
        self._bx.append(x)
        self._by.append(y)
        while self._bx and x - self._bx[0] > self._window_frames:
            self._bx.popleft()
            self._by.popleft()
        self._refit()

    def _rebase(self) -> None:
        """Move the origin forward by whole bins (so binning is unchanged)."""
        dbin = int(self._bx[-1]) // self._bin_frames
        dx = dbin * self._bin_frames
        dy = int(self._by[-1])
        self._n0 += dx
        self._t0 += dy
        fx, fy = float(dx), float(dy)
        self._bx = deque(v - fx for v in self._bx)
        self._by = deque(v - fy for v in self._by)
        if self._fit is not None:
            x_ref, c0, c1 = self._fit
            self._fit = (x_ref - fx, c0 - fy, c1)
        if self._cur_best is not None:
            r, x, y = self._cur_best
            self._cur_best = (r, x - fx, y - fy)
        if self._cur_bin is not None:
            self._cur_bin -= dbin

    def _refit(self) -> None:
        m = len(self._bx)
        if m < 2 and self._prior_slope is None:
            return
        x = np.fromiter(self._bx, float, m)
        y = np.fromiter(self._by, float, m)
        x_ref = float(x[-1])
        xc = x - x_ref
        yd = y - x * self._ns_per_frame  # detrended by the nominal rate: small numbers
        span = float(np.ptp(x)) if m > 1 else 0.0
        free = m >= 4 and span >= self._min_lock_frames
        if free or self._prior_slope is None:
            c0, c1, inl, s = _clipped_line(xc, yd, None)
        else:
            c0, c1, inl, s = _clipped_line(xc, yd, self._prior_slope - self._ns_per_frame)
        slope = c1 + self._ns_per_frame
        self._fit = (x_ref, c0 + x_ref * self._ns_per_frame, slope)
        self._fit_free = free or self._prior_slope is None
        xi = xc[inl]
        mi = int(inl.sum())
        xbar = float(xi.mean()) if mi else 0.0
        sxx = float(np.sum((xi - xbar) ** 2)) if mi else 0.0
        self._fit_stats = (mi, xbar, sxx, span, s)

    # ------------------------------------------------------------ answers
    def to_utc_ns(self, frame: float) -> int:
        """UTC ns of stream frame ``frame`` from the current fit, minus ``cfg.latency_s``."""
        if self._n0 is None:
            raise RuntimeError(
                "SystemClockTimebase has no timing data yet: observe() audio blocks "
                "with callback timestamps first")
        rel = self._predict_rel(float(frame) - self._n0)
        return self._t0 + round(rel) - self._latency_ns

    def rate_hz(self) -> float:
        """Estimated true sample rate (nominal until a fit exists)."""
        slope = self._fit[2] if self._fit is not None else (self._prior_slope or self._ns_per_frame)
        return NS_PER_S / slope

    def _sigma_at(self, frame: float, clock_sigma_ns: float) -> float:
        m, xbar, sxx, _span, s = self._fit_stats
        if self._fit is None or m == 0:
            return math.inf
        xq = float(frame) - self._n0 - self._fit[0]
        if self._fit_free and sxx > 0:
            se2 = s * s * (1.0 / m + (xq - xbar) ** 2 / sxx)
        else:  # offset only, slope from before the re-anchor: allow 0.1 ppm of slope error
            se2 = s * s / m + (1e-7 * self._ns_per_frame * (xq - xbar)) ** 2
        return math.sqrt(se2 + s * s + clock_sigma_ns ** 2)

    def status(self) -> TimingStatus:
        """Lock, 1-σ uncertainty at the newest frame, rate, and why if degraded
        (not locked, or the system clock has a problem: :meth:`set_clock_error`)."""
        clock_sigma, clock_problem = self._clock     # read once: see set_clock_error
        m, _xbar, _sxx, span, _s = self._fit_stats
        rate = self.rate_hz()
        ppm = (rate / self._fs - 1.0) * 1e6
        sigma = (self._sigma_at(self._last_frame, clock_sigma)
                 if self._last_frame is not None else math.inf)
        need = self._min_lock_frames if self._fit_free else self._reanchor_frames
        detail = ""
        if self._n0 is None:
            locked = False
            detail = ("no callback timestamps in the audio blocks"
                      if self._counts["no_clock"] else self._event)
        elif self._fit is None or span < need or m < 2:
            locked = False
            # a state, not a progress figure: heartbeats carry the whole status
            # whenever a text in it changes (node.pipeline.status_states)
            detail = f"{self._event}: collecting {need / self._fs:.1f} s of timing data"
        elif abs(ppm) > self._max_ppm:
            locked = False
            detail = f"fitted sample rate is {ppm:+.0f} ppm off nominal: wrong sample_rate or clock?"
        elif self._suspect:
            locked = False
            detail = "audio overflow (frames lost?): checking the next blocks against the fit"
        else:
            locked = True
        if clock_problem:
            detail = f"{detail}; {clock_problem}" if detail else clock_problem
        if not math.isfinite(sigma):
            sigma = 1e9
        return TimingStatus(mode=self.mode, locked=locked, sigma_ns=float(sigma),
                            degraded=not locked or bool(clock_problem), rate_hz=rate,
                            detail=detail)

    def stats(self) -> dict:
        """Counters for heartbeats and debugging."""
        return {**self._counts, "source": self.source, "adc_clock": self.adc_clock(),
                "bins": len(self._bx), "rate_hz": self.rate_hz()}
