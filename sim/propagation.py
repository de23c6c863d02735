"""Sound paths from sources to one node, and each path's waveform as heard at the mic.

Paths (:func:`arrivals`):

* ``direct``: straight line, spherical spreading 1/r;
* ``echo``: first-order specular reflection off a facade (image source); valid only
  if source and mic are on the facade's reflecting side and the reflection point
  lies on the segment, between the ground and the facade's height; amplitude
  ``reflection / path``;
* ``blocked`` / ``diffracted``: for a non-line-of-sight pair
  (:class:`sim.world.Blocking`) the direct path becomes ``blocked`` (attenuated
  20–30 dB, low-passed) and a longer ``diffracted`` path is added.

Wind advects sound: a straight leg ``d`` takes ``|d| / (c + w·d̂)``.

Waveforms (:func:`arrival_kernel`) are built in the frequency domain from the
source's continuous-time spectrum (analytic for the Friedlander blast), times air
absorption (ISO 9613-1 over the path length; minimum phase, i.e. causal, by
default), an optional causal low-pass, and a smooth zero-phase band limit just below
Nyquist, times the exact delay ``exp(-2πi f τ)``. The result is the band-limited
signal sampled on the node's frame grid with the blast front (the waveform's start,
a step) at the true arrival time: without absorption the band-limited front crosses
half its height within 0.05 sample of it; with (causal) absorption nothing arrives
before it and the rise is slowed over long paths, as in real air.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.acoustics import air_absorption_db_per_m
from common.timefmt import NS_PER_S
from sim.world import Scenario, Source, Town

#: Arrival kinds (``Arrival.kind``): the line-of-sight path, a facade
#: reflection, and the two paths of a non-line-of-sight (blocked) pair: through
#: the building and around its corner.
ARRIVAL_KINDS = ("direct", "echo", "blocked", "diffracted")
#: Low-pass corner (Hz) of sound that reached the mic through or around a building.
NLOS_LOWPASS_HZ = 1500.0
#: Kernel samples kept before the arrival for the band limit's (symmetric) ringing.
_PRE_S = 2.7e-3
_POST_S = 4.0e-3


@dataclass(frozen=True)
class Arrival:
    """One path from one source to one node's microphone.

    t_arrival_utc_ns: true arrival time of the waveform's start (blast front), UTC ns
        (rounded to the ns; 1 ns is 5e-5 samples at 48 kHz).
    amplitude: peak pressure at the mic (Pa) before air absorption: the source's
        1-m peak times spreading (1/path), reflection, blocking and diffraction loss.
    path_m: geometric path length (m); travel_s: travel time (s, with wind).
    kind: one of ``ARRIVAL_KINDS`` (anything else is a ValueError).
    wall_index: for echoes, the index of the facade in ``town.walls``, else -1.
    lowpass_hz: corner (Hz) of an extra first-order low-pass, or None: the
        causal RC response 1 / (1 + j f / lowpass_hz) (not zero-phase: it delays
        and smears the onset; ``arrival_kernel``).
    """

    source_id: str
    t_arrival_utc_ns: int
    amplitude: float
    path_m: float
    kind: str
    travel_s: float
    wall_index: int = -1
    lowpass_hz: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival kind {self.kind!r} is not one of {', '.join(ARRIVAL_KINDS)}")


def _leg_time(a: np.ndarray, b: np.ndarray, c_mps: float, wind: np.ndarray) -> tuple[float, float]:
    """(length m, travel s) of the straight leg a → b with wind ``wind`` (m/s)."""
    d = b - a
    r = float(np.linalg.norm(d))
    if r == 0.0:
        return 0.0, 0.0
    return r, r / (c_mps + float(wind @ d) / r)


def _wall_arrays(walls) -> tuple[np.ndarray, ...]:
    """Walls as arrays: p0 (m, 2), edge (m, 2), unit normal (m, 2), height (m,), two-sided (m,)."""
    p0 = np.array([w.p0 for w in walls], dtype=float).reshape(-1, 2)
    p1 = np.array([w.p1 for w in walls], dtype=float).reshape(-1, 2)
    edge = p1 - p0
    normal = np.column_stack([edge[:, 1], -edge[:, 0]]) / np.hypot(edge[:, 0], edge[:, 1])[:, None]
    height = np.array([w.height_m for w in walls], dtype=float)
    two = np.array([w.two_sided for w in walls], dtype=bool)
    return p0, edge, normal, height, two


def image_paths(src, mic, walls) -> list[tuple[int, np.ndarray, float]]:
    """First-order specular reflections ``src → wall → mic`` (positions (3,) m ENU).

    Returns ``(wall index, reflection point (3,), path length m)`` for every wall
    where the reflection is physical: source and mic on the wall's reflecting side
    (either side, same one, for two-sided walls; not in its plane), the reflection
    point on the segment and between the ground and the wall's height.
    """
    if len(walls) == 0:
        return []
    return _image_paths(np.asarray(src, dtype=float), np.asarray(mic, dtype=float), _wall_arrays(walls))


def _image_paths(src: np.ndarray, mic: np.ndarray,
                 arrays: tuple[np.ndarray, ...]) -> list[tuple[int, np.ndarray, float]]:
    p0, edge, normal, height, two = arrays
    ds = ((src[:2] - p0) * normal).sum(axis=1)
    dm = ((mic[:2] - p0) * normal).sum(axis=1)
    ok = np.where(two, ds * dm > 0.0, (ds > 0.0) & (dm > 0.0))
    ds, dm = np.abs(ds), np.abs(dm)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = ds / (ds + dm)
    image_xy = src[:2] - 2.0 * ((src[:2] - p0) * normal).sum(axis=1)[:, None] * normal
    point_xy = image_xy + t[:, None] * (mic[:2] - image_xy)
    point_z = src[2] + t * (mic[2] - src[2])
    u = ((point_xy - p0) * edge).sum(axis=1) / (edge * edge).sum(axis=1)
    ok &= (u >= 0.0) & (u <= 1.0) & (point_z >= 0.0) & (point_z <= height)
    path = np.sqrt(((mic[:2] - image_xy) ** 2).sum(axis=1) + (mic[2] - src[2]) ** 2)
    return [(int(i), np.array([point_xy[i, 0], point_xy[i, 1], point_z[i]]), float(path[i]))
            for i in np.flatnonzero(ok)]


def arrivals(scenario: Scenario, town: Town, node_index: int, c_mps: float | None = None, *,
             echoes: bool = True) -> list[Arrival]:
    """Every path from every source of ``scenario`` to node ``node_index``, sorted by time.

    ``c_mps``: speed of sound (m/s); None means the scenario's true air
    (``scenario.c_mps``). ``echoes=False`` leaves out the facade reflections.
    """
    if not 0 <= int(node_index) < town.n_nodes:
        raise ValueError(f"node_index {node_index} is out of range; this town has {town.n_nodes} nodes")
    c = scenario.c_mps if c_mps is None else float(c_mps)
    if not 100.0 <= c <= 500.0:
        raise ValueError(f"c_mps {c} is not a speed of sound in air (100..500 m/s)")
    wind = np.asarray(scenario.wind_mps, dtype=float)
    mic = np.asarray(town.nodes_enu[int(node_index)], dtype=float)
    blocking = {(b.incident_id, b.node_index): b for b in scenario.blocked}
    wall_arrays = _wall_arrays(town.walls) if (echoes and town.walls) else None
    out: list[Arrival] = []

    def add(src: Source, kind: str, amp: float, path: float, travel: float, wall: int = -1,
            lowpass: float | None = None) -> None:
        out.append(Arrival(src.id, src.t_emit_utc_ns + round(travel * NS_PER_S), float(amp), float(path),
                           kind, float(travel), wall, lowpass))

    for src in scenario.sources:
        s = np.asarray(src.pos_enu, dtype=float)
        p1 = src.peak_pa_1m
        r, travel = _leg_time(s, mic, c, wind)
        spread = p1 / max(r, 1.0)
        blk = blocking.get((src.incident_id, int(node_index)))
        if blk is None:
            add(src, "direct", spread, r, travel)
        else:
            add(src, "blocked", spread * 10 ** (-blk.attenuation_db / 20), r, travel, lowpass=NLOS_LOWPASS_HZ)
            path = r + blk.detour_m
            add(src, "diffracted", p1 / max(path, 1.0) * 10 ** (-blk.diffraction_loss_db / 20), path,
                path / r * travel if r > 0 else path / c, lowpass=NLOS_LOWPASS_HZ)
        if wall_arrays is None:
            continue
        for i, point, path in _image_paths(s, mic, wall_arrays):
            _, t1 = _leg_time(s, point, c, wind)
            _, t2 = _leg_time(point, mic, c, wind)
            add(src, "echo", p1 * town.walls[i].reflection / max(path, 1.0), path, t1 + t2, wall=i)
    out.sort(key=lambda a: (a.t_arrival_utc_ns, a.source_id, a.kind, a.wall_index))
    return out


# ------------------------------------------------------------------ waveforms
def source_length_s(source: Source) -> float:
    """How long the source's waveform lasts until it has decayed below 1e-8 of its peak (s)."""
    if source.kind in ("gunshot", "fireworks"):
        return source.positive_phase_s * 24.0 / source.decay
    return source.duration_s


