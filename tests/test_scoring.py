"""Benchmark scoring on synthetic inputs with known answers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from benchmarks.scoring import (
    SubsetShot,
    choose_subsets,
    format_subset_scores,
    format_summaries,
    horizontal_error_m,
    run_subsets,
    score_subsets,
    score_test,
    summarize,
    summarize_by_group,
)
from common.geodesy import LocalFrame
from common.recording_set import TruthShot
from common.timefmt import NS_PER_S

FRAME = LocalFrame(40.4406, -79.9959, 250.0)
T0 = 1_545_180_568_000_000_000


@dataclass(frozen=True)
class Loc:
    lat: float
    lon: float
    t_utc_ns: int


def truth(e=0.0, n=0.0, t_s: float | None = 0.0, rounds=1) -> TruthShot:
    lat, lon, alt = FRAME.to_wgs84(np.array([e, n, 0.0]))
    return TruthShot(float(lat), float(lon), float(alt), None if t_s is None else T0 + round(t_s * NS_PER_S), rounds)


def loc(e: float, n: float, t_s: float) -> Loc:
    lat, lon, _ = FRAME.to_wgs84(np.array([e, n, 0.0]))
    return Loc(float(lat), float(lon), T0 + round(t_s * NS_PER_S))


def test_horizontal_error_ignores_height():
    t = truth(0, 0)
    lat, lon, _ = FRAME.to_wgs84(np.array([3.0, 4.0, 40.0]))
    assert horizontal_error_m(float(lat), float(lon), t) == pytest.approx(5.0, abs=1e-3)


def test_time_window_rule():
    shots = [truth(0, 0, t_s=1.0)]
    inside = score_test(shots, [loc(6, 8, 1.0 + 0.099)])
    assert inside.located == 1 and inside.errors_m[0] == pytest.approx(10.0, abs=1e-3)
    assert inside.matches[0].dt_s == pytest.approx(0.099, abs=1e-9)
    assert (inside.false_shots, inside.extra_shots) == (0, 0)
    outside = score_test(shots, [loc(6, 8, 1.0 - 0.101)])
    assert outside.located == 0 and outside.extra_shots == 1 and outside.false_shots == 0
    wider = score_test(shots, [loc(6, 8, 1.0 - 0.101)], time_window_s=0.2)
    assert wider.located == 1


def test_false_and_extra_shots():
    shots = [truth(0, 0, t_s=0.0), truth(0, 0, t_s=1.0)]
    located = [
        loc(3, 0, 0.01),      # matches shot 0, 3 m
        loc(0, 4, 0.02),      # second fix of shot 0: extra
        loc(150, 0, 1.0),     # right time, 150 m away: false (not extra)
        loc(0, 99, 5.0),      # near, but nothing fired then: extra
    ]
    s = score_test(shots, located, name="t", group="FP9")
    assert s.rounds_fired == 2 and s.located_total == 4
    assert s.located == 1 and s.errors_m == pytest.approx((3.0,), abs=1e-3)
    assert s.matches[0].truth_index == 0 and s.matches[0].located_index == 0
    assert s.false_shots == 1 and s.extra_shots == 2


def test_matching_maximises_matches_not_greedy():
    # Greedy "closest in time" would give located[0] to shot 1 and leave located[1] unmatched.
    shots = [truth(0, 0, t_s=0.0), truth(0, 0, t_s=0.08)]
    s = score_test(shots, [loc(1, 0, 0.07), loc(2, 0, 0.15)])
    assert s.located == 2 and s.extra_shots == 0
    assert {(m.truth_index, m.located_index) for m in s.matches} == {(0, 0), (1, 1)}


def test_untimed_truth_is_never_located_and_its_matches_are_unverified():
    """Rounds fired with no labelled arrivals have no emission time to check a
    located round against: they count as fired, never as located; a located
    round near them is unverified — neither located, false nor extra."""
    shots = [truth(0, 0, t_s=0.0), truth(0, 0, t_s=None, rounds=2)]
    s = score_test(shots, [loc(1, 0, 0.0), loc(2, 0, -3.0), loc(3, 0, 4.0), loc(4, 0, 6.0)])
    assert s.rounds_fired == 3 and s.located == 1 and s.unverified == 2 and s.extra_shots == 1
    assert s.false_shots == 0
    assert [(m.truth_index, m.located_index) for m in s.matches] == [(0, 0)]   # the timed round preferred
    summary = summarize([s])
    assert (summary.located, summary.unverified, summary.extra_shots) == (1, 2, 1)
    assert "unverified" in format_summaries([summary])


def test_a_located_round_at_a_non_finite_position_is_false():
    s = score_test([truth()], [Loc(math.nan, 0.0, T0),
                               Loc(math.inf, 0.0, T0)])
    assert (s.located, s.false_shots, s.extra_shots) == (0, 2, 0)


def test_no_located_and_no_truth():
    s = score_test([truth()], [])
    assert (s.located, s.false_shots, s.extra_shots, s.rounds_fired) == (0, 0, 0, 1)
    with pytest.raises(ValueError, match="no truth"):
        score_test([], [loc(0, 0, 0)])


def test_summaries():
    a = score_test([truth(t_s=0), truth(t_s=1)], [loc(10, 0, 0), loc(20, 0, 1)], group="FP1")
    b = score_test([truth(t_s=0), truth(t_s=1)], [loc(30, 0, 0), loc(500, 0, 0.5)], group="FP2")
    per = summarize_by_group([a, b])
    assert [p.group for p in per] == ["FP1", "FP2", "all"]
    fp1, fp2, total = per
    assert fp1.recall == 1.0 and fp1.median_m == pytest.approx(15.0, abs=1e-2)
    assert fp1.within_15m == 0.5 and fp1.within_25m == 1.0
    assert fp2.located == 1 and fp2.recall == 0.5 and fp2.false_shots == 1 and fp2.within_25m == 0.0
    assert total.rounds_fired == 4 and total.located == 3 and total.recall == 0.75
    assert total.mean_m == pytest.approx(20.0, abs=1e-2)
    assert total.within_15m == 0.25 and total.within_25m == 0.5
    assert total.p95_m == pytest.approx(float(np.percentile([10, 20, 30], 95)), abs=1e-2)
    empty = summarize([score_test([truth()], [])])
    assert empty.located == 0 and math.isnan(empty.median_m)
    text = format_summaries(per)
    assert "FP1" in text and "75.0 %" in text
    md = format_summaries(per, markdown=True)
    assert md.splitlines()[1].startswith("|---")


@dataclass(frozen=True)
class LocR(Loc):
    error_m: float = 0.0


def test_in_radius_counts_matched_rounds_inside_their_reported_radius():
    def at(e, r, t):
        x = loc(e, 0, t)
        return LocR(x.lat, x.lon, x.t_utc_ns, r)

    a = score_test([truth(t_s=0), truth(t_s=1), truth(t_s=2)], [at(3, 4, 0), at(5, 4, 1), at(300, 1, 2)], group="FP1")
    assert [m.radius_m for m in a.matches] == [4, 4]
    s = summarize([a])                          # the false shot does not count
    assert s.in_radius == pytest.approx(0.5) and s.in_radius_truth == pytest.approx(0.5)
    assert s.radius_median_m == pytest.approx(4.0)
    # with the truth's own 95 % radius 3 m: 5 m is inside hypot(4, 3) = 5
    assert summarize([a], truth_r95_m=3.0).in_radius_truth == pytest.approx(1.0)
    assert summarize_by_group([a], truth_r95_m=3.0)[-1].in_radius_truth == pytest.approx(1.0)
    plain = summarize([score_test([truth()], [loc(1, 0, 0)])])    # a locator that reports no radius
    assert plain.located == 1 and math.isnan(plain.in_radius)
    assert "50 %" in format_summaries([s]) and "—" in format_summaries([plain])


# ------------------------------------------------------------------ subset test
def _exact_shot(n_rx: int, src=(120.0, -60.0), group="FP1", seed=0) -> SubsetShot:
    rng = np.random.default_rng(seed)
    rx = np.column_stack([rng.uniform(-600, 600, n_rx) - 5000, rng.uniform(-600, 600, n_rx) + 2000,
                          np.zeros(n_rx)])
    s = np.array([src[0] - 5000, src[1] + 2000, 0.0])
    c = 330.0
    t = T0 + np.round(np.linalg.norm(rx - s, axis=1) / c * NS_PER_S).astype(np.int64)
    return SubsetShot(group=group, receivers_enu=rx, t_arrival_ns=t, truth_enu=s, c_mps=c)


def _toa_solver(calls: list):
    from scipy.optimize import least_squares

    def solve(r, t, c):
        calls.append((r.copy(), t.copy()))
        assert np.allclose(r.mean(axis=0), 0.0, atol=1e-6)     # centred on the subset
        assert t.min() == 0.0
        fit = least_squares(lambda p: t - p[2] - np.hypot(r[:, 0] - p[0], r[:, 1] - p[1]) / c,
                            [r[0, 0] + 1, r[0, 1] + 1, 0.0])
        return fit.x[0], fit.x[1]
    return solve


def test_choose_subsets():
    rng = np.random.default_rng(0)
    s = choose_subsets(8, 6, 20, rng)
    assert len(s) == 20 and len(set(s)) == 20 and all(len(x) == 6 and list(x) == sorted(x) for x in s)
    assert len(choose_subsets(7, 6, 20, rng)) == 7           # fewer combinations than asked: all of them
    assert choose_subsets(5, 6, 20, rng) == []


def test_subset_scores_exact_solver():
    shots = [_exact_shot(8, group="FP1"), _exact_shot(7, src=(-50, 30), group="FP2", seed=1),
             _exact_shot(5, group="FP2", seed=2)]
    calls: list = []
    scores = score_subsets(shots, _toa_solver(calls), subset_size=6, n_subsets=20, seed=3)
    fp1, fp2, total = scores
    assert (fp1.group, fp1.shots, fp1.trials, fp1.skipped_shots) == ("FP1", 1, 20, 0)
    assert (fp2.shots, fp2.trials, fp2.skipped_shots) == (1, 7, 1)
    assert total.trials == 27 and len(calls) == 27 and all(len(t) == 6 for _, t in calls)
    assert total.within_15m == 1.0 and total.p90_m < 0.01 and total.failed == 0
    # All arrivals: one trial per shot, including the five-sensor one.
    trials, skipped = run_subsets(shots, _toa_solver([]), subset_size=None)
    assert len(trials) == 3 and skipped == [] and max(t.error_m for t in trials) < 0.01
    assert "FP2" in format_subset_scores(scores)


def test_subset_scores_count_failures_and_misses():
    shot = _exact_shot(7)
    answers = iter([(math.nan, math.nan)])              # first call fails, the rest are 10 km off

    def solver(r, t, c):
        return next(answers, (1e4, 0.0))

    (_, total) = score_subsets([shot], solver, subset_size=6, n_subsets=20)
    assert total.trials == 7 and total.failed == 1 and total.within_15m == 0.0
    assert total.median_m > 1000
