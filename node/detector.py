"""Impulse onset detector: band-pass → recursive STA/LTA trigger → AIC onset pick.

Flat functions do the math on numpy arrays; :class:`Detector` holds the explicit
streaming state (filter states, a short history, pending triggers) so that feeding
a signal in chunks of any size gives exactly the onsets of feeding it whole.

Signal flow per sample ``x`` (full scale ±1):

* ``hp``: 2nd-order Butterworth high-pass at ``band_hz[0]`` — removes rumble and DC
  while leaving an impulse's leading edge where it is (used for the pick, features).
* ``bp``: Butterworth band-pass ``band_hz`` → energy → one-pole STA and LTA
  (``sta_s``, ``lta_s``) → ratio. A trigger is a rising crossing of
  ``trigger_ratio`` that is armed (the ratio fell below ``release_ratio`` since the
  last trigger) and outside the ``refractory_s`` after it, with STA above
  ``min_level_dbfs``. No trigger during warm-up (the first ``lta_s`` of the stream,
  or after digital silence — runs of exact zeros, as in padded recordings).
* The onset is picked by the Akaike criterion (AIC) on ``hp`` in the window from
  ``pick_window_s`` before the trigger to ``2 * sta_s`` after it, then sharpened
  to the leading edge's first crossing of max(4 σ_noise, 25 % of the peak),
  interpolated between samples (:func:`refine_onset`).
* First arrival (:func:`first_rise`): what sets a trigger off is not always the
  first sound of the event. Round a corner the direct (diffracted) path is weaker
  than a reflection a few ms later; after a loud sound the raised LTA lets only
  the loudest part of the next one through. So the ``lookback_s`` before the
  trigger is searched for the earliest clear, sustained rise above the local
  noise (robust σ from the samples before that window) that reaches a fifth of
  the triggering peak; when there is one, the pick starts there. All thresholds
  are in seconds and noise σ, so the behaviour does not depend on the rate.

The band-pass delays energy by its group delay, which is why the pick uses ``hp``:
a causal 2nd-order high-pass moves a sharp leading edge by well under a sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy import signal

from common.config import DetectorConfig

#: Runs of at least this many exact-zero samples are digital silence (padding,
#: a muted device), not quiet audio; the LTA restarts after them.
SILENCE_RUN = 32
#: int16 snippets map full scale 1.0 to this value.
SNIPPET_SCALE = 32767


# ------------------------------------------------------------------ flat math
def design_filters(band_hz: tuple[float, float], fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """(band-pass SOS, high-pass SOS) for ``band_hz`` at ``fs_hz``; the upper edge is
    clipped to 0.45·fs so the same config works at 12 kHz and 48 kHz."""
    lo, hi = float(band_hz[0]), float(band_hz[1])
    hi = min(hi, 0.45 * fs_hz)
    if not 0 < lo < hi:
        raise ValueError(f"detector band {band_hz} Hz is empty at {fs_hz} Hz sampling")
    bp = signal.butter(2, [lo, hi], btype="bandpass", fs=fs_hz, output="sos")
    hp = signal.butter(2, lo, btype="highpass", fs=fs_hz, output="sos")
    return bp, hp


def one_pole(x: np.ndarray, n_samples: float, zi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recursive average y[n] = y[n-1] + (x[n] - y[n-1]) / n_samples; returns (y, state)."""
    a = 1.0 / max(float(n_samples), 1.0)
    return signal.lfilter([a], [1.0, a - 1.0], x, zi=zi)


