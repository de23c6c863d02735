"""Propagation, per-node rendering and the simulated audio source (sim/)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.geodesy import LocalFrame
from node.audio import AudioSource, EndOfStream
from sim.adapters import SimAudioSource
from sim.propagation import arrival_kernel, arrivals, image_paths
from sim.render import NodeRenderer
from sim.world import DEFAULT_ORIGIN, DEFAULT_START_UTC_NS, Blocking, Scenario, Source, Town, Wall, \
    make_scenario, make_town

FS = 48_000
FRAME = LocalFrame(*DEFAULT_ORIGIN)
T0 = DEFAULT_START_UTC_NS


def one_node_town(walls=()) -> Town:
    return Town(FRAME, ("n1",), np.array([[0.0, 0.0, 5.0]]), tuple(walls))


def shot(pos, t_emit_ns=T0 + 123_456_789, level=150.0, sid="g", incident="g") -> Source:
    return Source(sid, "gunshot", t_emit_ns, pos, level, incident_id=incident,
                  positive_phase_s=1e-3, decay=1.0)


def expected_frame(arrival) -> float:
    return (arrival.t_arrival_utc_ns - T0) * FS / 1e9


def crossing(x: np.ndarray, around: float, level: float, up: int = 64) -> float:
    """Fractional frame where the front first reaches ``level`` × its peak (band-limited upsampling)."""
    i0 = int(around)
    lo = i0 - 300
    seg = x[lo:i0 + 2700].astype(float)          # starts and ends near zero: FFT-interpolate it
    y = np.fft.irfft(np.fft.rfft(seg), seg.size * up) * up
    pk = int(np.argmax(y))
    j = pk
    while y[j] > level * y[pk]:
        j -= 1
    return lo + (j + (level * y[pk] - y[j]) / (y[j + 1] - y[j])) / up


@pytest.fixture(scope="module")
def world():
    town = make_town(seed=0)
    return town, make_scenario(town, seed=0)


# ------------------------------------------------------------------ timing and amplitude
@pytest.mark.parametrize("dist", [47.0, 100.0 + 343.0 / FS * 0.37, 250.123, 731.77])
def test_direct_onset_is_at_the_exact_time(dist):
    sc = Scenario((shot((dist, 0.0, 5.0)),), T0, 3.0)
    r = NodeRenderer(sc, one_node_town(), 0, noise_dbfs=None, clip=False, air_absorption=False)
    (a,) = r.arrivals
    assert a.kind == "direct" and a.path_m == pytest.approx(dist)
    assert a.t_arrival_utc_ns == T0 + 123_456_789 + round(dist / sc.c_mps * 1e9)
    x = r.render_all()
    t = expected_frame(a)
    # The band-limited step front crosses half its height at the true time (a hair
    # late because the Friedlander decays right after the front).
    assert crossing(x, t, 0.5) == pytest.approx(t, abs=0.06)
    assert np.max(np.abs(x[: int(t) - 40])) < 1e-4 * np.max(x)


@pytest.mark.parametrize("dist", [30.0, 250.0, 731.77])
def test_absorption_is_causal_and_low_passes(dist):
    sc = Scenario((shot((dist, 0.0, 5.0)),), T0, 4.0)
    r = NodeRenderer(sc, one_node_town(), 0, noise_dbfs=None, clip=False)
    flat = NodeRenderer(sc, one_node_town(), 0, noise_dbfs=None, clip=False, air_absorption=False)
    t = expected_frame(r.arrivals[0])
    x, y = r.render_all(), flat.render_all()
    assert crossing(x, t, 0.1) > t - 0.5          # nothing arrives early...
    assert crossing(x, t, 0.5) < t + 20.0         # ...and the front is only slowed a little
    assert np.max(x) < np.max(y)                  # highs lost: a lower, rounder peak
    assert np.sum(x[: int(t) - 3].astype(float) ** 2) < 1e-4 * np.sum(x.astype(float) ** 2)


def test_spherical_spreading():
    near = Scenario((shot((80.0, 0.0, 5.0)),), T0, 3.0)
    far = Scenario((shot((80.0 * 2.5 + 0.0123, 0.0, 5.0)),), T0, 3.0)
    rn = NodeRenderer(near, one_node_town(), 0, noise_dbfs=None, clip=False, air_absorption=False)
    rf = NodeRenderer(far, one_node_town(), 0, noise_dbfs=None, clip=False, air_absorption=False)
    an, af = rn.arrivals[0], rf.arrivals[0]
    assert an.amplitude / af.amplitude == pytest.approx(af.path_m / an.path_m, rel=1e-12)
    assert an.amplitude == pytest.approx(20e-6 * 10 ** (150 / 20) / 80.0)
    # Energy of a band-limited pulse does not depend on its sub-sample position.
    en = np.sum(rn.render_all().astype(float) ** 2)
    ef = np.sum(rf.render_all().astype(float) ** 2)
    assert np.sqrt(en / ef) == pytest.approx(af.path_m / an.path_m, rel=1e-4)


def test_wind_advects_sound():
    east = Scenario((shot((300.0, 0.0, 5.0)),), T0, 3.0, wind_mps=(10.0, 0.0, 0.0))
    (a,) = arrivals(east, one_node_town(), 0)
    assert a.travel_s == pytest.approx(300.0 / (east.c_mps - 10.0), rel=1e-12)   # upwind: slower
    (b,) = arrivals(east, one_node_town(), 0, c_mps=340.0)
    assert b.travel_s == pytest.approx(300.0 / 330.0, rel=1e-12)


# ------------------------------------------------------------------ echoes
def test_echo_appears_only_when_the_geometry_allows():
    src, mic = np.array([100.0, 20.0, 1.5]), np.array([0.0, 0.0, 5.0])
    # Facade along y = 40 facing south (its right-hand side): walk east from (-100, 40).
    wall = Wall((-100.0, 40.0), (200.0, 40.0), 20.0, 0.6)
    image = np.array([100.0, 60.0, 1.5])
    hits = image_paths(src, mic, [wall])
    assert len(hits) == 1
    i, point, path = hits[0]
    assert path == pytest.approx(np.linalg.norm(mic - image))
    assert point[1] == pytest.approx(40.0)
    # Segment too short to hold the reflection point (x of the point is ~ 66.7 m).
    assert image_paths(src, mic, [Wall((80.0, 40.0), (200.0, 40.0), 20.0, 0.6)]) == []
    assert len(image_paths(src, mic, [Wall((60.0, 40.0), (200.0, 40.0), 20.0, 0.6)])) == 1
    # Too low: the reflection point is at z = 1.5 + (5 - 1.5) * 20 / 60 ≈ 2.67 m.
    assert image_paths(src, mic, [Wall((-100.0, 40.0), (200.0, 40.0), 2.5, 0.6)]) == []
    assert len(image_paths(src, mic, [Wall((-100.0, 40.0), (200.0, 40.0), 2.8, 0.6)])) == 1
    # Facing the other way (its back to the source and the mic): no echo...
    assert image_paths(src, mic, [Wall((200.0, 40.0), (-100.0, 40.0), 20.0, 0.6)]) == []
    # ...unless two-sided.
    assert len(image_paths(src, mic, [Wall((200.0, 40.0), (-100.0, 40.0), 20.0, 0.6, two_sided=True)])) == 1
    # Source and mic on opposite sides of the wall: never.
    assert image_paths(np.array([100.0, 50.0, 1.5]), mic, [wall]) == []

    sc = Scenario((shot(tuple(src)),), T0, 3.0)
    town = one_node_town([wall])
    arr = arrivals(sc, town, 0)
    assert [a.kind for a in arr] == ["direct", "echo"]
    direct, echo = arr
    assert echo.amplitude == pytest.approx(direct.amplitude * 0.6 * direct.path_m / echo.path_m)
    assert echo.t_arrival_utc_ns - direct.t_arrival_utc_ns == pytest.approx(
        (echo.path_m - direct.path_m) / sc.c_mps * 1e9, abs=2)
    # Rendered: a second front at the echo's time, only with echoes on.
    on = NodeRenderer(sc, town, 0, noise_dbfs=None, clip=False).render_all()
    off = NodeRenderer(sc, town, 0, noise_dbfs=None, clip=False, echoes=False).render_all()
    te = int(expected_frame(echo))
    assert np.max(np.abs(on[te - 10:te + 40] - off[te - 10:te + 40])) > 0.3 * np.max(np.abs(on[te:te + 40]))
    assert np.array_equal(on[: te - 200], off[: te - 200])


def test_default_world_has_echoes(world):
    town, sc = world
    kinds = [a.kind for n in range(town.n_nodes) for a in arrivals(sc, town, n)]
    assert kinds.count("echo") >= 10
    assert kinds.count("blocked") == 0


def test_blocked_path_lets_a_later_path_dominate():
    src = shot((200.0, 0.0, 1.5), incident="g")
    sc = Scenario((src,), T0, 3.0, blocked=(Blocking("g", 0, 25.0, 12.0, 8.0),))
    arr = arrivals(sc, one_node_town(), 0)
    assert [a.kind for a in arr] == ["blocked", "diffracted"]
    blocked, diffracted = arr
    free = 20e-6 * 10 ** (150 / 20) / blocked.path_m
    assert blocked.amplitude == pytest.approx(free * 10 ** (-25 / 20))
    assert diffracted.path_m == pytest.approx(blocked.path_m + 12.0)
    assert diffracted.amplitude > 5.0 * blocked.amplitude
    assert diffracted.t_arrival_utc_ns > blocked.t_arrival_utc_ns


# ------------------------------------------------------------------ rendering
def test_chunks_are_bitwise_identical(world):
    town, sc = world
    r = NodeRenderer(sc, town, 2, seed=3)
    k = r.kernels[0]
    a = k.start_frame - 5000
    whole = r.render(a, 40_000)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.integers(1, 39_999), max_size=8, unique=True))
    def check(cuts):
        edges = [0, *sorted(cuts), 40_000]
        parts = [r.render(a + lo, hi - lo) for lo, hi in zip(edges, edges[1:])]
        assert np.array_equal(np.concatenate(parts), whole)

    check()
    # A fresh renderer (empty caches) agrees too.
    fresh = NodeRenderer(sc, town, 2, seed=3)
    assert np.array_equal(fresh.render(a + 12_345, 7_000), whole[12_345:19_345])


def test_render_is_deterministic_per_seed(world):
    town, sc = world
    a = NodeRenderer(sc, town, 1, seed=5).render(0, 96_000)
    assert a.dtype == np.float32 and a.shape == (96_000,)
    assert np.array_equal(a, NodeRenderer(sc, town, 1, seed=5).render(0, 96_000))
    assert not np.array_equal(a, NodeRenderer(sc, town, 1, seed=6).render(0, 96_000))
    other = NodeRenderer(sc, town, 2, seed=5).render(0, 96_000)
    assert abs(np.corrcoef(a, other)[0, 1]) < 0.05      # nodes' noise is independent


def test_noise_level_and_spectrum():
    empty = Scenario((), T0, 12.0)
    x = NodeRenderer(empty, one_node_town(), 0, noise_dbfs=-60.0).render(0, 10 * FS).astype(float)
    assert 20 * np.log10(np.sqrt(np.mean(x**2))) == pytest.approx(-60.0, abs=0.3)
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / FS)
    band = lambda lo, hi: spec[(f >= lo) & (f < hi)].mean()   # noqa: E731
    assert band(400, 800) > 3 * band(3200, 6400)             # pinkish: falls with frequency
    assert band(30, 200) > band(400, 800)
    # Stationary: no seams at the noise blocks' edges (rms per 1/8 s stays flat).
    rms = np.sqrt(np.mean(x.reshape(-1, FS // 8) ** 2, axis=1))
    assert rms.max() / rms.min() < 1.6


def test_local_sounds_are_heard_only_by_their_node(world):
    town, sc = world
    noise_rms = 10 ** (-65 / 20)
    for s in (s for s in sc.sources if s.kind in ("door", "dog")):
        alone = dataclasses.replace(sc, sources=(s,), truth=())
        for n in range(town.n_nodes):
            r = NodeRenderer(alone, town, n, noise_dbfs=None, clip=False)
            first = min(k.start_frame for k in r.kernels)
            last = max(k.end_frame for k in r.kernels)
            peak = np.max(np.abs(r.render(first, last - first)))
            if n == s.near_node:
                assert peak > 5.0 * noise_rms, s.id
            else:
                assert peak < noise_rms, (s.id, n)


def test_gunshots_are_loud_and_close_ones_clip(world):
    town, sc = world
    g = next(s for s in sc.sources if s.kind == "gunshot")
    close = Scenario((dataclasses.replace(g, pos_enu=(20.0, 0.0, 1.5), t_emit_utc_ns=T0 + 10**8),), T0, 1.0)
    clipped = NodeRenderer(close, one_node_town(), 0).render_all()
    assert np.max(np.abs(clipped)) == 1.0
    raw = NodeRenderer(close, one_node_town(), 0, clip=False).render_all()
    assert np.max(np.abs(raw)) > 1.5
    # Every node hears every gunshot well above the noise (direct path, 5× the noise rms).
    noise_rms = 10 ** (-65 / 20)
    guns = dataclasses.replace(sc, sources=tuple(s for s in sc.sources if s.kind == "gunshot"))
    for n in range(town.n_nodes):
        r = NodeRenderer(guns, town, n, noise_dbfs=None)
        for a in r.arrivals:
            if a.kind == "direct" and sc.source(a.source_id).kind == "gunshot":
                t = int(expected_frame(a))
                assert np.max(np.abs(r.render(t - 10, 200))) > 5 * noise_rms


def test_kernel_holds_the_whole_waveform():
    sc = Scenario((shot((1500.0, 0.0, 1.5)),), T0, 8.0)
    (a,) = arrivals(sc, one_node_town(), 0)
    k = arrival_kernel(a, sc.sources[0], FS, T0)
    peak = np.max(np.abs(k.samples))
    assert np.max(np.abs(k.samples[:20])) < 1e-6 * peak       # no wrap-around at the start
    assert np.max(np.abs(k.samples[-20:])) < 1e-6 * peak      # and the tail has died out


def test_renderer_rejects_bad_input(world):
    town, sc = world
    with pytest.raises(ValueError, match="node_index"):
        NodeRenderer(sc, town, 8)
    r = NodeRenderer(sc, town, 0, noise_dbfs=None)
    with pytest.raises(ValueError, match="first_frame"):
        r.render(-1, 10)
    with pytest.raises(TypeError, match="integer"):
        r.render(0.5, 10)
    assert r.render(10, 0).shape == (0,)


# ------------------------------------------------------------------ the adapter
def test_sim_audio_source_delivers_contiguous_blocks_then_ends(world):
    town, sc = world
    r = NodeRenderer(sc, town, 0)
    src = SimAudioSource(r, duration_s=1.05, blocksize=4800)
    assert isinstance(src, AudioSource)
    assert src.sample_rate == FS and src.channels == 1
    with pytest.raises(RuntimeError, match="start"):
        src.read(0.1)
    src.start()
    blocks = []
    with pytest.raises(EndOfStream):
        while True:
            blocks.append(src.read(0.1))
    assert [b.first_frame for b in blocks] == [i * 4800 for i in range(11)]
    assert [b.frames for b in blocks] == [4800] * 10 + [2400]
    for b in blocks:
        assert b.samples.shape == (b.frames, 1) and b.samples.dtype == np.float32
        assert b.adc_time_s is None and b.mono_ns == 0 and b.wall_ns == 0 and not b.overflow
    audio = np.concatenate([b.samples[:, 0] for b in blocks])
    assert np.array_equal(audio, r.render(0, 50_400))
    st_ = src.stats()
    assert st_["xruns"] == 0 and st_["dropped_blocks"] == 0 and st_["frames"] == 50_400
    src.stop()
    src.stop()
    with pytest.raises(EndOfStream):
        src.read(0.1)


def test_sim_audio_source_default_duration_is_the_scenario(world):
    town, sc = world
    src = SimAudioSource(NodeRenderer(sc, town, 0, noise_dbfs=None))
    assert src.total_frames == round(sc.duration_s * FS)


def test_sim_audio_source_realtime_pacing():
    sc = Scenario((), T0, 1.0)
    src = SimAudioSource(NodeRenderer(sc, one_node_town(), 0), duration_s=0.3, blocksize=4800, realtime=True)
    assert src.started_mono_ns is None
    before = time.monotonic_ns()
    src.start()
    t0 = time.monotonic()
    # frame 0 was due at start: the world's clock for latencies (sim.launcher)
    assert before <= src.started_mono_ns <= time.monotonic_ns()
    assert src.read(0.0) is None                  # the first block is not due yet
    blocks = []
    while True:
        try:
            b = src.read(1.0)
        except EndOfStream:
            break
        if b is not None:
            blocks.append(b)
    elapsed = time.monotonic() - t0
    assert len(blocks) == 3
    assert elapsed >= 0.29
    assert all(b.mono_ns > 0 and b.wall_ns > 0 for b in blocks)
    gaps = np.diff([b.mono_ns for b in blocks]) / 1e9
    assert np.all(gaps > 0.05)
