"""PPS-in-audio timebase: edge detection on simulated PPS channels (band-limited RC
edges, AC-coupling droop, noise, missing and extra pulses), the fit, holdover, and the
real AudioMoth PPS/sample log."""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import firwin

from common.config import TimebaseConfig
from common.timefmt import NS_PER_S, iso_to_ns
from node.audio import AudioBlock
from node.timebase_pps import (PpsAudioTimebase, PpsEdgeDetector, fit_pps_edges,
                               find_rising_edges)
from node.wav_source import read_wav

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FS = 48_000.0
E = 1_700_000_000          # an integer UTC second near the simulated stream's start
OS = 64                    # oversampling of the edge template


@lru_cache(maxsize=None)
def edge_template(tau_s: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A PPS step through an RC of ``tau_s`` and an ADC anti-alias filter (linear-phase,
    cut-off 0.45 fs), on a grid of 1/64 sample. Returns (u_s, value, t50_s): time after
    the true edge, the normalised step, and where it crosses 50 % (the pulse shape's own
    delay, which a deployment calibrates into ``latency_s``)."""
    u = np.arange(-96 * OS, 96 * OS) / (OS * FS)
    step = np.where(u >= 0, 1.0 - np.exp(-np.maximum(u, 0.0) / tau_s), 0.0)
    h = firwin(32 * OS + 1, 0.45 * FS, fs=FS * OS, window=("kaiser", 8.0))
    s = np.convolve(step, h, mode="same")[24 * OS:-24 * OS]
    u = u[24 * OS:-24 * OS]
    k = int(np.flatnonzero(s >= 0.5)[0])
    t50 = u[k - 1] + (0.5 - s[k - 1]) / (s[k] - s[k - 1]) * (u[k] - u[k - 1])
    return u, s, float(t50)


def pps_channel(n: int, *, frac0: float, ppm: float = 50.0, tau_s: float = 20e-6,
                amp: float = 0.5, width_s: float = 0.1, tau_hp_s: float = 0.02,
                noise: float = 0.005, missing=(), glitches=(), seed: int = 0) -> np.ndarray:
    """(n,) samples of the PPS input: frame k is taken at E + frac0 + k/fs_true seconds;
    a pulse rises at every integer second not in ``missing``; ``glitches`` are 1 ms
    pulses at the given seconds (relative to E). AC coupling: droop with ``tau_hp_s``."""
    u_t, s_t, _ = edge_template(tau_s)
    fst = FS * (1 + ppm * 1e-6)
    t = frac0 + np.arange(n) / fst
    y = np.zeros(n)

    def edge(u):
        return np.interp(u, u_t, s_t, left=0.0, right=1.0) * np.exp(-np.maximum(u, 0.0) / tau_hp_s)

    def add(t_on: float, w: float) -> None:
        i0 = max(0, int((t_on - frac0) * fst) - 100)
        i1 = min(n, int((t_on + w + 8 * tau_hp_s - frac0) * fst) + 100)
        if i1 > i0:
            u = t[i0:i1] - t_on
            y[i0:i1] += amp * (edge(u) - edge(u - w))

    for k in range(int(math.floor(t[0])), int(t[-1]) + 1):
        if k not in missing:
            add(float(k), width_s)
    for g in glitches:
        add(float(g), 0.001)
    return y + np.random.default_rng(seed).normal(0.0, noise, n)


def stream(seconds: float, *, seed: int, bs: int = 480, wall_offset_s=lambda t: 0.003,
           lost_at_s: float | None = None, **kw):
    """Blocks (mic + PPS channel) with callback wall times, and each block's true UTC ns.

    ``wall_offset_s(t)``: the system clock's error at stream time t (s).
    ``lost_at_s``: the driver loses one block of frames there (the frame counter does
    not see it; the next block has ``overflow`` set)."""
    rng = np.random.default_rng(seed + 1000)
    ppm = kw.get("ppm", 50.0)
    fst = FS * (1 + ppm * 1e-6)
    frac0 = float(rng.uniform(0.0, 1.0))
    n = int(seconds * FS)
    pps = pps_channel(n + bs, frac0=frac0, seed=seed, **kw).astype(np.float32)
    mic = rng.normal(0.0, 0.01, n + bs).astype(np.float32)
    delays = rng.exponential(200e3, n // bs + 1)
    out = []
    for k in range(n // bs):
        f0 = k * bs
        lost = bs if lost_at_s is not None and f0 / FS >= lost_at_s else 0
        s0 = f0 + lost  # index of the true sample
        t_end = frac0 + (s0 + bs) / fst
        wall = E * NS_PER_S + round((t_end + wall_offset_s(f0 / FS)) * 1e9 + delays[k])
        truth = E * NS_PER_S + (frac0 + s0 / fst) * 1e9
        overflow = bool(lost) and f0 / FS < lost_at_s + bs / FS
        out.append((AudioBlock(np.stack([mic[s0:s0 + bs], pps[s0:s0 + bs]], axis=1), f0,
                               None, 0, wall, overflow), truth))
    return out, frac0


def cfg_for(tau_s: float, **kw) -> TimebaseConfig:
    """pps-audio config with the pulse shape's delay calibrated into latency_s."""
    return TimebaseConfig(mode="pps-audio", pps_channel=1, latency_s=-edge_template(tau_s)[2], **kw)


# ------------------------------------------------------------------ edge detection
@pytest.mark.parametrize("tau_s", [2e-6, 20e-6, 100e-6])
def test_edges_have_sub_sample_accuracy(tau_s):
    frac0 = 0.37
    y = pps_channel(int(12 * FS), frac0=frac0, tau_s=tau_s, noise=0.002, seed=1)
    edges = find_rising_edges(y, FS)
    assert edges.shape == (12,)
    fst = FS * (1 + 50e-6)
    truth = (np.arange(1, 13) + edge_template(tau_s)[2] - frac0) * fst
    err_us = (edges - truth) / FS * 1e6
    assert np.max(np.abs(err_us)) < 2.0, err_us  # one sample is 20.8 µs


def test_edge_split_across_blocks_is_found_once_and_identically():
    y = pps_channel(int(4.3 * FS), frac0=0.2, seed=2)
    whole = find_rising_edges(y, FS)
    assert whole.shape == (4,)
    cut = int(whole[2])
    # Tiny blocks around one edge (every split point), then whole-stream splits placing
    # block boundaries on and right next to an edge.
    part = y[cut - 2000:cut + 4000]
    ref = find_rising_edges(part, FS)
    assert ref.shape == (1,)
    for n in (7, 13):
        det = PpsEdgeDetector(FS)
        got = []
        for pos in range(0, part.shape[0], n):
            got += [e for e, _ in det.push(part[pos:pos + n], pos)]
        np.testing.assert_allclose(got, ref, atol=1e-9)
    for sizes in ([480], [4801], [cut, 1, 2, 3, 100_000], [cut - 1, 2, 100_000]):
        det = PpsEdgeDetector(FS)
        got, pos, i = [], 0, 0
        while pos < y.shape[0]:
            n = sizes[i % len(sizes)]
            got += [e for e, _ in det.push(y[pos:pos + n], pos)]
            pos += n
            i += 1
        np.testing.assert_allclose(got, whole, atol=1e-9)


def test_noise_only_and_small_glitches_give_no_edges():
    rng = np.random.default_rng(3)
    assert find_rising_edges(rng.normal(0, 0.001, int(3 * FS)), FS).size == 0
    y = np.zeros(int(FS))
    y[1000:1010] = 0.01  # below min_amplitude
    assert find_rising_edges(y, FS).size == 0


# ------------------------------------------------------------------ fit
def test_fit_pps_edges_recovers_line_and_checks_input():
    s = np.array([10, 11, 12, 14, 15])
    f = 1234.5 + 48_002.4 * (s - 10)
    fit = fit_pps_edges(f, s)
    assert abs(fit.rate_hz - 48_002.4) < 1e-6
    assert np.max(np.abs(fit.residuals_frames)) < 1e-6
    assert abs(fit.frame_at(13) - (1234.5 + 3 * 48_002.4)) < 1e-6
    assert fit.utc_ns(1234.5) == 10 * NS_PER_S
    assert fit.utc_ns(1234.5 + 48_002.4 / 2) == 10 * NS_PER_S + NS_PER_S // 2
    with pytest.raises(ValueError, match=">= 2 edges"):
        fit_pps_edges(f[:1], s[:1])
    with pytest.raises(ValueError, match="only one PPS edge"):
        fit_pps_edges(f[:2], np.array([3, 3]))


# ------------------------------------------------------------------ timebase
def run(tb: PpsAudioTimebase, blocks):
    """Errors (ns) of to_utc_ns(first frame) on every block while locked, the first
    lock time (s) and the statuses."""
    errs, lock_at, statuses = [], None, []
    for b, truth in blocks:
        tb.observe(b)
        st = tb.status()
        statuses.append(st)
        if st.locked:
            lock_at = lock_at if lock_at is not None else b.first_frame / FS
            errs.append(tb.to_utc_ns(b.first_frame) - truth)
    return np.array(errs), lock_at, statuses


@pytest.mark.parametrize("seed,tau_s,noise", [(1, 20e-6, 0.005), (2, 2e-6, 0.005), (3, 100e-6, 0.01)])
def test_acceptance_5us_with_50ppm_and_noise(seed, tau_s, noise):
    blocks, _ = stream(68, seed=seed, tau_s=tau_s, noise=noise)
    tb = PpsAudioTimebase(cfg_for(tau_s), FS)
    errs, lock_at, _ = run(tb, blocks)
    assert lock_at is not None and lock_at < 5.0
    late = errs[-int(10 * FS / 480):]  # the last 10 s, > 60 s after lock
    rms = float(np.sqrt(np.mean(late ** 2)))
    assert rms < 5_000, f"rms {rms / 1e3:.2f} µs"
    assert np.sqrt(np.mean(errs ** 2)) < 5_000
    assert abs(tb.rate_hz() / (FS * 1.00005) - 1) < 0.5e-6
    st = tb.status()
    assert st.locked and not st.degraded and st.mode == "pps-audio" and st.detail == ""
    assert 0.2 * rms < st.sigma_ns < 10 * rms + 1_000  # honest σ
    assert tb.stats()["rejected"] == 0 and tb.stats()["reseeds"] == 0


def test_missing_and_extra_pulses():
    missing = {12, 13, 25, 31}  # two in a row: still within lost_after_s
    glitches = [20.3, 20.31, 27.7, 33.5, 40.45]
    blocks, frac0 = stream(50, seed=4, missing=missing, glitches=glitches)
    tb = PpsAudioTimebase(cfg_for(20e-6), FS)
    errs, _, statuses = run(tb, blocks)
    st = tb.stats()
    assert st["rejected"] == len(glitches)
    assert st["reseeds"] == 0
    end_s = frac0 + blocks[-1][0].first_frame / FS  # pulses need ~3 ms after them
    real = [k for k in range(1, 51) if frac0 + 0.01 < k < end_s and k not in missing]
    assert st["accepted"] + 2 == len(real)  # the first two only seed the fit
    assert np.sqrt(np.mean(errs ** 2)) < 5_000
    assert all(s.locked for s in statuses[int(3 * FS / 480):])  # gaps < lost_after_s


def test_pps_loss_degrades_then_recovers():
    blocks, _ = stream(60, seed=5, missing=set(range(20, 41)))
    tb = PpsAudioTimebase(cfg_for(20e-6), FS)
    coast_err, sig_during = [], []
    for b, truth in blocks:
        tb.observe(b)
        t = b.first_frame / FS
        st = tb.status()
        if 25.0 < t < 40.0:
            assert not st.locked and st.degraded and "PPS lost" in st.detail
            sig_during.append(st.sigma_ns)
            coast_err.append(tb.to_utc_ns(b.first_frame) - truth)
        if t > 42.0:
            assert st.locked
    assert all(np.diff(sig_during) >= 0) and sig_during[-1] > sig_during[0]
    assert np.max(np.abs(coast_err)) < 20_000  # extrapolation over 20 s stays close
    assert sig_during[-1] > np.max(np.abs(coast_err)) / 3


def test_relabelled_seconds_reseed():
    """The system clock is 1 s wrong until chrony steps it at 20 s: the edges then get
    new labels and the fit must follow (a re-seed), not reject them forever."""
    blocks, _ = stream(35, seed=6, wall_offset_s=lambda t: 1.003 if t < 20.0 else 0.003)
    tb = PpsAudioTimebase(cfg_for(20e-6), FS)
    errs = []
    for b, truth in blocks:
        tb.observe(b)
        if b.first_frame / FS > 25.0:
            assert tb.status().locked
            errs.append(tb.to_utc_ns(b.first_frame) - truth)
    assert tb.stats()["reseeds"] == 1
    assert np.sqrt(np.mean(np.square(errs))) < 5_000


def test_lost_frames_unlock_then_reseed():
    """An xrun drops 10 ms of audio the frame counter never sees."""
    blocks, _ = stream(30, seed=8, lost_at_s=15.2)
    tb = PpsAudioTimebase(cfg_for(20e-6), FS)
    errs = []
    for b, truth in blocks:
        tb.observe(b)
        t = b.first_frame / FS
        st = tb.status()
        if 15.2 <= t < 17.0:
            assert not st.locked and st.degraded
        if t > 20.0:
            assert st.locked
            errs.append(tb.to_utc_ns(b.first_frame) - truth)
    assert tb.stats()["reseeds"] == 1
    assert np.sqrt(np.mean(np.square(errs))) < 5_000


def test_missing_channel_and_missing_wall_clock_are_reported():
    tb = PpsAudioTimebase(TimebaseConfig(mode="pps-audio", pps_channel=2), FS)
    blocks, _ = stream(3, seed=7)
    for b, _ in blocks:
        tb.observe(b)
    st = tb.status()
    assert not st.locked and "PPS channel 2 missing" in st.detail
    tb = PpsAudioTimebase(TimebaseConfig(mode="pps-audio", pps_channel=1), FS)
    with pytest.raises(RuntimeError, match="no timing data"):
        tb.to_utc_ns(0)
    for b, _ in blocks:
        tb.observe(AudioBlock(b.samples, b.first_frame))  # no wall clock (a file)
    st = tb.status()
    assert not st.locked and "no wall clock" in st.detail
    assert tb.stats()["unlabelled"] >= 2


# ------------------------------------------------------------------ real AudioMoth log
def _audiomoth() -> tuple[list[dict], Path]:
    folder = DATA / "opensoundscape" / "audio"
    csv_path, wav_path = folder / "audiomoth_gps.csv", folder / "audiomoth_gps.wav"
    if not (csv_path.is_file() and wav_path.is_file()):
        pytest.skip(f"shared data not found: {csv_path}")
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f)), wav_path


