"""Timebase from GPS PPS pulses recorded in an audio channel (``mode = "pps-audio"``).

The GPS receiver's 1-PPS output, attenuated by a divider, goes into input channel
``cfg.pps_channel`` of the same ADC as the microphone. The ADC's own delays then hit
the pulse and the sound alike, so the sample index of each PPS edge ties the audio
stream to UTC to within microseconds, whatever the USB or scheduling latency.

Pipeline, each step a separate piece:

1. :class:`PpsEdgeDetector` (streaming, works across block boundaries) finds rising
   edges: a candidate where the signal rises by more than a threshold (max of
   ``min_amplitude``, 10× the noise, 30 % of the recent pulse height) within
   ``rise_s``; its baseline is the median of the ``pre_s`` before the rise and its top
   a line through the signal 0.5–2 ``post_s`` after the edge, extrapolated back to it
   (so AC-coupling droop does not bias it); the edge time is where the signal crosses
   50 % of that step, interpolated (cubic, sub-sample) between the samples around the
   crossing. Windows are anchored on the edge, so block boundaries and the threshold
   do not change the result. A slow RC rise only moves the 50 % point by a constant
   (τ·ln 2 for an RC of τ), which ``cfg.latency_s`` can absorb.
2. Each edge is labelled with its UTC second: the edge's approximate system time
   (from the newest block's ``wall_ns``) rounded to the nearest second, so the system
   clock only needs to be right to ±0.4 s.
3. :class:`PpsAudioTimebase` accepts an edge when it is within a gate of where the
   current fit predicts that second's edge; others (glitches, echoes, a second pulse)
   are rejected. Three rejected edges that agree with each other (or two, before any
   fit) re-seed the fit: that recovers from re-labelled seconds or lost frames.
4. :func:`fit_pps_edges` fits frame = c0 + c1·(second − ref) by least squares over the
   accepted edges of the last ``window_s`` seconds; c1 is the true sample rate, so the
   oscillator's drift is followed second by second. Missing pulses just leave gaps.
5. Status: locked with ≥ ``min_edges`` edges and the last one at most ``lost_after_s``
   of audio ago; after that the fit is extrapolated (unlocked, degraded) with a σ
   that grows with the time since the last edge. A block flagged ``overflow`` (frames
   may be lost) also unlocks until the next edge confirms the fit or re-seeds it.

Latency convention (same as ``system`` mode): ``to_utc_ns`` subtracts
``cfg.latency_s``, the amount by which the audio lags reality. In this mode that is
the microphone path's extra delay minus the PPS path's (≈ 0 for a fast PPS edge;
−τ·ln 2 for a PPS edge slowed by an RC of τ).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from common.config import TimebaseConfig
from common.timefmt import NS_PER_S
from node.audio import AudioBlock
from node.timebase import TimingStatus


# ----------------------------------------------------------------- edge detection
_DEFER = object()  # _locate: come back when more samples have arrived


class PpsEdgeDetector:
    """Streaming rising-edge finder with sub-sample (50 % crossing) edge times.

    Feed consecutive blocks of one channel with :meth:`push`; an edge split between
    blocks is found once enough samples after it (``post_s``) have arrived. A gap in
    ``first_frame`` restarts the search at the new block.
    """

    def __init__(self, sample_rate: float, *, rise_s: float = 0.0005, pre_s: float = 0.0005,
                 post_s: float = 0.001, min_amplitude: float = 0.02) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        self.fs = float(sample_rate)
        self.L = max(2, round(rise_s * self.fs))   # rise window (samples)
        self.M = max(4, round(pre_s * self.fs))    # baseline window before the rise
        self.R = max(2, round(post_s * self.fs))   # window after the rise for the top
        self.min_amplitude = float(min_amplitude)
        self._buf = np.zeros(0)
        self._start = 0          # stream frame of _buf[0]
        self._scan = 0           # first stream frame not yet searched for a candidate
        self._noise = 0.0
        self._amps: deque[float] = deque(maxlen=5)
        self._started = False

    def reset_amplitude(self) -> None:
        """Forget the learned pulse height (e.g. after the PPS was lost)."""
        self._amps.clear()

    def threshold(self) -> float:
        """The rise (full-scale units) that makes a candidate edge right now."""
        amp = sorted(self._amps)[len(self._amps) // 2] if self._amps else 0.0
        return max(self.min_amplitude, 10.0 * self._noise, 0.3 * amp)

    def push(self, x: np.ndarray, first_frame: int) -> list[tuple[float, float]]:
        """Add samples ``x`` (n,) starting at stream frame ``first_frame``.

        Returns the edges completed by this block as (edge_frame, step_height): the
        fractional stream frame of the 50 % crossing and the step height.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not self._started or first_frame != self._start + self._buf.shape[0]:
            self._buf = np.zeros(0)
            self._start = int(first_frame)
            self._scan = int(first_frame)
            self._started = True
        if x.shape[0] >= 8:
            # Robust noise: median |first difference| (a step affects one difference).
            d = np.abs(x[1:] - x[:-1])
            k = d.shape[0] // 2
            block_noise = 1.4826 * float(np.partition(d, k)[k]) / math.sqrt(2)
            self._noise = block_noise if self._noise == 0.0 else 0.95 * self._noise + 0.05 * block_noise
        buf = np.concatenate((self._buf, x))
        L, M, R = self.L, self.M, self.R
        lo = max(self._scan - self._start, 2 * L + M + 2)
        hi = buf.shape[0] - 2 * R - L
        edges: list[tuple[float, float]] = []
        theta = self.threshold()
        probe = buf[lo - L:hi] if hi > lo else None
        if probe is not None and float(probe.max()) - float(probe.min()) > theta:  # most blocks: no
            win = np.lib.stride_tricks.sliding_window_view(buf[lo - L:hi - 1], L)
            rise = buf[lo:hi] - win.min(axis=1)
            next_ok = lo
            deferred = None
            for i in (np.flatnonzero(rise > theta) + lo).tolist():
                if i < next_ok:
                    continue
                edge = self._locate(buf, i, theta)
                if edge is _DEFER:  # the edge's windows reach past the buffer: next block
                    deferred = i
                    break
                if edge is None:
                    continue
                pos, amp = edge
                edges.append((self._start + pos, amp))
                self._amps.append(amp)
                theta = self.threshold()
                next_ok = i + L + R
            self._scan = self._start + (deferred if deferred is not None else max(hi, next_ok))
        elif hi > lo:
            self._scan = self._start + hi
        keep_from = max(0, min(self._scan - self._start, buf.shape[0]) - (2 * L + M + 3))
        self._buf = buf[keep_from:]
        self._start += keep_from
        return edges

    def _locate(self, buf: np.ndarray, i: int, theta: float) -> tuple[float, float] | object | None:
        """Sub-sample 50 % crossing of the rise detected at buf index ``i``.

        Windows are anchored on the edge itself (the sample j0 before the crossing),
        not on where the detector tripped, so the result does not depend on the
        threshold or on block boundaries: baseline = median of the ``pre_s`` ending
        ``rise_s`` before j0; top = a line through the signal ``post_s``/2 … 2·``post_s``
        after j0, extrapolated back to j0 (removes AC-coupling droop and the upward
        bias a maximum of noisy samples has); crossing = cubic interpolation through
        the four samples around the 50 % level (linear if that fails). Starts from a
        rough max-based estimate and repeats until j0 is stable. Needs buf from
        ``i − 2L − M`` to ``j0 + 2R``; returns _DEFER when the buffer ends before that.
        """
        L, M, R = self.L, self.M, self.R
        base = float(np.median(buf[i - L - M:i - L]))
        lo = i - L - 1
        seg = buf[lo:i + L + 2 * R]
        rough = _first_crossing(seg, base + 0.5 * (float(buf[i:i + R].max()) - base))
        if rough is None:
            return None
        j0 = lo + rough[0] - 1
        result = None
        for _ in range(4):
            if j0 + 2 * R > buf.shape[0] or j0 + 2 > lo + seg.shape[0]:
                return _DEFER
            base = float(np.median(buf[j0 - L - M:j0 - L]))
            tail = buf[j0 + R // 2:j0 + 2 * R]
            xs = np.arange(R // 2, R // 2 + tail.shape[0], dtype=np.float64)
            _droop, top = np.polyfit(xs, tail, 1)
            amp = float(top) - base
            if amp < theta:
                return None
            level = base + 0.5 * amp
            fine = _first_crossing(seg, level)
            if fine is None:
                return None
            k, t = fine
            t = _cubic_crossing(seg[k - 2:k + 2], level, t)
            result = (float(lo + k - 1) + t, amp)
            if lo + k - 1 == j0:
                break
            j0 = lo + k - 1
        return result


def _first_crossing(seg: np.ndarray, level: float) -> tuple[int, float] | None:
    """First k >= 2 with seg[k] >= level (and a sample after it), and the linear
    fraction t in [0, 1] of the crossing between seg[k−1] and seg[k]."""
    above = np.flatnonzero(seg >= level)
    above = above[above >= 2]
    if above.shape[0] == 0 or int(above[0]) + 1 >= seg.shape[0]:
        return None
    k = int(above[0])
    y0, y1 = float(seg[k - 1]), float(seg[k])
    return k, ((level - y0) / (y1 - y0) if y1 > y0 else 0.0)


def _cubic_crossing(p: np.ndarray, level: float, t: float) -> float:
    """Where the cubic through p (4,) at nodes −1, 0, 1, 2 equals ``level`` in [0, 1].

    Newton's method from the linear estimate ``t``; returns ``t`` unchanged when the
    cubic does not give a crossing inside the interval.
    """
    p0, p1, p2, p3 = (float(v) for v in p)
    u = t
    for _ in range(6):
        val = (-p0 * u * (u - 1) * (u - 2) / 6 + p1 * (u + 1) * (u - 1) * (u - 2) / 2
               - p2 * (u + 1) * u * (u - 2) / 2 + p3 * (u + 1) * u * (u - 1) / 6)
        der = (-p0 * (3 * u * u - 6 * u + 2) / 6 + p1 * (3 * u * u - 4 * u - 1) / 2
               - p2 * (3 * u * u - 2 * u - 2) / 2 + p3 * (3 * u * u - 1) / 6)
        if der <= 0:
            return t
        u -= (val - level) / der
    return u if 0.0 <= u <= 1.0 else t


def find_rising_edges(x: np.ndarray, sample_rate: float, **detector_kw) -> np.ndarray:
    """Fractional sample indices of the PPS-like rising edges in ``x`` (n,)."""
    det = PpsEdgeDetector(sample_rate, **detector_kw)
    return np.array([e for e, _ in det.push(x, 0)], dtype=np.float64)


# ----------------------------------------------------------------- fitting
@dataclass(frozen=True)
class PpsFit:
    """Least-squares line through PPS edges: frame(S) = ref_frame + rate_hz·(S − ref_second).

    ``residuals_frames``: (n,) edge frame minus the line, in frames; ``sigma_frames``:
    their standard deviation (n − 2 degrees of freedom; 0 with two edges).
    ``seconds``: (n,) the UTC seconds fitted. ``sxx`` and ``mean_dx`` describe the
    spread of the seconds (for the line's standard error).
    """

    ref_second: int
    ref_frame: float
    rate_hz: float
    residuals_frames: np.ndarray
    sigma_frames: float
    seconds: np.ndarray
    mean_dx: float
    sxx: float

    @property
    def residuals_ns(self) -> np.ndarray:
        return self.residuals_frames * (NS_PER_S / self.rate_hz)

    def frame_at(self, second: int | float) -> float:
        """Fitted (fractional) frame of the PPS edge of UTC second ``second``."""
        return self.ref_frame + self.rate_hz * (second - self.ref_second)

    def utc_ns(self, frame: float) -> int:
        """UTC ns of stream frame ``frame`` on the fitted line."""
        rel_s = (float(frame) - self.ref_frame) / self.rate_hz
        return self.ref_second * NS_PER_S + round(rel_s * NS_PER_S)

    def se_frames(self, frame: float) -> float:
        """Standard error of the line (frames) at ``frame``, from the residual scatter."""
        n = self.seconds.shape[0]
        dx = (float(frame) - self.ref_frame) / self.rate_hz
        if n < 2 or self.sxx <= 0:
            return math.inf
        return self.sigma_frames * math.sqrt(1.0 / n + (dx - self.mean_dx) ** 2 / self.sxx)


def fit_pps_edges(edge_frames: np.ndarray, edge_utc_s: np.ndarray) -> PpsFit:
    """Fit frame = c0 + rate·(S − S_ref) to PPS edges.

    edge_frames: (n,) fractional stream frames of the edges; edge_utc_s: (n,) integer
    UTC seconds they mark (distinct). Needs n >= 2. The reference second is the last
    one, so the fit's numbers stay small.
    """
    f = np.asarray(edge_frames, dtype=np.float64).reshape(-1)
    s = np.asarray(edge_utc_s, dtype=np.int64).reshape(-1)
    if f.shape != s.shape or f.shape[0] < 2:
        raise ValueError(f"need >= 2 edges with one UTC second each, got {f.shape[0]} / {s.shape[0]}")
    if np.unique(s).shape[0] != s.shape[0]:
        raise ValueError("each UTC second may carry only one PPS edge")
    ref_s = int(s[-1])
    ref_f = float(f[-1])
    dx = (s - ref_s).astype(np.float64)
    dy = f - ref_f
    mean_dx = float(dx.mean())
    sxx = float(np.sum((dx - mean_dx) ** 2))
    rate = float(np.sum((dx - mean_dx) * (dy - dy.mean())) / sxx)
    c0 = float(dy.mean() - rate * mean_dx)
    resid = dy - (c0 + rate * dx)
    n = f.shape[0]
    sigma = math.sqrt(float(np.sum(resid ** 2)) / (n - 2)) if n > 2 else 0.0
    return PpsFit(ref_second=ref_s, ref_frame=ref_f + c0, rate_hz=rate,
                  residuals_frames=resid, sigma_frames=sigma, seconds=s.copy(),
                  mean_dx=mean_dx, sxx=sxx)


# ----------------------------------------------------------------- timebase
class PpsAudioTimebase:
    """Sample index → UTC from PPS edges in ``cfg.pps_channel`` (see the module docstring).

    ``sample_rate``: nominal rate (Hz). ``window_s``: seconds of edges in the fit
    (default ``min(cfg.fit_window_s, 20)``). ``edge_sigma_ns``: the per-edge timing
    error assumed while there are too few edges to measure it, and the floor of the
    reported σ (interpolation and pulse-shape errors that residuals cannot show).
    ``drift_per_s``: assumed worst rate change of the audio oscillator (fraction per
    second) for the σ while coasting without PPS.
    """

    def __init__(self, cfg: TimebaseConfig, sample_rate: float, *,
                 window_s: float | None = None, lost_after_s: float = 3.5,
                 min_edges: int = 3, max_rate_error_ppm: float = 500.0,
                 min_amplitude: float = 0.02, edge_sigma_ns: float = 500.0,
                 drift_per_s: float = 1e-8) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        if cfg.pps_channel < 0:
            raise ValueError(f"timebase.pps_channel must be >= 0, got {cfg.pps_channel}")
        if min_edges < 2:
            raise ValueError(f"min_edges must be >= 2, got {min_edges}")
        self.cfg = cfg
        self.mode = "pps-audio"
        self._fs = float(sample_rate)
        self._window_s = float(window_s if window_s is not None else min(cfg.fit_window_s, 20.0))
        if self._window_s < 2:
            raise ValueError(f"window_s must be >= 2 s, got {self._window_s}")
        self._lost_frames = lost_after_s * self._fs
        self._min_edges = int(min_edges)
        self._max_ppm = float(max_rate_error_ppm)
        self._edge_sigma_ns = float(edge_sigma_ns)
        self._drift = float(drift_per_s)
        self._latency_ns = round(cfg.latency_s * NS_PER_S)
        self.detector = PpsEdgeDetector(self._fs, min_amplitude=min_amplitude)
        self._edges: deque[tuple[float, int]] = deque()      # accepted (frame, second)
        self._rejects: deque[tuple[float, int]] = deque(maxlen=12)
        self._fit: PpsFit | None = None
        self._last_block: tuple[int, int] | None = None     # (end frame, wall_ns)
        self._last_frame: int | None = None
        self._suspect_from: int | None = None  # frame of an overflow not yet confirmed
        self._event = "waiting for PPS edges"
        self._counts = {"edges": 0, "accepted": 0, "rejected": 0, "acquisitions": 0,
                        "reseeds": 0,
                        "unlabelled": 0, "ambiguous_labels": 0, "missing_channel": 0}

    # ------------------------------------------------------------ input
    def observe(self, block: AudioBlock) -> None:
        """Find PPS edges in the block's ``cfg.pps_channel`` and learn from them."""
        end = block.first_frame + block.frames
        self._last_frame = end if self._last_frame is None else max(self._last_frame, end)
        if block.wall_ns > 0:
            self._last_block = (end, int(block.wall_ns))
        if block.overflow and self._edges:
            # Frames may have been lost: the fit is suspect until an edge confirms it
            # (a consistent edge) or three agreeing edges re-seed it.
            self._suspect_from = block.first_frame
        ch = self.cfg.pps_channel
        if block.samples.ndim != 2 or ch >= block.samples.shape[1]:
            self._counts["missing_channel"] += 1
            self._event = (f"PPS channel {ch} missing: the audio has "
                           f"{block.samples.shape[1] if block.samples.ndim == 2 else 1} "
                           "channel(s); set [audio] channels to include it")
            return
        if self._lost():
            self.detector.reset_amplitude()
        for frame, _amp in self.detector.push(block.samples[:, ch], block.first_frame):
            self._counts["edges"] += 1
            if self._last_block is None:
                self._counts["unlabelled"] += 1
                self._event = "PPS edges seen but blocks carry no wall clock to label them"
                continue
            end_f, wall = self._last_block
            self.observe_edge(frame, wall - round((end_f - frame) * NS_PER_S / self._fs))

    def observe_edge(self, frame: float, approx_utc_ns: int) -> bool:
        """Offer one PPS edge at stream ``frame`` whose system time is ``approx_utc_ns``
        (right to ±0.4 s). Returns True if accepted into the fit."""
        second, rem = divmod(int(approx_utc_ns) + NS_PER_S // 2, NS_PER_S)
        if abs(rem - NS_PER_S // 2) > 4 * NS_PER_S // 10:  # > 0.4 s from the second
            self._counts["ambiguous_labels"] += 1
        frame = float(frame)
        self._last_frame = max(self._last_frame or 0, math.ceil(frame))
        if self._consistent(frame, second):
            self._accept(frame, second)
            return True
        if self._edges:
            self._counts["rejected"] += 1  # before any fit, edges are only pending
        self._rejects.append((frame, second))
        self._try_reseed()
        return False

    # ------------------------------------------------------------ fitting
    def _gate_frames(self, second: int) -> float:
        """How far (frames) an edge may be from the prediction for ``second``."""
        last_s = self._edges[-1][1]
        gap = abs(second - last_s)
        if len(self._edges) == 1:
            return 0.0005 * self._fs + self._max_ppm * 1e-6 * self._fs * gap
        return 0.0005 * self._fs + 20e-6 * self._fs * gap

    def _predict_frame(self, second: int) -> float:
        if self._fit is not None:
            return self._fit.frame_at(second)
        f, s = self._edges[-1]
        return f + self._fs * (second - s)

    def _consistent(self, frame: float, second: int) -> bool:
        if not self._edges:
            return False
        if any(s == second for _, s in self._edges):
            return False  # one edge per second: a second pulse is a glitch
        return abs(frame - self._predict_frame(second)) <= self._gate_frames(second)

    def _accept(self, frame: float, second: int) -> None:
        self._counts["accepted"] += 1
        self._edges.append((frame, second))  # seconds only grow: consistency gate
        self._rejects.clear()
        if self._suspect_from is not None and frame > self._suspect_from:
            self._suspect_from = None
        newest = max(s for _, s in self._edges)
        # Keep old edges beyond the window while there are too few new ones (after a
        # PPS outage the old edges still pin the rate).
        while (len(self._edges) > max(self._min_edges, 3)
               and self._edges[0][1] < newest - self._window_s):
            self._edges.popleft()
        self._refit()

    def _refit(self) -> None:
        if len(self._edges) < 2:
            self._fit = None
            return
        pairs = sorted(self._edges, key=lambda e: e[1])
        self._fit = fit_pps_edges(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))

    def _line_ok(self, pts: list[tuple[float, int]], tol: float) -> bool:
        if len({s for _, s in pts}) != len(pts):
            return False
        fit = fit_pps_edges(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
        return (abs(fit.rate_hz / self._fs - 1.0) <= self._max_ppm * 1e-6
                and bool(np.all(np.abs(fit.residuals_frames) <= tol)))

    def _try_reseed(self) -> None:
        """Start a new fit from recent rejected edges that agree with each other."""
        need = 2 if len(self._edges) < 2 else 3
        rej = list(self._rejects)
        if len(rej) < need:
            return
        newest = rej[-1]
        tol = 0.0005 * self._fs
        best: list[tuple[float, int]] = []
        for other in rej[:-1]:
            if other[1] == newest[1]:
                continue
            group = [other, newest]
            if not self._line_ok(group, tol):
                continue
            for cand in rej[:-1]:
                if cand is other or cand[1] in {s for _, s in group}:
                    continue
                if self._line_ok(group + [cand], tol):
                    group.append(cand)
            if len(group) > len(best):
                best = group
        if len(best) >= need:
            had_fit = len(self._edges) >= 2
            self._counts["reseeds" if had_fit else "acquisitions"] += 1
            self._edges = deque(sorted(best, key=lambda e: e[1]))
            self._rejects.clear()
            self._suspect_from = None
            self._refit()
            if had_fit:
                self._event = ("PPS edges stopped matching the fit (seconds relabelled or "
                               "frames lost): re-seeded")

    # ------------------------------------------------------------ answers
    def _lost(self) -> bool:
        if not self._edges or self._last_frame is None:
            return False
        return self._last_frame - self._edges[-1][0] > self._lost_frames

    def to_utc_ns(self, frame: float) -> int:
        """UTC ns of stream frame ``frame`` (fit; with fewer than two edges, the one edge
        or the newest block's wall clock at the nominal rate), minus ``cfg.latency_s``."""
        if self._fit is not None:
            t = self._fit.utc_ns(frame)
        elif self._edges:
            f, s = self._edges[-1]
            t = s * NS_PER_S + round((float(frame) - f) * NS_PER_S / self._fs)
        elif self._last_block is not None:
            end_f, wall = self._last_block
            t = wall + round((float(frame) - end_f) * NS_PER_S / self._fs)
        else:
            raise RuntimeError(
                "PpsAudioTimebase has no timing data yet: observe() audio blocks first")
        return t - self._latency_ns

    def rate_hz(self) -> float:
        return self._fit.rate_hz if self._fit is not None else self._fs

    def sigma_ns_at(self, frame: float) -> float:
        """1-σ uncertainty (ns) of ``to_utc_ns(frame)``, growing while coasting."""
        if self._fit is None:
            if self._edges:
                f, _ = self._edges[-1]
                drift_ns = self._max_ppm * 1e-6 * abs(frame - f) / self._fs * NS_PER_S
                return self._edge_sigma_ns + drift_ns
            return 10e6  # wall clock only: scheduling + NTP-grade
        fit = self._fit
        ns_per_frame = NS_PER_S / fit.rate_hz
        n = fit.seconds.shape[0]
        scatter = fit.sigma_frames
        if n < 5:  # too few edges to measure the scatter: assume edge_sigma_ns
            scatter = max(scatter, self._edge_sigma_ns / ns_per_frame)
        dx = (float(frame) - fit.ref_frame) / fit.rate_hz - fit.mean_dx
        se = scatter * math.sqrt(1.0 / n + dx * dx / fit.sxx) if fit.sxx > 0 else scatter
        last_f = self._edges[-1][0]
        coast_s = max(0.0, (float(frame) - last_f) / fit.rate_hz)
        coast_ns = 0.5 * self._drift * coast_s * coast_s * NS_PER_S
        return math.sqrt((se * ns_per_frame) ** 2 + self._edge_sigma_ns ** 2) + coast_ns

    def status(self) -> TimingStatus:
        """Locked = enough edges and the newest within ``lost_after_s`` of audio."""
        frame = self._last_frame if self._last_frame is not None else 0
        sigma = self.sigma_ns_at(frame)
        rate = self.rate_hz()
        n = len(self._edges)
        if n < self._min_edges:
            locked = False
            detail = (self._event if n == 0 and (self._counts["missing_channel"]
                                                 or self._counts["unlabelled"])
                      else f"waiting for PPS edges ({n} of {self._min_edges})")
        elif self._lost():
            age = (frame - self._edges[-1][0]) / self._fs
            locked, detail = False, f"PPS lost for {age:.1f} s: extrapolating"
        elif abs(rate / self._fs - 1.0) > self._max_ppm * 1e-6:
            locked, detail = False, f"fitted sample rate {rate:.1f} Hz is implausible"
        elif self._suspect_from is not None:
            locked, detail = False, "audio overflow (frames lost?): waiting for a PPS edge to confirm"
        else:
            locked, detail = True, ""
        return TimingStatus(mode=self.mode, locked=locked, sigma_ns=float(sigma),
                            degraded=not locked, rate_hz=rate, detail=detail)

    def stats(self) -> dict:
        """Counters for heartbeats and debugging."""
        fit = self._fit
        return {**self._counts, "edges_in_fit": len(self._edges), "last_event": self._event,
                "rate_hz": self.rate_hz(),
                "residual_ns": (fit.sigma_frames * NS_PER_S / fit.rate_hz) if fit else None,
                "threshold": self.detector.threshold()}
