"""Scoring a simulation: the alert latency of each located round."""

from __future__ import annotations

import numpy as np

from sim.report import alert_latencies_s, score

T0 = 1_800_000_000_000_000_000


def test_alert_latency_is_publication_minus_firing_on_the_worlds_clock():
    truth_t = np.array([T0 + 2_000_000_000, T0 + 5_000_000_000, T0 + 9_000_000_000])
    truth_xy = np.array([[0.0, 0.0], [300.0, 0.0], [0.0, 300.0]])
    # estimates in time order: the first and last rounds (the second was missed), and a false one
    est_t = np.array([T0 + 2_000_100_000, T0 + 7_000_000_000, T0 + 9_000_050_000])
    est_xy = np.array([[1.0, 0.0], [900.0, 900.0], [0.0, 301.0]])
    sc = score(truth_t, truth_xy, est_t, est_xy)
    assert sc.located == 2 and sc.false_shots == 1
    start_mono = 5_000_000_000            # frame 0 (UTC T0) was due then on the monotonic clock
    published = [start_mono + 12_500_000_000, start_mono + 13_000_000_000, start_mono + 18_250_000_000]
    lat = alert_latencies_s(sc, truth_t, published, T0, start_mono)
    # fired at start_mono + 2 s and + 9 s; published at + 12.5 s and + 18.25 s
    assert lat == (10.5, 9.25)
    # in the order of the matches, located rounds only
    assert [m.truth_index for m in sc.matches if m.estimate_index is not None] == [0, 2]
