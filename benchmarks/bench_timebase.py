"""Benchmark: timestamp accuracy and CPU cost of the two real timebases.

Run from the project root:

    python benchmarks/bench_timebase.py [--seeds 3] [--ppm 50] [--jitter 50,200,500,1000]

Both modes are fed simulated 48 kHz audio blocks of 480 frames from a device whose
sample clock runs ``--ppm`` fast, with callbacks delayed after each block by an
exponential delay of mean ``jitter`` µs (plus 1 % of 2–20 ms late callbacks):

* ``system`` (node/timebase_system.py): the callback wall times are all it has (the
  ADC time is unusable, as with JACK or PulseAudio).
* ``pps-audio`` (node/timebase_pps.py): a second channel carries the GPS PPS
  (100 ms pulse, 20 µs RC rise through a 0.45·fs anti-alias filter, 20 ms AC-coupling
  droop, −46 dBFS noise); the callback jitter only matters for labelling seconds.

Printed per mode and jitter: the 1-σ (RMS) and worst timestamp error of
``to_utc_ns(first frame)`` over the 10 s starting 60 s after the first lock (each
block evaluated when it arrives), the σ the timebase itself reported there, the
fitted rate error, and the CPU time of ``observe()`` + ``status()`` per second of
audio (absolute, and as a share of one core). Acceptance: system < 50 µs and
pps-audio < 5 µs at 200 µs jitter and 50 ppm.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scipy.signal import firwin  # noqa: E402

from common.config import TimebaseConfig  # noqa: E402
from common.timefmt import NS_PER_S  # noqa: E402
from node.audio import AudioBlock  # noqa: E402
from node.timebase_pps import PpsAudioTimebase  # noqa: E402
from node.timebase_system import SystemClockTimebase  # noqa: E402

FS = 48_000.0
BS = 480
T0_S = 1_700_000_000
SECONDS = 90.0
TAU_RC = 20e-6


def _pps_edge_template() -> tuple[np.ndarray, np.ndarray, float]:
    """RC step through a linear-phase anti-alias filter on a 1/64-sample grid;
    returns (u_s, value, 50 %-crossing delay s)."""
    os_ = 64
    u = np.arange(-96 * os_, 96 * os_) / (os_ * FS)
    step = np.where(u >= 0, 1.0 - np.exp(-np.maximum(u, 0.0) / TAU_RC), 0.0)
    h = firwin(32 * os_ + 1, 0.45 * FS, fs=FS * os_, window=("kaiser", 8.0))
    s = np.convolve(step, h, mode="same")[24 * os_:-24 * os_]
    u = u[24 * os_:-24 * os_]
    k = int(np.flatnonzero(s >= 0.5)[0])
    return u, s, float(u[k - 1] + (0.5 - s[k - 1]) / (s[k] - s[k - 1]) * (u[k] - u[k - 1]))


def _pps_channel(n: int, fst: float, frac0: float, rng: np.random.Generator,
                 template) -> np.ndarray:
    u_t, s_t, _ = template
    t = frac0 + np.arange(n) / fst
    y = np.zeros(n)

    def edge(u):
        return np.interp(u, u_t, s_t, left=0.0, right=1.0) * np.exp(-np.maximum(u, 0.0) / 0.02)

    for k in range(int(math.floor(t[0])), int(t[-1]) + 1):
        i0 = max(0, int((k - frac0) * fst) - 100)
        i1 = min(n, int((k + 0.1 + 0.16 - frac0) * fst) + 100)
        if i1 > i0:
            u = t[i0:i1] - k
            y[i0:i1] += 0.5 * (edge(u) - edge(u - 0.1))
    return y + rng.normal(0.0, 0.005, n)


def simulate(mode: str, seed: int, jitter_us: float, ppm: float, template):
    """Blocks and the true UTC ns of each block's first frame."""
    rng = np.random.default_rng(seed)
    fst = FS * (1 + ppm * 1e-6)
    frac0 = float(rng.uniform(0, 1))
    nb = int(SECONDS * FS / BS)
    delay = rng.exponential(jitter_us * 1e3, nb)
    late = rng.random(nb) < 0.01
    delay[late] += rng.uniform(2e6, 20e6, late.sum())
    if mode == "pps-audio":
        pps = _pps_channel(nb * BS, fst, frac0, rng, template).astype(np.float32)
        mic = rng.normal(0, 0.01, nb * BS).astype(np.float32)
        samples = np.stack([mic, pps], axis=1)
    else:
        samples = np.zeros((nb * BS, 1), np.float32)
    blocks, truth = [], []
    for k in range(nb):
        f0 = k * BS
        first = T0_S * NS_PER_S + round((frac0 + f0 / fst) * NS_PER_S)
        cb = T0_S * NS_PER_S + round((frac0 + (f0 + BS) / fst) * NS_PER_S + delay[k])
        blocks.append(AudioBlock(samples[f0:f0 + BS], f0, 0.0, 10 ** 12 + cb - T0_S * NS_PER_S, cb))
        truth.append(first)
    return blocks, truth