def _friedlander_spectrum(freq_hz: np.ndarray, t_pos_s: float, decay: float) -> np.ndarray:
    """Continuous-time FT (s) of p(t) = (1 - t/T) exp(-b t/T) for t >= 0, unit peak."""
    s = 2j * np.pi * freq_hz + decay / t_pos_s
    return 1.0 / s - 1.0 / (t_pos_s * s * s)


def _raised_cosine(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """1 below ``lo``, 0 above ``hi``, a raised-cosine step between."""
    y = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * y))


def source_waveform(source: Source, sample_rate: float) -> np.ndarray:
    """Door / dog: the unit-peak waveform sampled at ``sample_rate`` from t = 0 (smooth
    onset, band-limited well below Nyquist). Raises for impulsive kinds (those have an
    analytic spectrum, see :func:`source_spectrum`)."""
    fs = float(sample_rate)
    rng = np.random.default_rng([source.seed, 0xD06])
    n = max(8, int(round(source.duration_s * fs)))
    t = np.arange(n) / fs
    dur = n / fs
    fade = 0.5 * (1.0 - np.cos(np.pi * np.clip((dur - t) / 0.01, 0.0, 1.0)))
    if source.kind == "dog":
        f0 = rng.uniform(350.0, 650.0)
        track = f0 * (1.0 + 0.25 * np.sin(np.pi * t / dur) - 0.1 * t / dur)
        phase = 2.0 * np.pi * np.cumsum(track) / fs
        x = np.zeros(n)
        k_max = max(1, int(0.4 * fs / (1.3 * f0)))
        for k in range(1, min(10, k_max) + 1):
            x += rng.lognormal(0.0, 0.4) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        attack = 0.5 * (1.0 - np.cos(np.pi * np.clip(t / 0.012, 0.0, 1.0)))
        env = attack * np.exp(-t / (dur / 2.5)) * fade
    elif source.kind == "door":
        f1, f2 = rng.uniform(45.0, 90.0), rng.uniform(100.0, 180.0)
        x = (np.sin(2 * np.pi * f1 * t) * np.exp(-t / rng.uniform(0.05, 0.09))
             + 0.5 * np.sin(2 * np.pi * f2 * t + rng.uniform(0, 2 * np.pi)) * np.exp(-t / 0.03))
        m = min(n, 1 << int(math.ceil(math.log2(0.03 * fs))))      # the slam's click: ~30 ms
        click = rng.standard_normal(m) * np.exp(-t[:m] / 0.002)
        spec = np.fft.rfft(click) * _raised_cosine(np.fft.rfftfreq(m, 1.0 / fs), 2000.0, 4000.0)
        click = np.fft.irfft(spec, m)
        x[:m] += 0.25 * click / max(1e-12, float(np.max(np.abs(click))))
        attack = 0.5 * (1.0 - np.cos(np.pi * np.clip(t / 0.0015, 0.0, 1.0)))
        env = attack * fade
    else:
        raise ValueError(f"source kind {source.kind!r} has an analytic spectrum, not a sampled waveform")
    x = x * env
    return x / np.max(np.abs(x))


