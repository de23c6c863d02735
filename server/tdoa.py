"""Time differences of arrival from the nodes' event snippets (cross-correlation).

A node's onset pick marks the first sample of an arrival; the whole waveform
around it carries more timing information. :func:`gcc_phat` estimates the delay
between two snippets by the generalised cross-correlation with phase transform
(GCC-PHAT): the cross-spectrum is whitened (|X·Y*|^-β, β = ``phat_beta``) so that
every frequency in the band votes equally and the correlation peak is sharp even
for coloured, reverberant signals; the peak is located to a fraction of a sample
by upsampling the correlation (zero-padding its spectrum ``upsample`` times) and
fitting a parabola through the three highest points.

:func:`refine_times` turns this into refined arrival times for one shot: each
arrival's snippet is correlated with a reference arrival's (the one with the
clearest onset), and the correlation delay replaces the difference of the two
picks only when it agrees with it within ``max_shift_s`` and the correlation is
clearly peaked (``min_peak``, ``min_ratio``, ``min_similarity``); otherwise the
pick stands. Waveforms at distant
nodes differ (air absorption, paths around buildings), so this is a refinement
of picks, never a replacement for association.

Conventions: snippets are 1-D arrays (any numeric type) at ``fs_hz``; their
sample 0 is at ``t0_ns`` (UTC ns). A delay ``d`` of ``y`` relative to ``x`` means
y(t) ≈ x(t − d): ``y`` hears the same sound ``d`` seconds later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Delay:
    """A cross-correlation delay. ``delay_s``: of y relative to x (s); ``peak``:
    height of the (normalised, whitened) correlation peak, 0..1; ``ratio``: peak
    over the largest value outside its main lobe (≥ 1; large = unambiguous)."""

    delay_s: float
    peak: float
    ratio: float


def _parabolic(y: np.ndarray, i: int) -> float:
    """Sub-sample offset (−0.5..0.5) of the maximum of ``y`` near index ``i``."""
    if i <= 0 or i >= y.size - 1:
        return 0.0
    a, b, c = float(y[i - 1]), float(y[i]), float(y[i + 1])
    den = a - 2.0 * b + c
    if den >= 0.0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


def gcc_phat(x: np.ndarray, y: np.ndarray, fs_hz: float, *, max_delay_s: float | None = None,
             band_hz: tuple[float, float] | None = (300.0, 5000.0), phat_beta: float = 1.0,
             upsample: int = 16) -> Delay:
    """Delay of ``y`` relative to ``x`` (both sampled at ``fs_hz``) by GCC-PHAT.

    max_delay_s: search only |delay| ≤ this (None: any lag the lengths allow);
    band_hz: frequencies used (None: all; the upper edge is clipped to 0.45·fs);
    phat_beta: whitening exponent (1: full PHAT, 0: plain cross-correlation);
    upsample: interpolation factor of the correlation before the parabolic fit.
    Raises ValueError for empty input or a non-positive sample rate.
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError("gcc_phat: both snippets must hold samples")
    if not fs_hz > 0:
        raise ValueError(f"gcc_phat: sample rate must be > 0 Hz, got {fs_hz}")
    x = x - x.mean()
    y = y - y.mean()
    n = x.size + y.size
    nfft = 1 << (n - 1).bit_length()
    X = np.fft.rfft(x, nfft)
    Y = np.fft.rfft(y, nfft)
    cross = Y * np.conj(X)
    mag = np.abs(cross)
    floor = 1e-12 * max(float(mag.max()), 1e-30)
    if phat_beta > 0:
        cross = cross / np.maximum(mag, floor) ** phat_beta
    if band_hz is not None:
        f = np.fft.rfftfreq(nfft, 1.0 / fs_hz)
        lo, hi = band_hz[0], min(band_hz[1], 0.45 * fs_hz)
        cross = cross * ((f >= lo) & (f <= hi))
    up = max(1, int(upsample))
    cc = np.fft.irfft(cross, nfft * up) * up
    m = nfft * up
    lags = np.arange(m)
    lags = np.where(lags > m // 2, lags - m, lags)           # circular lag, in upsampled samples
    # physically possible lags: y may start before x by up to len(x), after by up to len(y)
    ok = (lags > -x.size * up) & (lags < y.size * up)
    if max_delay_s is not None:
        ok &= np.abs(lags) <= max_delay_s * fs_hz * up
    if not np.any(ok):
        raise ValueError("gcc_phat: no lag within max_delay_s fits these snippet lengths")
    idx = np.flatnonzero(ok)
    order = np.argsort(lags[idx])
    idx = idx[order]
    vals = cc[idx]
    k = int(np.argmax(vals))
    frac = _parabolic(vals, k)
    delay_samples = (lags[idx[k]] + frac) / up
    norm = float(np.sum(np.abs(cross))) / nfft * 2.0 if phat_beta > 0 else \
        math.sqrt(float(np.sum(x * x) * np.sum(y * y))) or 1.0
    peak = float(vals[k]) / max(norm, 1e-30)
    # outside the main lobe (about one period of the band's upper edge)
    hi = min(band_hz[1], 0.45 * fs_hz) if band_hz is not None else 0.5 * fs_hz
    away = np.abs(np.arange(vals.size) - k) > max(2.0, fs_hz / hi) * up
    second = float(np.max(np.abs(vals[away]))) if np.any(away) else 0.0
    ratio = float(vals[k]) / second if second > 0 else math.inf
    return Delay(delay_s=float(delay_samples / fs_hz), peak=float(np.clip(peak, 0.0, 1.0)), ratio=ratio)


@dataclass(frozen=True)
class Snippet:
    """One arrival's waveform: ``samples`` (1-D) at ``fs_hz``, sample 0 at ``t0_ns``
    (UTC ns); ``pick_ns``: the node's onset pick (UTC ns)."""

    samples: np.ndarray
    t0_ns: int
    fs_hz: float
    pick_ns: int


def _onset_contrast(x: np.ndarray, i_pick: float) -> float:
    """rms after sample ``i_pick`` over rms before it (how clear the onset is)."""
    i = int(round(i_pick))
    pre, post = x[:max(i, 1)], x[max(i, 0):]
    if post.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(post**2)) / max(np.sqrt(np.mean(pre**2)) if pre.size else 0.0, 1e-12))


