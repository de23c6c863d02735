"""One node's microphone signal, rendered on demand for any range of frames.

``NodeRenderer.render(first_frame, n)`` is a pure function of the frame range: every
arrival's waveform kernel is computed once up front and the overlapping part is added
into each chunk in a fixed order; the background noise is built from fixed, seeded,
overlapping blocks. So ``render(a, n1)`` followed by ``render(a + n1, n2)`` equals
``render(a, n1 + n2)`` bit for bit, whatever the chunking.

Full scale: sample value ±1.0 is a pressure of ``full_scale_db_spl`` (default 120 dB
SPL peak, 20 Pa). Clipped at ±1 when ``clip`` (a close gunshot clips, as on a real mic).
"""

from __future__ import annotations

import math

import numpy as np

from sim.propagation import Arrival, Kernel, arrival_kernel, arrivals, kernel_fft_size, source_spectrum
from sim.world import Scenario, Town, db_spl_to_pa

#: Pressure (dB SPL) that the sample value 1.0 stands for.
FULL_SCALE_DB_SPL = 120.0
#: Default background noise: rms −65 dBFS, i.e. 55 dB SPL at the default full scale.
DEFAULT_NOISE_DBFS = -65.0
#: Noise blocks are 2 × NOISE_HOP frames long, overlapping by half (sine windows).
NOISE_HOP = 8192
#: Kernel samples below this (full-scale units) are trimmed from the kernel's ends.
_TRIM = 1e-9


def urban_noise_shape(freq_hz: np.ndarray) -> np.ndarray:
    """Amplitude spectrum shape of the background: flat 30–200 Hz (traffic rumble),
    pink (power ∝ 1/f) above, rolled off below 30 Hz (2nd order) and above 8 kHz."""
    f = np.asarray(freq_hz, dtype=float)
    x = f / 30.0
    hp = x**2 / np.sqrt(1.0 + x**4)
    return hp / np.sqrt(1.0 + f / 200.0) / np.sqrt(1.0 + (f / 8000.0) ** 2)