def source_spectrum(source: Source, n_fft: int, sample_rate: float) -> np.ndarray:
    """The unit-peak source waveform's continuous-time spectrum (s) on the rfft grid
    ``k * sample_rate / n_fft`` (shape ``(n_fft // 2 + 1,)``), time origin at the
    waveform's start."""
    fs = float(sample_rate)
    freq = np.arange(n_fft // 2 + 1) * (fs / n_fft)
    if source.kind in ("gunshot", "fireworks"):
        return _friedlander_spectrum(freq, source.positive_phase_s, source.decay)
    x = source_waveform(source, fs)
    if x.size > n_fft:
        raise ValueError(f"n_fft {n_fft} is shorter than the {source.kind} waveform ({x.size} samples)")
    return np.fft.rfft(x, n_fft) / fs


@dataclass(frozen=True, eq=False)
class Kernel:
    """An arrival's waveform on the frame grid: ``samples[j]`` belongs to frame
    ``start_frame + j`` (frame 0 at the scenario's start); float64, Pa."""

    start_frame: int
    samples: np.ndarray

    @property
    def end_frame(self) -> int:
        return self.start_frame + int(self.samples.shape[0])


def _split_frames(t_rel_ns: int, sample_rate: float) -> tuple[int, float]:
    """Frame position of ``t_rel_ns`` after frame 0 as (integer frame, fraction in [0, 1))."""
    fs = float(sample_rate)
    if fs.is_integer():
        num = int(t_rel_ns) * int(fs)
        whole = num // NS_PER_S
        return int(whole), (num - whole * NS_PER_S) / NS_PER_S
    pos = int(t_rel_ns) * fs / NS_PER_S
    whole = math.floor(pos)
    return int(whole), pos - whole


def kernel_fft_size(source: Source, sample_rate: float) -> int:
    """FFT length (a power of two) of the kernels of ``source``'s arrivals: room for
    the band limit's ringing before the front, the waveform, and the absorption and
    low-pass tails after it."""
    fs = float(sample_rate)
    pre = int(math.ceil(_PRE_S * fs))
    body = int(math.ceil((source_length_s(source) + _POST_S + 6.0 / NLOS_LOWPASS_HZ) * fs))
    return 1 << max(6, (pre + body).bit_length())


def minimum_phase(log_mag: np.ndarray, n_fft: int) -> np.ndarray:
    """The minimum-phase spectrum (rfft grid, ``(n_fft // 2 + 1,)`` complex) whose
    natural-log magnitude is ``log_mag`` (same grid), by folding the real cepstrum.

    The magnitude is reproduced exactly; the phase is the causal (Kramers–Kronig)
    one, up to cepstral aliasing, which is negligible for smooth ``log_mag``.
    """
    ceps = np.fft.irfft(log_mag, n_fft)
    half = n_fft // 2
    ceps[1:half] *= 2.0
    ceps[half + 1:] = 0.0
    return np.exp(np.fft.rfft(ceps, n_fft))


def absorption_response(freq_hz: np.ndarray, path_m: float, n_fft: int, *, temperature_c: float = 20.0,
                        humidity_pct: float = 50.0, phase: str = "minimum") -> np.ndarray:
    """Air absorption over ``path_m`` on the rfft grid ``freq_hz`` (``n_fft`` points).

    ``phase="minimum"``: causal, as in real air (nothing arrives before the front;
    long paths slow the front's rise). ``phase="zero"``: magnitude only (the front
    smoothed symmetrically about the arrival time). Attenuation is saturated smoothly
    at 200 dB (anything beyond is far below the output's resolution).
    """
    att_db = air_absorption_db_per_m(freq_hz, temperature_c, humidity_pct) * float(path_m)
    att_db = 200.0 * np.tanh(att_db / 200.0)
    log_mag = -att_db * (math.log(10.0) / 20.0)
    if phase == "zero":
        return np.exp(log_mag).astype(complex)
    if phase != "minimum":
        raise ValueError(f"absorption phase must be 'minimum' or 'zero', got {phase!r}")
    return minimum_phase(log_mag, n_fft)


def arrival_kernel(arrival: Arrival, source: Source, sample_rate: float, start_utc_ns: int, *,
                   temperature_c: float = 20.0, humidity_pct: float = 50.0,
                   absorption: bool = True, absorption_phase: str = "minimum",
                   source_spec: np.ndarray | None = None) -> Kernel:
    """The waveform of ``arrival`` as the mic samples it, with frame 0 at ``start_utc_ns``.

    Pressure in Pa (the renderer scales to full scale). The blast front is at the
    exact (sub-sample) arrival time. Applied in the frequency domain: air absorption
    over ``arrival.path_m`` in air at ``temperature_c`` / ``humidity_pct`` when
    ``absorption`` (see :func:`absorption_response` for ``absorption_phase``); the
    arrival's low-pass as a causal first-order filter; the microphone/ADC band limit,
    a zero-phase raised cosine from 0.40 to 0.48 × ``sample_rate``.
    ``source_spec``: ``source_spectrum(source, kernel_fft_size(source, fs), fs)``
    if already computed (saves recomputing it for every path of one source).
    """
    if arrival.source_id != source.id:
        raise ValueError(f"arrival of {arrival.source_id!r} paired with source {source.id!r}")
    fs = float(sample_rate)
    pre = int(math.ceil(_PRE_S * fs))
    n_fft = kernel_fft_size(source, fs)
    if source_spec is None:
        source_spec = source_spectrum(source, n_fft, fs)
    elif source_spec.shape != (n_fft // 2 + 1,):
        raise ValueError(f"source_spec has shape {source_spec.shape}, expected ({n_fft // 2 + 1},)")
    freq = np.arange(n_fft // 2 + 1) * (fs / n_fft)

    whole, frac = _split_frames(arrival.t_arrival_utc_ns - int(start_utc_ns), fs)
    gain = _raised_cosine(freq, 0.40 * fs, 0.48 * fs).astype(complex)
    if absorption:
        gain *= absorption_response(freq, arrival.path_m, n_fft, temperature_c=temperature_c,
                                    humidity_pct=humidity_pct, phase=absorption_phase)
    if arrival.lowpass_hz:
        gain /= 1.0 + 1j * freq / arrival.lowpass_hz
    delay = pre + frac
    spec = source_spec * gain * np.exp(-2j * np.pi * freq * (delay / fs))
    samples = np.fft.irfft(spec * (fs * arrival.amplitude), n_fft)
    return Kernel(start_frame=whole - pre, samples=samples)
