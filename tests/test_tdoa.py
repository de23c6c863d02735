"""Cross-correlation time differences: sub-sample accuracy, search limits, and the
gated refinement of picks from event snippets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from server.tdoa import Delay, Snippet, gcc_phat, refine_times

FS = 48_000.0


def _blast(n: int = 2048, start: int = 600, seed: int = 0) -> np.ndarray:
    """A band-limited impulsive waveform (a decaying, ringing blast)."""
    k = np.arange(n - start)
    x = np.zeros(n)
    x[start:] = np.exp(-k / 40.0) * np.sin(k * 0.3) + 0.3 * np.exp(-k / 15.0)
    sos = signal.butter(4, [300, 8000], "bandpass", fs=FS, output="sos")
    return signal.sosfiltfilt(sos, x)


def _delayed(x: np.ndarray, d_s: float) -> np.ndarray:
    """``x`` delayed by ``d_s`` (exact fractional delay of a band-limited signal)."""
    f = np.fft.rfftfreq(x.size, 1.0 / FS)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * d_s), x.size)


@pytest.mark.parametrize("delay_s", [0.0, 7.7e-6, 1.3e-5, 2.1e-4, -3.37e-4, 1.0e-3])
def test_gcc_phat_finds_sub_sample_delays(delay_s):
    rng = np.random.default_rng(1)
    x = _blast()
    errs = []
    for _ in range(10):
        a = x + rng.normal(0, 0.01, x.size)
        b = _delayed(x, delay_s) + rng.normal(0, 0.01, x.size)
        d = gcc_phat(a, b, FS)
        assert isinstance(d, Delay)
        errs.append(d.delay_s - delay_s)
    # a sample is 20.8 µs: the estimate is good to a small fraction of one
    assert abs(np.mean(errs)) < 2e-6 and np.std(errs) < 3e-6
    assert d.peak > 0.5 and d.ratio > 2.0


def test_plain_cross_correlation_also_works():
    x = _blast()
    d = gcc_phat(x, _delayed(x, 5.5e-5), FS, phat_beta=0.0)
    assert abs(d.delay_s - 5.5e-5) < 3e-6


def test_max_delay_limits_the_search():
    """Two copies of the pulse in y: the search window decides which one counts."""
    x = _blast()
    y = _delayed(x, 1e-3) + 0.9 * _delayed(x, 8e-3)
    assert abs(gcc_phat(x, y, FS, max_delay_s=3e-3).delay_s - 1e-3) < 5e-6
    assert abs(gcc_phat(x, y, FS, max_delay_s=10e-3).delay_s - 1e-3) < 5e-6     # the stronger one
    with pytest.raises(ValueError, match="no lag"):
        gcc_phat(x[:10], y[:10], FS, max_delay_s=-1.0)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="samples"):
        gcc_phat(np.zeros(0), np.ones(10), FS)
    with pytest.raises(ValueError, match="sample rate"):
        gcc_phat(np.ones(10), np.ones(10), 0.0)


def _snip(x: np.ndarray, arrival_ns: int, pick_error_ns: int, start: int = 600) -> Snippet:
    """A node's snippet whose waveform arrives at ``arrival_ns`` (sample ``start``)
    and whose pick is off by ``pick_error_ns``."""
    t0 = arrival_ns - int(round(start / FS * 1e9))
    return Snippet(samples=np.round(x * 20000).astype(np.int16), t0_ns=t0, fs_hz=FS,
                   pick_ns=arrival_ns + pick_error_ns)


def test_refine_times_corrects_small_pick_errors():
    rng = np.random.default_rng(2)
    x = _blast()
    truth = [10**18, 10**18 + 123_456_789, 10**18 + 400_000_017]
    errors = [0, 180_000, -240_000]          # picks off by 0.18 ms and 0.24 ms
    snips = [_snip(1.0 * x + rng.normal(0, 0.005, x.size), t, e) for t, e in zip(truth, errors)]
    times, changed = refine_times(snips)
    assert changed.sum() == 2                                 # all but the reference
    # time differences are what matters: every time is off by the reference
    # pick's own error, and by nothing else (5 µs)
    off = times - np.array(truth)
    ref = int(np.flatnonzero(~changed)[0])
    assert np.all(np.abs(off - errors[ref]) < 5_000)


def test_refine_times_keeps_picks_it_cannot_trust():
    rng = np.random.default_rng(3)
    x = _blast()
    other = rng.normal(0, 0.3, x.size)                          # an unrelated sound
    truth = [10**18, 10**18 + 5_000_000, 10**18 + 9_000_000]
    snips = [_snip(x, truth[0], 0), _snip(other, truth[1], 0),
             _snip(x, truth[2], 2_000_000),                     # a pick 2 ms off: beyond max_shift
             None]
    picks = [s.pick_ns for s in snips[:3]] + [0]
    times, changed = refine_times(snips)
    assert not changed.any()
    assert times.tolist() == picks


def test_refine_times_needs_two_usable_snippets():
    x = _blast()
    times, changed = refine_times([_snip(x, 10**18, 100), None, Snippet(np.zeros(0), 0, FS, 5)])
    assert not changed.any() and times.tolist() == [10**18 + 100, 0, 5]