def aic_pick(x: np.ndarray) -> float:
    """Onset index (fractional) in ``x`` by the Akaike information criterion.

    AIC(k) = k·log var(x[:k]) + (n−k−1)·log var(x[k:]); the minimum is the sample
    where the signal's variance changes: the first sample of the arrival. A
    parabola through the minimum and its neighbours gives the sub-sample part.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 8:
        return float(np.argmax(np.abs(x))) if n else 0.0
    c1 = np.cumsum(x)
    c2 = np.cumsum(x * x)
    k = np.arange(2, n - 2)                       # split: x[:k] | x[k:]
    s1, q1 = c1[k - 1], c2[k - 1]
    s2, q2 = c1[-1] - s1, c2[-1] - q1
    var1 = np.maximum(q1 / k - (s1 / k) ** 2, 1e-30)
    var2 = np.maximum(q2 / (n - k) - (s2 / (n - k)) ** 2, 1e-30)
    aic = k * np.log(var1) + (n - k - 1) * np.log(var2)
    i = int(np.argmin(aic))
    frac = 0.0
    if 0 < i < aic.size - 1:
        a, b, c = aic[i - 1], aic[i], aic[i + 1]
        den = a - 2 * b + c
        if den > 0:
            frac = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return float(k[i]) + frac


def refine_onset(x: np.ndarray, rough: float, fs_hz: float, noise_rms: float,
                 fraction: float = 0.25, k_noise: float = 4.0) -> float:
    """Sharpen a rough onset in ``x`` (high-passed): from the peak of |x| in the
    2 ms after ``rough``, walk back to where |x| last rose through
    ``max(k_noise·noise_rms, fraction·peak)``, interpolated linearly between
    samples. An impulse's leading edge is its steepest part, so this is stable
    where AIC alone wanders by a few samples at low SNR."""
    n1 = max(2, int(round(0.001 * fs_hz)))
    n2 = max(2, int(round(0.002 * fs_hz)))
    a = max(0, int(rough) - n1)
    b = min(x.size, int(rough) + n2)
    if b - a < 3:
        return rough
    env = np.abs(x[a:b])
    ipk = int(np.argmax(env[int(rough) - a:])) + int(rough) - a if int(rough) - a < env.size else int(np.argmax(env))
    thr = max(k_noise * noise_rms, fraction * env[ipk])
    i = ipk                       # walk back from the peak to where the edge starts
    while i > 0 and env[i - 1] >= thr:
        i -= 1
    if i == 0:
        return float(a)
    lo, hi = env[i - 1], env[i]
    frac = (thr - lo) / (hi - lo) if hi > lo else 1.0
    return float(a + i - 1 + np.clip(frac, 0.0, 1.0))


def robust_sigma(x: np.ndarray) -> float:
    """Robust standard deviation of zero-mean noise ``x``: 1.4826 × median |x|."""
    return 1.4826 * float(np.median(np.abs(x)))


def first_rise(hp: np.ndarray, lo: int, hi: int, noise: np.ndarray, peak: float,
               k_sigma: float = 6.0, fraction: float = 0.2, sustain: int = 4) -> int | None:
    """Earliest index in ``hp[lo:hi]`` (high-passed) where an arrival clearly starts:
    |hp| reaches max(``k_sigma`` × the robust σ of ``noise`` (1.4826 × median |x|),
    ``fraction`` × ``peak``) and the mean energy of the next ``sustain`` samples is
    at least a quarter of that threshold squared (a lone click is not an arrival).
    None when nothing in the window qualifies."""
    if hi - lo < 2 or noise.size < 8:
        return None
    thr = max(k_sigma * robust_sigma(noise), fraction * float(peak))
    if not thr > 0:
        return None
    above = np.flatnonzero(np.abs(hp[lo:hi]) >= thr)
    for i in above:
        k = lo + int(i)
        seg = hp[k:k + sustain]
        if seg.size and float(np.mean(seg * seg)) >= 0.25 * thr * thr:
            return k
    return None


def silence_ends(x: np.ndarray, carried: int, min_run: int = SILENCE_RUN) -> tuple[np.ndarray, int]:
    """Digital silence in ``x`` (1-D), which follows ``carried`` exact zeros:
    (the indices in ``x`` of the first sample after each run of at least
    ``min_run`` exact zeros that ends within ``x``, ascending, int64; how many
    exact zeros the stream now ends with). Works on the zero samples only, so
    audio with a few scattered zeros (quiet 16-bit noise) costs one comparison
    pass."""
    n = x.size
    none = np.zeros(0, dtype=np.int64)
    if x.all():                              # no zero at all (most audio)
        return (np.zeros(1, dtype=np.int64) if carried >= min_run and n else none), 0
    z = np.flatnonzero(x == 0.0)
    if z.size == n:
        return none, carried + n
    brk = np.flatnonzero(np.diff(z) != 1)    # runs of consecutive zeros: z[first] .. z[last]
    first = z[np.concatenate(([0], brk + 1))]
    last = z[np.concatenate((brk, [z.size - 1]))]
    length = last - first + 1
    if first[0] == 0:
        length[0] += carried
    trailing = int(length[-1]) if last[-1] == n - 1 else 0
    ends = (last[(length >= min_run) & (last < n - 1)] + 1).astype(np.int64)
    if first[0] != 0 and carried >= min_run:
        ends = np.concatenate((np.zeros(1, dtype=np.int64), ends))
    return ends, trailing


def onset_features(hp: np.ndarray, onset_idx: int, fs_hz: float, noise_energy: float) -> dict[str, float]:
    """Waveform features of an impulse starting at ``hp[onset_idx]`` (high-passed,
    full scale 1): SNR, rise time, duration above −20 dB of peak, spectral centroid."""
    post = hp[onset_idx:]
    if post.size == 0:
        return {"snr_db": 0.0, "rise_ms": 0.0, "duration_ms": 0.0, "centroid_hz": 0.0}
    n5 = max(1, int(0.005 * fs_hz))
    sig_e = float(np.mean(post[:n5] ** 2))
    snr_db = 10.0 * np.log10(max(sig_e, 1e-30) / max(noise_energy, 1e-30))
    env = np.abs(post)
    ipk = int(np.argmax(env))
    peak = env[ipk]
    above = np.flatnonzero(env >= 0.1 * peak)
    duration = (above[-1] - above[0] + 1) / fs_hz if above.size else 0.0
    spec = np.abs(np.fft.rfft(post * np.hanning(post.size)))
    freqs = np.fft.rfftfreq(post.size, 1.0 / fs_hz)
    centroid = float(np.sum(freqs * spec) / max(np.sum(spec), 1e-30))
    return {
        "snr_db": float(np.clip(snr_db, -100.0, 400.0)),
        "rise_ms": 1e3 * ipk / fs_hz,
        "duration_ms": 1e3 * duration,
        "centroid_hz": centroid,
    }


def pick_sigma_samples(snr_db: float) -> float:
    """Heuristic 1-σ pick error (samples) for an impulsive onset at ``snr_db``:
    ~0.3 sample when clean, growing as the noise amplitude grows."""
    snr_lin = 10.0 ** (max(snr_db, 0.0) / 20.0)
    return float(max(0.3, 3.0 / snr_lin))


# ------------------------------------------------------------- streaming state
@dataclass(frozen=True)
class Onset:
    """One detected impulse, in stream frame indices (the timebase maps them to UTC).

    ``frame``: fractional stream index of the first sample of the arrival.
    ``snippet``: raw int16 samples (32767 ≙ full scale 1.0) starting at stream
    index ``snippet_first_frame``.
    """

    frame: float
    trigger_frame: int
    peak_dbfs: float
    snr_db: float
    sigma_samples: float
    snippet_first_frame: int
    snippet: np.ndarray = field(repr=False)
    features: Mapping[str, float] = field(default_factory=dict)


class Detector:
    """Streaming onset detector. ``process(chunk)`` → onsets completed so far.

    State carried between chunks: filter states (band-pass, STA, LTA), the last
    ``history`` samples of raw audio (each pick runs the high-pass over them
    afresh, from a lead-in, so it depends only on the samples around it), the
    trigger state (armed, last trigger), the zero-run length, and triggers still
    waiting for the samples after them. ``flush()`` finishes triggers at the end
    of a stream.
    """

    def __init__(self, cfg: DetectorConfig, sample_rate_hz: float, start_frame: int = 0) -> None:
        self.cfg = cfg
        self.fs = float(sample_rate_hz)
        self._bp_sos, self._hp_sos = design_filters(cfg.band_hz, self.fs)
        self._zbp = np.zeros((self._bp_sos.shape[0], 2))
        self._zsta = np.zeros(1)
        self._zlta = np.zeros(1)
        self.n_sta = max(1.0, cfg.sta_s * self.fs)
        self.n_lta = max(2.0, cfg.lta_s * self.fs)
        self.pick_pre = max(8, int(round(cfg.pick_window_s * self.fs)))
        self.pick_post = max(4, int(round(2 * cfg.sta_s * self.fs)))
        self.snip_pre = int(round(cfg.snippet_pre_s * self.fs))
        self.snip_post = int(round(cfg.snippet_post_s * self.fs))
        self.refractory = int(round(cfg.refractory_s * self.fs))
        self.lookback = max(0, int(round(cfg.lookback_s * self.fs)))
        #: noise for the look-back is measured over this many samples before it
        self.lookback_noise = int(round(0.03 * self.fs)) if self.lookback else 0
        self.warmup = int(round(cfg.lta_s * self.fs))
        self.min_sta = 10.0 ** (cfg.min_level_dbfs / 10.0)
        # how far back a pending trigger may reach, and how far ahead it must wait
        #: the high-pass runs from rest over this lead-in before each pick window,
        #: so a pick depends only on the raw samples around it (chunking-proof)
        self.hp_lead = int(round(0.02 * self.fs))
        self.reach_before = max(self.pick_pre, self.lookback + self.lookback_noise)
        self.need_before = self.reach_before + max(self.snip_pre, self.hp_lead) + 2
        self.need_after = max(self.pick_post, self.snip_post + self.pick_post) + 2
        #: the most frames an onset can lie before its trigger: the AIC window
        #: or the look-back, then the leading-edge refinement's 1 ms (and a sample)
        self.max_lead = max(self.pick_pre, self.lookback) + max(2, int(round(0.001 * self.fs))) + 1
        self.history = self.need_before + self.need_after + 1
        self._raw = np.zeros(0, dtype=np.float32)
        self._hist_start = start_frame  # stream index of _raw[0]
        self._next = start_frame        # stream index of the next sample to come
        self._last_trigger = -(10**12)
        self._last_below = -(10**12)    # last index where ratio < release
        self._prev_above = False
        self._zero_run = 0
        self._live_from = start_frame + self.warmup  # first index at which triggers are allowed
        self._pending: list[tuple[int, float]] = []  # (trigger index, LTA at trigger)

    # -------------------------------------------------------------- public
    def process(self, chunk: np.ndarray) -> list[Onset]:
        """Feed the next samples (1-D, full scale ±1); returns onsets now complete."""
        x = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        start = self._next
        bp, self._zbp = signal.sosfilt(self._bp_sos, x, zi=self._zbp)
        e = bp * bp
        sta, self._zsta = one_pole(e, self.n_sta, self._zsta)
        lta, self._zlta = one_pole(e, self.n_lta, self._zlta)
        ends, self._zero_run = silence_ends(x, self._zero_run)
        self._find_triggers(sta, lta, start, start + ends)
        if ends.size:
            self._live_from = max(self._live_from, start + int(ends[-1]) + self.warmup)
        # keep history
        self._raw = np.concatenate([self._raw, x.astype(np.float32)])
        self._next = start + x.size
        out = self._complete(final=False)
        keep_from = self._next - self.history
        if self._pending:
            keep_from = min(keep_from, self._pending[0][0] - self.need_before)
        drop = max(0, keep_from - self._hist_start)
        if drop:
            self._raw = self._raw[drop:]
            self._hist_start += drop
        return out

    def flush(self) -> list[Onset]:
        """End of stream: finish pending triggers with the samples there are."""
        return self._complete(final=True)

    @property
    def frames_seen(self) -> int:
        """Stream index of the next sample to come."""
        return self._next

    def noise_floor_dbfs(self) -> float:
        """The long-term band-passed level (LTA) in dBFS: the node's noise floor."""
        return float(10.0 * np.log10(max(float(self._zlta[0]), 1e-30)))

    # ------------------------------------------------------------- internals
    def _find_triggers(self, sta: np.ndarray, lta: np.ndarray, start: int, silence_ends_at: np.ndarray) -> None:
        """Note the armed rising crossings in this chunk (its first sample is
        stream index ``start``). ``silence_ends_at``: the stream indices (ascending)
        where digital silences end in the chunk. A crossing waits out the warm-up
        after the silences that end before it, not after those that come later."""
        cfg = self.cfg
        ratio = sta / np.maximum(lta, self.min_sta * 1e-3)
        above = (ratio > cfg.trigger_ratio) & (sta > self.min_sta)
        prev = np.concatenate([[self._prev_above], above[:-1]])
        rising = np.flatnonzero(above & ~prev)
        below = np.flatnonzero(ratio < cfg.release_ratio)
        for i in rising:
            idx = start + int(i)
            # the last time the ratio was below release, at or before i
            j = np.searchsorted(below, i, side="right") - 1
            last_below = start + int(below[j]) if j >= 0 else self._last_below
            k = int(np.searchsorted(silence_ends_at, idx, side="right"))
            if idx < self._live_from or (k and idx < silence_ends_at[k - 1] + self.warmup):
                continue
            if last_below <= self._last_trigger or idx - self._last_trigger < self.refractory:
                continue
            self._last_trigger = idx
            self._pending.append((idx, float(lta[i])))
        if below.size:
            self._last_below = start + int(below[-1])
        self._prev_above = bool(above[-1])

    def _complete(self, final: bool) -> list[Onset]:
        out: list[Onset] = []
        while self._pending:
            trig, lta_at = self._pending[0]
            if not final and trig + self.need_after > self._next:
                break
            self._pending.pop(0)
            onset = self._pick(trig, lta_at)
            if onset is not None:
                out.append(onset)
        return out

    def _pick(self, trig: int, lta_at: float) -> Onset | None:
        h0 = self._hist_start
        a = max(trig - self.reach_before - self.hp_lead, h0)
        b = min(trig + max(self.pick_post, self.snip_post + self.pick_post), self._next)
        hp = signal.sosfilt(self._hp_sos, self._raw[a - h0:b - h0].astype(np.float64))
        w0 = max(trig - self.pick_pre, a) - a
        w1 = min(trig + self.pick_post, b) - a
        win = hp[w0:w1]
        if win.size < 8:
            return None
        rough = w0 + aic_pick(win)
        r0 = int(rough)
        noise = hp[max(w0, r0 - self.pick_pre):max(w0, r0 - int(0.001 * self.fs))]
        noise_e = float(np.mean(noise * noise)) if noise.size > 4 else max(lta_at, 1e-30)
        onset = a + refine_onset(hp, rough, self.fs, float(np.sqrt(noise_e)))
        if self.lookback:
            t_rel = trig - a
            lo = max(t_rel - self.lookback, 0)
            n0 = max(lo - self.lookback_noise, min(self.hp_lead, lo))
            peak_trig = float(np.max(np.abs(hp[t_rel:w1]))) if w1 > t_rel else 0.0
            before = hp[n0:lo]
            k = first_rise(hp, lo, min(int(onset - a), w1), before, peak_trig)
            if k is not None and k < onset - a - max(2.0, 0.0005 * self.fs):
                noise_e = float(np.mean(before * before)) if before.size > 4 else noise_e
                onset = a + refine_onset(hp, float(k), self.fs, robust_sigma(before))
        i0 = int(np.floor(onset + 0.5))
        rel = i0 - a
        feats = onset_features(hp[rel:rel + self.snip_post], 0, self.fs, noise_e)
        s0 = max(i0 - self.snip_pre, h0)
        s1 = min(i0 + self.snip_post, self._next)
        raw = self._raw[s0 - h0:s1 - h0]
        peak = float(np.max(np.abs(raw[i0 - s0:]))) if s1 > i0 else 0.0
        feats["clipped_frac"] = float(np.mean(np.abs(raw) >= 0.999)) if raw.size else 0.0
        snippet = np.clip(np.round(raw * SNIPPET_SCALE), -32768, 32767).astype(np.int16)
        snr_db = feats["snr_db"]
        return Onset(
            frame=float(onset),
            trigger_frame=trig,
            peak_dbfs=float(20.0 * np.log10(max(peak, 1e-20))),
            snr_db=snr_db,
            sigma_samples=pick_sigma_samples(snr_db),
            snippet_first_frame=int(s0),
            snippet=snippet,
            features=feats,
        )


def detect(x: np.ndarray, cfg: DetectorConfig, sample_rate_hz: float) -> list[Onset]:
    """All onsets in a whole signal (the batch form of :class:`Detector`)."""
    det = Detector(cfg, sample_rate_hz)
    return det.process(x) + det.flush()
