"""Scoring a simulation: the alert latency of each located round."""

from __future__ import annotations

import numpy as np

from sim.report import alert_latencies_s, report_json, score

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


def test_matching_is_optimal_not_closest_first():
    # two rounds 0.12 s apart at one place; estimates at +0.05 s (0.07 s before the
    # second round) and -0.09 s from the first. Closest first would pair +0.05 with the
    # first round and leave -0.09 with nothing; both rounds can be matched.
    truth_t = np.array([T0, T0 + 120_000_000])
    truth_xy = np.array([[0.0, 0.0], [0.0, 0.0]])
    est_t = np.array([T0 + 50_000_000, T0 - 90_000_000])
    est_xy = np.array([[1.0, 0.0], [2.0, 0.0]])
    sc = score(truth_t, truth_xy, est_t, est_xy)
    assert sc.located == 2 and sc.false_shots == 0 and sc.extra_shots == 0
    assert [(m.truth_index, m.estimate_index) for m in sc.matches] == [(0, 1), (1, 0)]
    assert [m.error_m for m in sc.matches] == [2.0, 1.0]


def test_a_duplicate_near_the_truth_is_extra_and_only_a_far_one_is_false():
    truth_t = np.array([T0, T0 + 5_000_000_000])
    truth_xy = np.array([[0.0, 0.0], [300.0, 0.0]])
    est_t = np.array([T0 + 1_000_000, T0 + 2_000_000,           # the round and a duplicate 1 m off
                      T0 + 3_000_000_000,                        # near the second place, at no round's time
                      T0 + 5_000_000_000])                       # 101 m from every round
    est_xy = np.array([[0.5, 0.0], [1.0, 0.0], [350.0, 0.0], [300.0, 101.0]])
    sc = score(truth_t, truth_xy, est_t, est_xy)
    assert sc.located == 1 and sc.matches[0].estimate_index == 0 and sc.matches[1].estimate_index is None
    assert sc.extra_estimates == (1, 2) and sc.false_estimates == (3,)
    assert (sc.extra_shots, sc.false_shots) == (2, 1)
    ests = [{"i": j} for j in range(4)]
    doc = report_json([{"lat": 0.0, "lon": 0.0, "t_ns": int(t)} for t in truth_t], ests, sc)
    assert doc["extra"] == [{"i": 1}, {"i": 2}] and doc["false"] == [{"i": 3}]
    assert (doc["summary"]["extra_shots"], doc["summary"]["false_shots"]) == (2, 1)


def test_matches_the_benchmarks_scoring_rules():
    # the same located rounds through sim.report.score and benchmarks/scoring.score_test
    from types import SimpleNamespace

    from benchmarks.scoring import score_test
    from common.geodesy import LocalFrame
    from common.recording_set import TruthShot
    frame = LocalFrame(40.44, -79.99, 250.0)
    rng = np.random.default_rng(5)
    truth_xy = np.repeat(rng.uniform(-400, 400, (4, 2)), 3, axis=0)       # 4 bursts of 3 rounds
    truth_t = T0 + np.array([k * 2_000_000_000 + r * 80_000_000 for k in range(4) for r in range(3)])
    est_xy = np.concatenate([truth_xy + rng.normal(0, 3, truth_xy.shape), rng.uniform(-600, 600, (6, 2))])
    est_t = np.concatenate([truth_t + rng.integers(-90_000_000, 90_000_000, len(truth_t)),
                            T0 + rng.integers(0, 8_000_000_000, 6)])
    keep = rng.random(len(est_t)) < 0.8
    est_xy, est_t = est_xy[keep], est_t[keep]
    sc = score(truth_t, truth_xy, est_t, est_xy)
    tlat, tlon, _ = frame.to_wgs84(np.column_stack([truth_xy, np.zeros(len(truth_xy))]))
    elat, elon, _ = frame.to_wgs84(np.column_stack([est_xy, np.zeros(len(est_xy))]))
    ref = score_test([TruthShot(float(a), float(o), 0.0, int(t)) for a, o, t in zip(tlat, tlon, truth_t)],
                     [SimpleNamespace(lat=float(a), lon=float(o), t_utc_ns=int(t)) for a, o, t in zip(elat, elon, est_t)])
    assert (sc.located, sc.false_shots, sc.extra_shots) == (ref.located, ref.false_shots, ref.extra_shots)
    assert sc.located and sc.false_shots and sc.extra_shots          # the case has all three


def test_an_estimate_at_a_non_finite_position_is_a_false_shot():
    # as in benchmarks/scoring (a solver that diverged must not vanish from the
    # count: before, NaN was "not further than 100 m" and counted as extra)
    truth_t = np.array([T0])
    truth_xy = np.array([[0.0, 0.0]])
    sc = score(truth_t, truth_xy, np.array([T0, T0]), np.array([[1.0, 0.0], [np.nan, 0.0]]))
    assert (sc.located, sc.false_estimates, sc.extra_shots) == (1, (1,), 0)


def test_a_located_firework_crackle_is_named_as_such():
    """``earwitness sim --fireworks``: the server locates a firework's crackles
    as it does gunfire (it does not classify impulses). A false or extra shot
    that was one says so in the listing, the report and the summary."""
    from types import SimpleNamespace

    from server.reports import ShotReport
    from sim.launcher import SimResult, format_summary
    from sim.world import TruthShot, make_town

    town = make_town(4, 600.0, seed=1)
    frame = town.frame

    def truth(kind, inc, t_ns, x, y):
        lat, lon, _ = frame.to_wgs84(np.array([[x, y, 0.0]]))
        return TruthShot(f"{inc}.0", inc, 0, t_ns, (x, y, 0.0), float(lat[0]), float(lon[0]), kind)

    gun = truth("gunshot", "shot-01", T0, 0.0, 0.0)
    fw = truth("fireworks", "fireworks-01", T0 + 5_000_000_000, 400.0, 0.0)

    def located(t_ns, x, y):
        lat, lon, _ = frame.to_wgs84(np.array([[x, y, 0.0]]))
        return ShotReport(t_ns, float(lat[0]), float(lon[0]), 0.0, 2.0, 0.1, ("a", "b", "c", "d"), None, 1, 1)

    reports = (located(T0 + 1_000_000, 0.5, 0.0),                 # the gunshot
               located(T0 + 5_001_000_000, 402.0, 1.0),           # the firework's crackle
               located(T0 + 9_000_000_000, -300.0, 250.0))        # nothing there
    sc = score(np.array([gun.t_emit_utc_ns]), np.array([[0.0, 0.0]]),
               np.array([r.t_utc_ns for r in reports]), np.array([[0.5, 0.0], [402.0, 1.0], [-300.0, 250.0]]))
    res = SimResult(town, SimpleNamespace(truth=(gun, fw)), reports, sc, 1.0, {})
    assert sc.false_estimates == (1, 2)
    assert [res.other_impulse(j) for j in range(3)] == [None, "fireworks-01", None]
    doc = res.report()
    assert [f.get("source") for f in doc["false"]] == ["fireworks-01", None]
    assert "2 false shots, 0 extra (1 of these a firework's crackles" in format_summary(res)