def _similarity(x: np.ndarray, y: np.ndarray, lag_samples: float) -> float:
    """Correlation coefficient of ``x`` and ``y`` shifted back by ``lag_samples``
    (rounded), over their overlap: 1 for the same waveform, ~0 for unrelated ones."""
    k = int(round(lag_samples))
    if k >= 0:
        a, b = x[:max(0, min(x.size, y.size - k))], y[k:k + x.size]
    else:
        a, b = x[-k:-k + y.size], y[:max(0, min(y.size, x.size + k))]
    m = min(a.size, b.size)
    if m < 8:
        return 0.0
    a, b = a[:m] - a[:m].mean(), b[:m] - b[:m].mean()
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def refine_times(snips: Sequence[Snippet | None], *, max_shift_s: float = 0.0005, min_peak: float = 0.2,
                 min_ratio: float = 1.5, min_similarity: float = 0.5,
                 band_hz: tuple[float, float] | None = (300.0, 5000.0),
                 window_s: tuple[float, float] = (0.002, 0.012)) -> tuple[np.ndarray, np.ndarray]:
    """Refined arrival times (ns, (n,) int64) and a mask (n,) of those changed.

    Each snippet is cut to ``window_s`` (before, after) its pick and correlated
    with the reference snippet (the one with the clearest onset), and its time
    becomes the reference pick + the correlation delay when
    |that − its own pick| ≤ ``max_shift_s`` (the picks are already good to about a
    sample: a larger disagreement means the waveforms differ, not the times),
    the peak ≥ ``min_peak``, the peak ratio ≥ ``min_ratio`` and the aligned
    waveforms' correlation coefficient ≥ ``min_similarity``. Snippets that are
    empty, or at another sample rate than the reference, keep their pick. A None
    entry has no pick: its time comes back as 0, for the caller to fill in with
    its own (``np.where(present, times, own)``).
    """
    n = len(snips)
    times = np.array([s.pick_ns if s is not None else 0 for s in snips], dtype=np.int64)
    changed = np.zeros(n, dtype=bool)
    cut: list[np.ndarray | None] = []
    starts: list[int] = []                        # UTC ns of each cut's first sample
    for s in snips:
        x = None if s is None or s.samples is None else np.asarray(s.samples, dtype=float).ravel()
        if x is None or x.size == 0 or not s.fs_hz > 0:
            cut.append(None)
            starts.append(0)
            continue
        i0 = (s.pick_ns - s.t0_ns) * 1e-9 * s.fs_hz
        a = max(0, int(math.floor(i0 - window_s[0] * s.fs_hz)))
        b = min(x.size, int(math.ceil(i0 + window_s[1] * s.fs_hz)))
        cut.append(x[a:b] if b - a >= 8 else None)
        starts.append(s.t0_ns + int(round(a / s.fs_hz * 1e9)))
    valid = [i for i in range(n) if cut[i] is not None]
    if len(valid) < 2:
        return times, changed
    # reference: the clearest onset (energy after the pick over energy before it)
    # among the snippets at the most common sample rate
    rates = [snips[i].fs_hz for i in valid]
    fs = max(set(rates), key=rates.count)
    valid = [i for i in valid if snips[i].fs_hz == fs]
    ref = max(valid, key=lambda i: _onset_contrast(cut[i], (snips[i].pick_ns - starts[i]) * 1e-9 * fs))
    for i in valid:
        if i == ref:
            continue
        # expected delay of i's cut relative to ref's cut, from the picks
        expect = ((snips[i].pick_ns - starts[i]) - (snips[ref].pick_ns - starts[ref])) * 1e-9
        try:
            d = gcc_phat(cut[ref], cut[i], fs, band_hz=band_hz,
                         max_delay_s=abs(expect) + max_shift_s + 2.0 / fs)
        except ValueError:
            continue
        shift = d.delay_s - expect                 # how far the correlation moves i relative to the picks
        if (abs(shift) <= max_shift_s and d.peak >= min_peak and d.ratio >= min_ratio
                and _similarity(cut[ref], cut[i], d.delay_s * fs) >= min_similarity):
            times[i] = snips[i].pick_ns + int(round(shift * 1e9))
            changed[i] = True
    return times, changed