def test_audiomoth_pps_log():
    """AudioMoth GPS firmware logs, per PPS pulse, the samples written so far
    (TOTAL_SAMPLES), a sub-sample timer (TIMER_COUNT, 1000 ticks per sample at 48 kHz),
    its own clock (AUDIOMOTH_TIME) and the previous RMC fix (LAST_RMC_GPS_TIME, which
    labels the *previous* row's pulse). 4 pulses; the WAV ends at pulse 2."""
    rows, wav_path = _audiomoth()
    assert [int(r["PPS_NUMBER"]) for r in rows] == [0, 1, 2, 3]
    frames = np.array([int(r["TOTAL_SAMPLES"]) for r in rows], dtype=np.float64)
    approx_ns = [iso_to_ns(r["AUDIOMOTH_TIME"]) for r in rows]

    # 1. Labelling rule: the device's own clock rounded to the second gives exactly the
    #    GPS second the next RMC sentence assigns to each pulse.
    for row, nxt, t in zip(rows, rows[1:], approx_ns):
        assert nxt["STATUS"] == "A"
        assert round(t / NS_PER_S) * NS_PER_S == iso_to_ns(nxt["LAST_RMC_GPS_TIME"])

    # 2. The timebase locks on the logged pulses; the rate and residuals are small and
    #    consistent with whole-sample counts.
    tb = PpsAudioTimebase(TimebaseConfig(mode="pps-audio"), 48_000.0)
    accepted = [tb.observe_edge(f, t) for f, t in zip(frames, approx_ns)]
    assert accepted == [False, False, True, True]  # the first two seed the fit
    st = tb.status()
    assert st.locked
    assert abs(st.rate_hz / 48_000 - 1) < 50e-6
    fit = fit_pps_edges(frames, np.round(np.array(approx_ns) / NS_PER_S).astype(np.int64))
    assert np.max(np.abs(fit.residuals_frames)) < 0.5  # quantised to whole samples
    assert abs(fit.rate_hz - st.rate_hz) < 1e-6

    # 3. The WAV holds the samples up to pulse 2; its last frame is then 10:00:02 UTC.
    samples, rate = read_wav(wav_path)
    assert rate == 48_000 and samples.shape[0] == int(frames[2])
    t_end = tb.to_utc_ns(samples.shape[0])
    assert abs(t_end - iso_to_ns("2024-05-28T10:00:02Z")) < NS_PER_S / 48_000

    # 4. With the sub-sample timer the steady pulses 1-3 are collinear to 0.01 sample
    #    (≈ 0.2 µs) whichever way the timer counts, and the oscillator is within 5 ppm.
    timer = np.array([int(r["TIMER_COUNT"]) for r in rows], dtype=np.float64) / 1000.0
    secs = np.arange(1, 4)
    for sign in (1.0, -1.0):
        fine = fit_pps_edges(frames[1:] + sign * timer[1:], secs)
        assert np.max(np.abs(fine.residuals_frames)) < 0.01
        assert abs(fine.rate_hz / 48_000 - 1) < 5e-6