class NodeRenderer:
    """What node ``node_index`` of ``town`` hears during ``scenario``.

    sample_rate: Hz. seed: the background noise's seed (per node: the node index is
    mixed in). noise_dbfs: background rms in dB re full scale (None: silent
    background). clip: clip at ±1. full_scale_db_spl: the pressure of sample value 1.0.
    air_absorption / echoes: switch those effects off (tests). absorption_phase:
    ``"minimum"`` (causal, physical) or ``"zero"`` (see
    :func:`sim.propagation.absorption_response`). c_mps: speed of sound (None: the
    scenario's true air).
    """

    def __init__(self, scenario: Scenario, town: Town, node_index: int, sample_rate: float = 48000,
                 seed: int = 0, noise_dbfs: float | None = DEFAULT_NOISE_DBFS, clip: bool = True, *,
                 full_scale_db_spl: float = FULL_SCALE_DB_SPL, air_absorption: bool = True,
                 absorption_phase: str = "minimum", echoes: bool = True,
                 c_mps: float | None = None) -> None:
        if not (math.isfinite(float(sample_rate)) and 1000.0 <= float(sample_rate) <= 1_000_000.0):
            raise ValueError(f"sample_rate must be 1 kHz..1 MHz, got {sample_rate}")
        if not 0 <= int(node_index) < town.n_nodes:
            raise ValueError(f"node_index {node_index} is out of range; this town has {town.n_nodes} nodes")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if noise_dbfs is not None and not (math.isfinite(noise_dbfs) and noise_dbfs <= 0.0):
            raise ValueError(f"noise_dbfs must be a finite level <= 0 dBFS (or None for silence), "
                             f"got {noise_dbfs}")
        self.scenario = scenario
        self.town = town
        self.node_index = int(node_index)
        self.node_id = town.node_ids[self.node_index]
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.noise_dbfs = noise_dbfs
        self.clip = bool(clip)
        self.full_scale_pa = db_spl_to_pa(full_scale_db_spl)
        self.n_frames = scenario.n_frames(self.sample_rate)
        self.start_utc_ns = scenario.start_utc_ns
        self.arrivals: tuple[Arrival, ...] = tuple(
            arrivals(scenario, town, self.node_index, c_mps, echoes=echoes))

        by_id = {s.id: s for s in scenario.sources}
        spectra: dict[str, np.ndarray] = {}
        kernels: list[Kernel] = []
        for arr in self.arrivals:
            src = by_id[arr.source_id]
            if src.id not in spectra:
                n_fft = kernel_fft_size(src, self.sample_rate)
                spectra[src.id] = source_spectrum(src, n_fft, self.sample_rate)
            k = arrival_kernel(arr, src, self.sample_rate, scenario.start_utc_ns,
                               temperature_c=scenario.temperature_c, humidity_pct=scenario.humidity_pct,
                               absorption=air_absorption, absorption_phase=absorption_phase,
                               source_spec=spectra[src.id])
            x = k.samples / self.full_scale_pa
            big = np.flatnonzero(np.abs(x) > _TRIM)
            if big.size == 0:
                continue
            x = np.ascontiguousarray(x[big[0]:big[-1] + 1])
            x.flags.writeable = False
            kernels.append(Kernel(start_frame=k.start_frame + int(big[0]), samples=x))
        kernels.sort(key=lambda k: k.start_frame)        # stable: ties keep arrival order
        self._kernels = tuple(kernels)
        self._starts = np.array([k.start_frame for k in kernels], dtype=np.int64)
        self._max_len = max((k.samples.size for k in kernels), default=0)

        self._noise_len = 2 * NOISE_HOP
        if noise_dbfs is None:
            self._noise_scale = None
        else:
            freq = np.fft.rfftfreq(self._noise_len, 1.0 / self.sample_rate)
            shape = urban_noise_shape(freq)
            shape[0] = shape[-1] = 0.0
            # irfft of bins with independent re, im ~ U(-1/2, 1/2) (variance 1/12) times
            # shape has variance 4 Σ shape² / (12 L²); a sum of thousands of bins, so Gaussian.
            rms_per_unit = math.sqrt(4.0 * float(np.sum(shape**2)) / 12.0) / self._noise_len
            self._noise_shape = (shape * (10.0 ** (noise_dbfs / 20.0) / rms_per_unit)).astype(np.float32)
            self._noise_scale = 10.0 ** (noise_dbfs / 20.0)
            j = np.arange(self._noise_len)
            self._noise_window = np.sin(np.pi * (j + 0.5) / self._noise_len).astype(np.float32)
        self._noise_cache: dict[int, np.ndarray] = {}

    @property
    def kernels(self) -> tuple[Kernel, ...]:
        """The precomputed arrival kernels (full-scale units), sorted by start frame."""
        return self._kernels

    def _noise_block(self, b: int) -> np.ndarray:
        """Windowed noise block ``b``, covering frames [(b - 1)·HOP, (b + 1)·HOP)."""
        cached = self._noise_cache.get(b)
        if cached is not None:
            return cached
        rng = np.random.default_rng([self.seed, self.node_index, b, 0x4015E])
        m = self._noise_shape.size
        u = rng.random(2 * m, dtype=np.float32)
        u -= np.float32(0.5)
        spec = u.view(np.complex64) * self._noise_shape
        block = np.fft.irfft(spec, self._noise_len) * self._noise_window
        if len(self._noise_cache) >= 4:
            self._noise_cache.pop(min(self._noise_cache))
        self._noise_cache[b] = block
        return block

    def _noise(self, first_frame: int, n: int) -> np.ndarray:
        out = np.zeros(n)
        hop = NOISE_HOP
        end = first_frame + n
        for b in range(first_frame // hop, (end - 1) // hop + 2):     # ascending: fixed order
            lo = (b - 1) * hop
            a, e = max(lo, first_frame), min(lo + 2 * hop, end)
            if a < e:
                out[a - first_frame:e - first_frame] += self._noise_block(b)[a - lo:e - lo]
        return out

    def render(self, first_frame: int, n: int) -> np.ndarray:
        """The mic signal for frames [first_frame, first_frame + n): (n,) float32, full scale ±1.

        Frame 0 is at ``scenario.start_utc_ns``. Frames past the scenario's end hold
        background noise (and the tails of late arrivals).
        """
        if isinstance(first_frame, bool) or not isinstance(first_frame, (int, np.integer)):
            raise TypeError(f"first_frame must be an integer frame index, got {first_frame!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an integer number of frames, got {n!r}")
        first_frame, n = int(first_frame), int(n)
        if first_frame < 0 or n < 0:
            raise ValueError(f"need first_frame >= 0 and n >= 0, got first_frame={first_frame}, n={n}")
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        end = first_frame + n
        out = np.zeros(n)
        lo = int(np.searchsorted(self._starts, first_frame - self._max_len + 1, side="left"))
        hi = int(np.searchsorted(self._starts, end, side="left"))
        for k in self._kernels[lo:hi]:
            a, e = max(k.start_frame, first_frame), min(k.end_frame, end)
            if a < e:
                out[a - first_frame:e - first_frame] += k.samples[a - k.start_frame:e - k.start_frame]
        if self._noise_scale is not None:
            out = out + self._noise(first_frame, n)
        if self.clip:
            np.clip(out, -1.0, 1.0, out=out)
        return out.astype(np.float32)

    def render_all(self) -> np.ndarray:
        """The whole scenario: ``render(0, n_frames)``."""
        return self.render(0, self.n_frames)