def measure(mode: str, seed: int, jitter_us: float, ppm: float, template) -> dict:
    blocks, truth = simulate(mode, seed, jitter_us, ppm, template)
    if mode == "system":
        tb = SystemClockTimebase(TimebaseConfig(mode="system", fit_window_s=60.0), FS)
    else:
        tb = PpsAudioTimebase(TimebaseConfig(mode="pps-audio", pps_channel=1,
                                             latency_s=-template[2]), FS)
    cpu = 0.0
    lock_at = None
    errs, sigmas = [], []
    for b, t_true in zip(blocks, truth):
        c0 = time.perf_counter()
        tb.observe(b)
        st = tb.status()
        cpu += time.perf_counter() - c0
        t = b.first_frame / FS
        if lock_at is None and st.locked:
            lock_at = t
        if lock_at is not None and lock_at + 60.0 <= t < lock_at + 70.0:
            errs.append(tb.to_utc_ns(b.first_frame) - t_true)
            sigmas.append(st.sigma_ns)
    e = np.array(errs, dtype=np.float64)
    return {
        "lock_s": lock_at if lock_at is not None else math.nan,
        "rms_us": float(np.sqrt(np.mean(e ** 2))) / 1e3 if e.size else math.nan,
        "max_us": float(np.max(np.abs(e))) / 1e3 if e.size else math.nan,
        "sigma_us": float(np.mean(sigmas)) / 1e3 if sigmas else math.nan,
        "rate_ppb": (tb.rate_hz() / (FS * (1 + ppm * 1e-6)) - 1) * 1e9,
        "cpu_ms_per_s": cpu / SECONDS * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ppm", type=float, default=50.0)
    ap.add_argument("--jitter", default="50,200,500,1000", help="callback jitter means (µs)")
    args = ap.parse_args(argv)
    jitters = [float(j) for j in args.jitter.split(",")]
    template = _pps_edge_template()
    print(f"{SECONDS:.0f} s of 48 kHz audio per run, {BS}-frame blocks, sample clock "
          f"{args.ppm:+g} ppm, {args.seeds} seeds; errors over 60-70 s after lock")
    print(f"{'mode':<10} {'jitter µs':>9} {'lock s':>7} {'1σ µs':>8} {'max µs':>8} "
          f"{'σ rep µs':>9} {'rate ppb':>9} {'CPU ms/s':>9} {'% core':>7}")
    worst = {}
    for mode in ("system", "pps-audio"):
        for j in jitters:
            runs = [measure(mode, s, j, args.ppm, template) for s in range(args.seeds)]
            rms = math.sqrt(np.mean([r["rms_us"] ** 2 for r in runs]))
            cpu = float(np.mean([r["cpu_ms_per_s"] for r in runs]))
            print(f"{mode:<10} {j:>9.0f} {np.mean([r['lock_s'] for r in runs]):>7.1f} "
                  f"{rms:>8.2f} {max(r['max_us'] for r in runs):>8.2f} "
                  f"{np.mean([r['sigma_us'] for r in runs]):>9.2f} "
                  f"{max(abs(r['rate_ppb']) for r in runs):>9.1f} {cpu:>9.3f} {cpu / 10:>7.3f}")
            if j == 200.0:
                worst[mode] = rms
    if "system" in worst and "pps-audio" in worst:
        print(f"at 200 µs jitter: system 1σ {worst['system']:.2f} µs (target 50, "
              f"{worst['system'] / 50:.2f} of it); pps-audio 1σ {worst['pps-audio']:.2f} µs "
              f"(target 5, {worst['pps-audio'] / 5:.2f} of it); pps-audio is "
              f"{worst['system'] / worst['pps-audio']:.1f}× more accurate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
