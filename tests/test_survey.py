"""node/survey.py: survey-in, outlier rejection, configured override, move/fix-lost alerts."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import GpsConfig, Position
from common.geodesy import LocalFrame
from node.gps import GpsFeed, TpvReport, apply_report, note_connection, summarize
from node.survey import (FixLostAlert, Fix, MovedAlert, Survey, estimate_position, fix_from_gps,
                         survey_fixes)

TRUE = Position(47.6619817, -122.3263937, 54.9)     # near the quectel log's fixes
FRAME = LocalFrame(TRUE.lat, TRUE.lon, TRUE.alt)


def fix_at(e: float, n: float, u: float, *, eph: float | None = 4.0, epv: float | None = 8.0,
           tid: int | None = None, two_d: bool = False) -> Fix:
    lat, lon, alt = FRAME.to_wgs84(np.array([e, n, u]))
    return Fix(float(lat), float(lon), None if two_d else float(alt), eph_m=eph, epv_m=epv,
               t_utc_ns=tid)


def offset_m(p: Position) -> np.ndarray:
    return FRAME.to_enu(p.lat, p.lon, p.alt)


def wandering_fixes(rng, n: int, sigma: float = 2.0, tau_s: float = 30.0):
    """A static antenna: errors as a first-order Gauss-Markov process (1 fix/s)."""
    a = np.exp(-1.0 / tau_s)
    x = np.zeros(3)
    out = []
    for _ in range(n):
        x = a * x + np.sqrt(1 - a * a) * rng.normal(0.0, sigma, 3) * np.array([1, 1, 1.8])
        out.append(x.copy())
    return np.array(out)


def run_survey(s: Survey, enu: np.ndarray, t0: float = 0.0, **kw) -> float:
    t = t0
    for i, (e, n, u) in enumerate(enu):
        s.update(fix_at(e, n, u, tid=int(t * 1e9) + 1, **kw), t)
        t += 1.0
    return t


def test_survey_completes_near_truth_with_honest_uncertainty():
    rng = np.random.default_rng(7)
    s = Survey(survey_s=600, move_alert_m=25)
    assert s.status(0.0).state == "waiting"
    t = run_survey(s, wandering_fixes(rng, 300))
    mid = s.status(t)
    assert mid.state == "surveying" and 0.45 < mid.progress < 0.55 and mid.position is not None
    t = run_survey(s, wandering_fixes(rng, 320), t0=t)
    st = s.status(t)
    assert st.state == "surveyed" and st.progress == 1.0
    err = offset_m(st.position)
    assert np.hypot(err[0], err[1]) < 3 * st.sigma_h_m
    assert 0.2 < st.sigma_h_m < 2.0            # correlated errors: not σ/√600 ≈ 0.1 m
    assert abs(err[2]) < 3 * st.sigma_v_m
    assert st.alerts == ()


def test_uncertainty_accounts_for_correlated_errors():
    rng = np.random.default_rng(3)
    enu = wandering_fixes(rng, 600, sigma=3.0, tau_s=60.0)
    t = np.arange(600.0)
    sh = np.full(600, 2.0)
    _, sig_corr, _, _ = estimate_position(enu, sh, sh * 2, np.ones(600, bool), t, corr_s=60.0)
    _, sig_indep, _, _ = estimate_position(enu, sh, sh * 2, np.ones(600, bool), t, corr_s=1.0)
    assert sig_corr > 2.5 * sig_indep


def test_outliers_are_rejected():
    rng = np.random.default_rng(11)
    n = 400
    enu = rng.normal(0.0, 1.5, (n, 3))
    bad = rng.choice(n, 25, replace=False)
    enu[bad, :2] += rng.uniform(80, 300, (25, 2))          # multipath jumps, tens of metres
    fixes = [fix_at(*row) for row in enu]
    r = survey_fixes(fixes, np.arange(n, dtype=float))
    err = offset_m(r.position)
    assert np.hypot(err[0], err[1]) < 0.5
    assert r.n_rejected >= 25 and r.n_used + r.n_rejected == n
    # a plain mean would be dragged ~10 m away
    assert np.hypot(*enu[:, :2].mean(axis=0)) > 5


def test_fixes_are_weighted_by_their_error_estimate():
    good = [fix_at(0.0, 0.0, 0.0, eph=1.0)] * 1
    poor = [fix_at(6.0, 0.0, 0.0, eph=30.0)] * 3
    r = survey_fixes(good + poor, [0.0, 1.0, 2.0, 3.0], reject_k=1e9)
    assert offset_m(r.position)[0] < 0.1


def test_two_d_fixes_give_no_height():
    rng = np.random.default_rng(5)
    fixes = [fix_at(*rng.normal(0, 1, 3), two_d=True) for _ in range(50)]
    r = survey_fixes(fixes, np.arange(50.0))
    assert r.sigma_v_m is None and r.position.alt == 0.0
    assert np.hypot(*offset_m(Position(r.position.lat, r.position.lon, TRUE.alt))[:2]) < 1.0


def test_configured_position_overrides_and_still_detects_a_move():
    s = Survey(survey_s=600, move_alert_m=25, configured=TRUE, move_window_s=60)
    st = s.status(0.0)
    assert st.state == "configured" and st.position == TRUE
    rng = np.random.default_rng(1)
    t = run_survey(s, rng.normal(0, 2, (120, 3)))
    assert s.status(t).alerts == ()
    # someone moved the mast 60 m east
    t = run_survey(s, rng.normal(0, 2, (90, 3)) + [60, 0, 0], t0=t)
    alerts = s.status(t).alerts
    moved = [a for a in alerts if isinstance(a, MovedAlert)]
    assert len(moved) == 1 and moved[0].reference == "configured"
    assert moved[0].distance_m == pytest.approx(60, abs=3)
    assert "node moved" in moved[0].message and "more than 25 m" in moved[0].message
    assert moved[0].detail == f"fixes for the last 60 s are {moved[0].distance_m:.0f} m from the configured position"
    assert s.status(t).position == TRUE            # never silently replaced


def test_noisy_but_static_node_does_not_raise_a_move_alert():
    s = Survey(survey_s=60, move_alert_m=25)
    rng = np.random.default_rng(2)
    t = run_survey(s, rng.normal(0, 2, (70, 3)))
    assert s.status(t).state == "surveyed"
    enu = rng.normal(0, 2, (200, 3))
    enu[::10, :2] += 100.0                         # 10 % wild fixes are not a move
    t = run_survey(s, enu, t0=t)
    assert not any(isinstance(a, MovedAlert) for a in s.status(t).alerts)


def test_surveyed_node_moved_then_restart_resurveys():
    s = Survey(survey_s=60, move_alert_m=25)
    rng = np.random.default_rng(4)
    t = run_survey(s, rng.normal(0, 1, (70, 3)))
    before = s.status(t).position
    t = run_survey(s, rng.normal(0, 1, (70, 3)) + [0, -40, 0], t0=t)
    assert any(isinstance(a, MovedAlert) and a.reference == "surveyed" for a in s.status(t).alerts)
    s.restart()
    t = run_survey(s, rng.normal(0, 1, (70, 3)) + [0, -40, 0], t0=t)
    after = s.status(t)
    assert after.state == "surveyed" and after.alerts == ()
    assert offset_m(after.position)[1] == pytest.approx(-40, abs=1)
    assert offset_m(before)[1] == pytest.approx(0, abs=1)


def test_fix_lost_alert_before_and_after_a_fix():
    s = Survey(survey_s=600, move_alert_m=25, fix_lost_s=30)
    s.update(None, 100.0)
    assert s.status(120.0).alerts == ()
    a = s.status(131.0).alerts
    assert len(a) == 1 and isinstance(a[0], FixLostAlert) and not a[0].ever
    assert a[0].message.startswith("no GPS fix since start")
    assert a[0].detail == "no fix in the 31 s since start"
    s.update(fix_at(0, 0, 0, tid=1), 140.0)
    assert s.status(150.0).alerts == ()
    s.update(None, 160.0)
    lost = s.status(175.0).alerts
    assert len(lost) == 1 and lost[0].ever and lost[0].since_s == pytest.approx(35.0)
    assert lost[0].message.startswith("GPS fix lost") and lost[0].detail == "fix lost 35 s ago"


def test_alert_texts_are_fixed_and_their_figures_are_measurements():
    from node.pipeline import status_states
    s = Survey(survey_s=600, move_alert_m=25, fix_lost_s=30)
    s.update(fix_at(0, 0, 0, tid=1), 100.0)
    texts, states = set(), set()
    for t in (140.0, 145.0, 150.0):
        st = s.status(t)
        texts.add(st.problem)
        states.add(status_states(st.to_status()))
        assert st.to_status()["pos_fix_lost_s"] == pytest.approx(t - 100.0)
        assert st.detail == f"fix lost {t - 100.0:.0f} s ago"
    assert texts == {"GPS fix lost — check the antenna and gpsd"} and len(states) == 1
    s.update(fix_at(0, 0, 0, tid=2), 155.0)
    back = s.status(155.0)
    assert back.problem == "" and back.detail == "" and back.to_status()["pos_fix_lost_s"] is None


def test_moved_alert_text_does_not_carry_the_distance():
    s = Survey(survey_s=600, move_alert_m=25, configured=TRUE, move_window_s=60)
    rng = np.random.default_rng(3)
    t = run_survey(s, rng.normal(0, 2, (90, 3)) + [60, 0, 0])
    a = s.status(t)
    t2 = run_survey(s, rng.normal(0, 2, (10, 3)) + [70, 0, 0], t0=t)
    b = s.status(t2)
    assert a.problem == b.problem and a.problem.startswith("node moved")
    assert a.to_status()["pos_moved_m"] != b.to_status()["pos_moved_m"]
    assert a.to_status()["pos_moved_m"] == pytest.approx(60, abs=3)


def test_same_fix_fed_twice_counts_once():
    s = Survey(survey_s=600, move_alert_m=25)
    f = fix_at(1, 2, 3, tid=42)
    for t in range(5):
        s.update(f, float(t))
    assert s.status(5.0).n_fixes == 1


def test_fix_from_gps_state_and_from_config():
    f = note_connection(GpsFeed(), True, 0)
    f = apply_report(f, TpvReport(mode=3, lat=1.0, lon=2.0, alt_hae_m=3.0, eph_m=4.0, epv_m=5.0,
                                  time_utc_ns=123), 0)
    fx = fix_from_gps(summarize(f, 0, endpoint="x"))
    assert fx == Fix(1.0, 2.0, 3.0, 4.0, 5.0, 123)
    assert fix_from_gps(summarize(f, 10**10, endpoint="x")) is None     # stale
    s = Survey.from_config(GpsConfig(survey_s=30.0, move_alert_m=10.0), None)
    assert s.survey_s == 30.0 and s.move_alert_m == 10.0 and s.configured is None
    status = s.status(0.0).to_status()
    assert status["pos_state"] == "waiting" and all(k.startswith("pos_") for k in status)


def test_bad_arguments_are_rejected_clearly():
    with pytest.raises(ValueError, match="move_alert_m"):
        Survey(survey_s=10, move_alert_m=0)
    with pytest.raises(ValueError, match="at least one fix"):
        survey_fixes([], [])
