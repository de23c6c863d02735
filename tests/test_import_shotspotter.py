"""ShotSpotter Pittsburgh importer, on the real data (skipped when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.recording_set import load_set
from common.timefmt import NS_PER_S, iso_to_ns
from server.import_shotspotter import (
    NOMINAL_FRAME,
    ShotSpotterError,
    estimate_emission_ns,
    find_tests,
    load_test,
    main,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pittsburgh"
ROOT = DATA / "PittsburghPA_DQV_2018-12-18"


def _test_dir(fp: str, name: str) -> Path:
    d = ROOT / fp / name
    if not d.is_dir():
        pytest.skip(f"shared Pittsburgh data not found at {d} (see ../shared/data/README.md)")
    return d


def _enu(node):
    return NOMINAL_FRAME.to_enu(node.lat, node.lon, node.alt)


def test_estimate_emission_exact_on_synthetic_arrivals():
    rng = np.random.default_rng(1)
    src = np.array([10.0, -20.0, 5.0])
    rx = rng.uniform(-800, 800, size=(9, 3))
    rx[:, 2] = src[2]                                  # horizontal geometry: the estimate uses 2-D distance
    t0 = 1_545_180_568_000_000_000
    c = 331.3
    t = t0 + np.round(np.linalg.norm(rx - src, axis=1) / c * NS_PER_S).astype(np.int64)
    est, mad = estimate_emission_ns(src, rx, t, c)
    assert abs(est - t0) < 10                           # ns
    assert mad < 1e-8
    with pytest.raises(ValueError):
        estimate_emission_ns(src, rx[:0], t[:0], c)


def test_picks_mode_fp1_test_001():
    d = _test_dir("FP1", "test_001")
    t = load_test(d, mode="picks")
    rs = t.recording_set
    pulses = json.loads((d / "test_001.allpulses.json").read_text())
    assert (t.firing_position, t.name, t.num_rounds) == ("FP1", "test_001", 3)
    assert len(rs.arrivals) == len(pulses) == 158
    assert len(rs.nodes) == len({p["serial_number"] for p in pulses}) == 27
    assert all(n.wav is None for n in rs.nodes)
    assert rs.temperature_c is None and rs.wind is None        # 0 °C with zero wind = unknown
    assert t.c_source == "fitted" and 325 < t.c_mps < 340
    times = [a.t_utc_ns for a in rs.arrivals]
    assert times == sorted(times)
    assert rs.arrivals[0].t_utc_ns == iso_to_ns("2018-12-19T00:49:27.467Z")
    # Node positions map back to the data's x/y/z (allpulses median) through the nominal frame.
    n = rs.node("SCP-00-BNG-5028")
    assert np.allclose(_enu(n), [-11784.3014, 3135.6358, -102.0375], atol=0.02)
    # Truth: three timed shots at the survey point, in firing order, with their labelled ids.
    assert [s.rounds for s in rs.truth] == [1, 1, 1]
    assert np.allclose(NOMINAL_FRAME.to_enu(rs.truth[0].lat, rs.truth[0].lon, rs.truth[0].alt),
                       [-11450.2046, 3653.5160, -92.8581], atol=1e-3)
    em = [s.t_utc_ns for s in rs.truth]
    assert em[0] < em[1] < em[2]
    assert iso_to_ns("2018-12-19T00:49:27Z") < em[0] < iso_to_ns("2018-12-19T00:49:36Z")
    assert len(rs.truth[0].arrival_ids) == 20
    for shot in t.shots:
        assert shot.emission_mad_s < 0.02                       # survey + picks agree to ~10 ms
        assert len(set(shot.node_ids)) == len(shot.node_ids)


def test_audio_mode_prefers_allpulses_position():
    d = _test_dir("FP1", "test_001")
    rs = load_test(d, mode="audio").recording_set
    assert len(rs.nodes) == 6 and rs.arrivals == ()
    for n in rs.nodes:
        assert n.wav is not None and n.wav.is_file() and n.wav.parent == d.absolute()
        assert n.start_utc_ns == iso_to_ns("2018-12-19T00:49:26.000Z")
    assert all(s.arrival_ids == () for s in rs.truth)
    # BNQ-0979: audio .json fix (-11246.88, 3584.26) vs allpulses (-11251.52, 3583.79): allpulses wins.
    e = _enu(rs.node("SCP-00-BNQ-0979"))
    assert abs(e[0] - (-11251.52)) < 0.1 and abs(e[1] - 3583.79) < 0.1


def test_audio_only_sensor_falls_back_to_its_audio_fix():
    d = _test_dir("FP1", "test_003")
    rs = load_test(d, mode="both").recording_set
    n = rs.node("SCP-00-BNQ-1582")                              # has audio but no pulse in this test
    meta = json.loads((d / "test_003.audio.SCP-00-BNQ-1582.json").read_text())["location"]
    assert np.allclose(_enu(n), [meta["x"], meta["y"], meta["z"]], atol=0.01)
    assert n.position_sigma_m is None and n.wav is not None
    assert all(a.node != n.id for a in rs.arrivals)


def test_unlabelled_rounds_and_duplicates():
    t = load_test(_test_dir("FP4", "test_055"), mode="picks")
    assert [s.shot_index for s in t.shots] == [1, 2]
    assert [(s.rounds, s.t_utc_ns is None) for s in t.recording_set.truth] == [(1, False), (1, False), (1, True)]
    assert t.recording_set.rounds_fired == 3
    assert t.recording_set.wind is not None and t.recording_set.temperature_c == -1.0

    t = load_test(_test_dir("FP6", "test_121"), mode="picks")
    pulses = json.loads((t.test_dir / "test_121.allpulses.json").read_text())
    assert t.duplicate_pulse_records == 1
    assert len(t.recording_set.arrivals) == len(pulses) - 1

    t = load_test(_test_dir("FP1", "test_008"), mode="picks")
    assert len(t.missing_pulse_ids) == 9


def test_main_writes_loadable_sets(tmp_path, capsys):
    d = _test_dir("FP2", "test_019")
    assert main([str(d), str(tmp_path), "--mode", "both"]) == 0
    rs = load_set(tmp_path / "FP2" / "test_019")
    mem = load_test(d, mode="both").recording_set
    assert rs.nodes == mem.nodes and rs.arrivals == mem.arrivals and rs.truth == mem.truth
    wavs = [n.wav for n in rs.nodes if n.wav is not None]
    assert len(wavs) == 6 and all(w.is_file() and d.absolute() in w.parents for w in wavs)
    assert "wrote 1 recording sets" in capsys.readouterr().out


def test_main_reports_bad_input(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no test_NNN" in capsys.readouterr().err
    with pytest.raises(ShotSpotterError, match="missing"):
        load_test(tmp_path)


def test_find_tests_covers_all_firing_positions():
    if not ROOT.is_dir():
        pytest.skip(f"shared Pittsburgh data not found at {ROOT}")
    tests = find_tests(DATA)
    assert len(tests) == 108
    assert sorted({p.parent.name for p in tests}) == ["FP1", "FP2", "FP3", "FP4", "FP5", "FP6"]
