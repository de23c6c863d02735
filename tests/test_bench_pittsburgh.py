"""The Pittsburgh benchmark's ceilings built from the labels: survey-based
sensor corrections (the ``corrected`` mode) and a perfect detector (the
``labels`` mode), on the real data (skipped when it is absent)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.bench_pittsburgh import corrected_test, labelled_test, picked_counts, station_corrections
from conftest import shared_data
from server.import_shotspotter import load_test


def _tests(fp: str, names: list[str]):
    return [load_test(shared_data("pittsburgh", "PittsburghPA_DQV_2018-12-18", fp, n)) for n in names]


def _shift_labels(t, node_id: str, shift_ns: int):
    """``t`` with every labelled arrival at ``node_id`` ``shift_ns`` later."""
    shots = tuple(dataclasses.replace(s, t_arrival_ns=np.array([a + shift_ns if n == node_id else a
                                                                for n, a in zip(s.node_ids, s.t_arrival_ns)]))
                  for s in t.shots)
    return dataclasses.replace(t, shots=shots)


def test_a_sensor_late_in_every_round_gets_exactly_that_bias():
    tests = _tests("FP6", ["test_109", "test_110", "test_111"])
    base = station_corrections(tests)
    wav_ids = [n.id for n in tests[0].recording_set.nodes if n.wav is not None]
    late = wav_ids[0]
    shifted = station_corrections([_shift_labels(t, late, 30_000_000) for t in tests])
    assert shifted.keys() == base.keys()
    assert shifted[("FP6", late)] - base[("FP6", late)] == pytest.approx(0.030, abs=1e-9)
    assert all(shifted[k] == base[k] for k in base if k != ("FP6", late))
    # per sensor, the biases are a few ms to tens of ms, not seconds (a wrong frame would show)
    assert max(abs(v) for v in base.values()) < 0.1


def test_corrected_test_moves_only_the_wav_clocks_by_their_bias():
    (t,) = _tests("FP6", ["test_109"])
    corr = {k: 0.0125 for k in station_corrections([t])}
    c = corrected_test(t, corr)
    for before, after in zip(t.recording_set.nodes, c.recording_set.nodes):
        if before.wav is None:
            assert after == before
        else:
            assert before.start_utc_ns - after.start_utc_ns == 12_500_000
            assert dataclasses.replace(after, start_utc_ns=before.start_utc_ns) == before
    assert c.recording_set.truth == t.recording_set.truth and c.shots == t.shots


def test_picked_counts_counts_wav_sensors_with_an_onset_near_the_label():
    (t,) = _tests("FP6", ["test_109"])
    wav = {n.id for n in t.recording_set.nodes if n.wav is not None}
    s0, s1 = t.shots[0], t.shots[1]
    events = [SimpleNamespace(node_id=n, t_utc_ns=int(a) + 3_000_000) for n, a in zip(s0.node_ids, s0.t_arrival_ns)]
    events += [SimpleNamespace(node_id=n, t_utc_ns=int(a) - 7_000_000) for n, a in zip(s1.node_ids, s1.t_arrival_ns)]
    counts = picked_counts(t, events)
    assert len(counts) == len(t.shots)
    assert counts[0] == sum(1 for n in s0.node_ids if n in wav) >= 4   # picks-only sensors do not count
    assert counts[1] == 0                                              # 7 ms off is not a pick of it


def test_labelled_test_keeps_the_wav_sensors_and_their_labelled_arrivals_only():
    """The perfect-detector set: the WAV sensors as picks-only nodes, and as
    arrivals exactly ShotSpotter's labelled pulses at them — per round, one per
    labelled WAV sensor — and the truth names only those."""
    (t,) = _tests("FP1", ["test_002"])
    lt = labelled_test(t)
    rs, lrs = t.recording_set, lt.recording_set
    wav = {n.id for n in rs.nodes if n.wav is not None}
    assert {n.id for n in lrs.nodes} == wav and all(n.wav is None for n in lrs.nodes)
    assert len(rs.arrivals) > 3 * len(lrs.arrivals) > 0         # the echoes and other sounds are gone
    by_id = {a.id: a for a in lrs.arrivals}
    for shot, ls in zip(t.shots, lrs.truth):
        assert sorted(by_id[i].node for i in ls.arrival_ids) == sorted(n for n in shot.node_ids if n in wav)
    assert {i for s in lrs.truth for i in s.arrival_ids} == set(by_id)


def test_the_benchmark_detects_with_a_node_configs_detector_settings(tmp_path, capsys):
    """``--node-config``: audio mode detects with that file's [detector]
    settings (here a trigger no gunshot reaches: nothing is located where the
    defaults locate the rounds); a broken file is an error naming the key."""
    from benchmarks.bench_pittsburgh import main

    deaf = tmp_path / "deaf.toml"
    deaf.write_text('[node]\nid = "bench"\n\n[detector]\ntrigger_ratio = 1e9\nrelease_ratio = 3.0\n')
    argv = ["--data", str(shared_data("pittsburgh")), "--fp", "FP6", "--modes", "audio", "--model-sigma-ms", "7",
            "--jobs", "1"]

    def located(out: str) -> int:      # the "all" row of the first table: group tests fired located ...
        return int([line for line in out.splitlines() if line.strip().startswith("all ")][0].split()[3])

    assert main(argv) == 0
    assert located(capsys.readouterr().out) > 0
    assert main(argv + ["--node-config", str(deaf)]) == 0
    out = capsys.readouterr().out
    assert f"detector settings of {deaf}" in out and located(out) == 0
    broken = tmp_path / "broken.toml"
    broken.write_text('[node]\nid = "bench"\n\n[detector]\ntrigger_ratio = "high"\n')
    assert main(argv + ["--node-config", str(broken)]) == 2
    assert "detector.trigger_ratio" in capsys.readouterr().err
    assert main(argv + ["--max-chance", "inf"]) == 2
    assert "--max-chance inf: must be a finite number > 0" in capsys.readouterr().err
