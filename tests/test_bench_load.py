"""The load benchmark's scoring of published shots against its fireworks: the
project's rules (benchmarks/scoring.py), not a looser window matched greedily."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_load import FRAME, score_fireworks

T0 = 1_800_000_000_000_000_000


def shot(x: float, y: float, t_ns: int) -> dict:
    lat, lon, alt = FRAME.to_wgs84(np.array([x, y, 10.0]))
    return {"lat": float(lat), "lon": float(lon), "alt": float(alt), "time": t_ns / 1e9, "error_m": 3.0}


def test_fireworks_are_matched_optimally_within_0_1_s_and_the_rest_is_false_or_extra():
    fireworks = [{"t_ns": T0, "src": np.array([0.0, 0.0, 10.0]), "n": 8},
                 {"t_ns": T0 + 120_000_000, "src": np.array([0.0, 0.0, 10.0]), "n": 8},
                 {"t_ns": T0 + 3_000_000_000, "src": np.array([600.0, 0.0, 10.0]), "n": 8}]
    shots = [shot(1.0, 0.0, T0 + 50_000_000),         # closest to the first in time, but needed for the second
             shot(2.0, 0.0, T0 - 90_000_000),         # only the first is within 0.1 s
             shot(0.0, 60.0, T0 + 500_000_000),       # 60 m off, when nothing was fired: extra, not false
             shot(600.0, 0.0, T0 + 3_150_000_000),    # the third firework's place, 0.15 s late: extra
             shot(600.0, 150.0, T0 + 3_000_000_000)]  # 150 m from every firework: false
    sc = score_fireworks(shots, fireworks)
    assert sc.rounds_fired == 3 and sc.located_total == 5
    assert [(m.truth_index, m.located_index) for m in sc.matches] == [(0, 1), (1, 0)]
    assert (sc.located, sc.false_shots, sc.extra_shots) == (2, 1, 2)
    assert [round(m.error_m, 1) for m in sc.matches] == [2.0, 1.0]
    assert sc.matches[0].radius_m == 3.0
