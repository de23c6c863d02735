"""Association: overlapping shots, bursts, echoes, node-local sounds, streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config import AssociationConfig
from server.association import Arrival, Associator

C = 343.0
REF = 1_700_000_000 * 10**9


def _nodes(seed=3, n=8):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0, 1200, (n, 2)), rng.uniform(4, 8, n)])


def _world(seed=3, echo_p=0.3, strays_per_node=3):
    """Shots, a 5-round burst at 10 rounds/s, a second shooter 0.3 s into the burst,
    echoes (30 % of arrivals) and stray node-local sounds."""
    rng = np.random.default_rng(seed)
    nodes = _nodes(seed)
    shots = [(np.array([300, 400, 1.5]), 1.0), (np.array([800, 900, 1.5]), 4.0)]
    shots += [(np.array([600, 200, 1.5]), 7.0 + 0.1 * k) for k in range(5)]
    shots += [(np.array([100, 1100, 1.5]), 7.3)]
    arrivals = []
    key = 0
    for p, t0 in shots:
        for i, r in enumerate(nodes):
            t = t0 + np.linalg.norm(r - p) / C + rng.normal(0, 2e-5)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r))
            key += 1
            if rng.random() < echo_p:
                te = t + rng.uniform(0.03, 0.3)
                arrivals.append(Arrival(key, f"n{i}", REF + int(te * 1e9), 2e-5, r))
                key += 1
    for i in range(len(nodes)):
        for _ in range(strays_per_node):
            arrivals.append(Arrival(key, f"n{i}", REF + int(rng.uniform(0, 12) * 1e9), 2e-5, nodes[i]))
            key += 1
    return shots, sorted(arrivals, key=lambda a: a.t_ns)


def _associate(arrivals, c=C, **kw):
    """Every arrival (in time order) through one Associator: (shots, put aside, it)."""
    assoc = Associator(AssociationConfig(), c, z_source=1.5, **kw)
    for a in sorted(arrivals, key=lambda a: a.t_ns):
        assoc.add(a)
    found, rejected = assoc.step(None)
    return found, rejected, assoc


def _check(found, shots):
    assert len(found) == len(shots)
    got = [((a.t0_ns - REF) / 1e9, a.solution.pos) for a in found]
    for p, t0 in shots:       # every true shot has its own located shot
        match = [g for g in got if abs(g[0] - t0) < 1e-3 and np.linalg.norm(g[1][:2] - p[:2]) < 0.5]
        assert len(match) == 1, (p, t0)


def test_overlapping_shots_echoes_and_local_sounds_batch():
    shots, arrivals = _world()
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    for a in arrivals:
        assoc.add(a)
    found, rejected = assoc.step(None)
    _check(found, shots)
    assert assoc.pending == 0
    assert len(rejected) == len(arrivals) - sum(len(s.arrivals) for s in found)


def test_streaming_with_a_watermark_gives_the_same_shots():
    shots, arrivals = _world(seed=5)
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    found = []
    for a in arrivals:
        assoc.add(a)
        found += assoc.step(a.t_ns)[0]     # every node has reported up to this arrival
    found += assoc.step(None)[0]
    _check(found, shots)


@pytest.mark.parametrize("seed", range(2))
def test_sounds_heard_by_one_node_only_never_make_shots(seed):
    """Unrelated impulses (doors, dogs, traffic) at every node, one every 2 s per
    node on average: no chance alignment becomes a shot."""
    nodes = _nodes()
    rng = np.random.default_rng(seed)
    arrivals = [Arrival(k, f"n{k % 8}", REF + int(rng.uniform(0, 40) * 1e9), 2e-5, nodes[k % 8])
                for k in range(160)]
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    for a in arrivals:
        assoc.add(a)
    found, rejected = assoc.step(None)
    assert found == [] and len(rejected) == 160


def test_mirror_image_of_an_echo_is_not_a_shot():
    """Every node hears the same wall's echo: a consistent 'ghost' source at the
    shooter's mirror image, firing at the same instant, must not become a shot."""
    nodes = _nodes(seed=1)
    src = np.array([1000.0, 600.0, 1.5])
    ghost = src.copy()
    ghost[0] = 2 * 1300.0 - src[0]            # a long wall along x = 1300 m, east of every node
    arrivals = []
    for i, r in enumerate(nodes):
        arrivals.append(Arrival(2 * i, f"n{i}", REF + int(np.linalg.norm(r - src) / C * 1e9), 2e-5, r))
        arrivals.append(Arrival(2 * i + 1, f"n{i}", REF + int(np.linalg.norm(r - ghost) / C * 1e9) + 1000, 2e-5, r))
    found = _associate(arrivals)[0]
    assert len(found) == 1
    assert np.linalg.norm(found[0].solution.pos[:2] - src[:2]) < 0.5


def _shots_to_arrivals(nodes, shots, rng, sigma=2e-5, c=C, key0=0):
    out = []
    for p, t0 in shots:
        for i, r in enumerate(nodes):
            t = t0 + np.linalg.norm(r - p) / c + rng.normal(0, sigma)
            out.append(Arrival(key0 + len(out), f"n{i}", REF + int(t * 1e9), sigma, r))
    return out


def test_the_same_sound_reported_twice_is_one_shot():
    """Exported picks sometimes list one pulse twice at a node: the copies must not
    make a second shot."""
    rng = np.random.default_rng(7)
    nodes = _nodes(seed=4)
    shots = [(np.array([500.0, 600.0, 1.5]), 1.0)]
    arrivals = _shots_to_arrivals(nodes, shots, rng)
    arrivals += [Arrival(100 + a.key, a.node, a.t_ns, a.sigma_s, a.pos) for a in arrivals]
    found, rejected, assoc = _associate(arrivals)
    assert len(found) == 1 and len(found[0].arrivals) == 8
    assert len(rejected) == 8 and assoc.pending == 0


def test_unknown_temperature_finds_shots_and_the_speed_of_sound():
    """No temperature: the search spans candidate speeds (-10..30 °C) and the solver
    fits c; shots at 0 °C (c = 331.8 m/s) are found and placed."""
    from common.acoustics import speed_of_sound

    rng = np.random.default_rng(8)
    c_true = speed_of_sound(0.0)
    nodes = _nodes(seed=6, n=10)
    shots = [(np.array([300.0, 900.0, 1.5]), 1.0), (np.array([1000.0, 200.0, 1.5]), 3.0)]
    arrivals = _shots_to_arrivals(nodes, shots, rng, c=c_true)
    cands = tuple(speed_of_sound(t) for t in (-10.0, 0.0, 10.0, 20.0, 30.0))
    found = _associate(arrivals, cands)[0]
    assert len(found) == 2
    for sh, (p, t0) in zip(found, shots):
        assert np.linalg.norm(sh.solution.pos[:2] - p[:2]) < 0.5
        assert abs(sh.solution.c_mps - c_true) < 1.0


def test_burst_at_15_rounds_per_second_is_separated_into_rounds():
    rng = np.random.default_rng(9)
    nodes = _nodes(seed=2)
    p = np.array([700.0, 500.0, 1.5])
    shots = [(p, 2.0 + k / 15.0) for k in range(10)]
    arrivals = _shots_to_arrivals(nodes, shots, rng)
    found = _associate(arrivals)[0]
    _check(found, shots)


def test_two_shooters_in_the_same_second_are_two_shots_each_round():
    rng = np.random.default_rng(10)
    nodes = _nodes(seed=5)
    a, b = np.array([250.0, 300.0, 1.5]), np.array([900.0, 850.0, 1.5])
    shots = [(a, 1.0), (a, 1.25), (b, 1.1), (b, 1.45)]
    arrivals = _shots_to_arrivals(nodes, shots, rng)
    found = _associate(arrivals)[0]
    _check(found, shots)


def test_urban_timing_scatter_is_learnt_and_tolerated():
    """Picks scattered by 5 ms (an urban network with 1 ms picks): the shots are
    still found with (nearly) every node, and the network's scale is learnt."""
    rng = np.random.default_rng(12)
    nodes = _nodes(seed=11, n=16)
    shots = [(np.array([400.0 + 60 * k, 500.0, 1.5]), 1.0 + 0.8 * k) for k in range(6)]
    arrivals = _shots_to_arrivals(nodes, shots, rng, sigma=0.005)
    arrivals = [Arrival(a.key, a.node, a.t_ns, 0.001, a.pos) for a in arrivals]    # they claim 1 ms
    found, _, assoc = _associate(arrivals, model_sigma_s=0.0005)
    assert len(found) == 6
    assert min(len(s.arrivals) for s in found) >= 14
    for sh, (p, _) in zip(found, shots):
        assert np.linalg.norm(sh.solution.pos[:2] - p[:2]) < 10.0
    assert assoc.net_scale > 2.5


def test_pooled_wind_takes_the_prior_out_once():
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    assert assoc.wind_sigma_mps is None
    # three shots each saying (2, -1) ± 1 m/s, from fits with a 0 ± 4 m/s prior
    prior = np.eye(2) / 16.0
    data = np.eye(2) / 1.0
    post_cov = np.linalg.inv(prior + data)
    post_mean = post_cov @ (data @ np.array([2.0, -1.0]))
    for _ in range(3):
        assoc.note_wind(tuple(post_mean), post_cov, 4.0)
    pooled = np.linalg.inv(prior + 3 * data)
    expect = pooled @ (3 * data @ np.array([2.0, -1.0]))
    assert np.allclose(assoc.wind_mps, expect, atol=1e-9)
    assert abs(assoc.wind_sigma_mps - np.sqrt(pooled[0, 0])) < 1e-9


def test_learnt_network_state_round_trips_through_json():
    """learnt() → JSON → restore_learnt() gives back the same timing scale and
    pooled wind; a malformed state changes nothing."""
    import json
    a = Associator(AssociationConfig(), C, z_source=1.5)
    rng = np.random.default_rng(1)
    for _ in range(5):
        a.note_wind((1.5 + rng.normal(0, 0.3), -0.5 + rng.normal(0, 0.3)), np.diag([0.4, 0.5]), 4.0)
    a._scales, a.net_scale = [2.0, 3.0, 5.0], 3.0
    b = Associator(AssociationConfig(), C, z_source=1.5)
    b.restore_learnt(json.loads(json.dumps(a.learnt())), 4.0)
    assert b.net_scale == 3.0 and b.learnt() == a.learnt()
    assert b.wind_mps == pytest.approx(a.wind_mps, abs=1e-12)
    assert b.wind_sigma_mps == pytest.approx(a.wind_sigma_mps, abs=1e-12)
    for bad in ({"scales": [1.0]}, {"scales": [1.0], "model_sigmas": [], "winds": [[[1.0], [[1.0]]]]},
                {"scales": [float("nan")], "model_sigmas": [], "winds": []}, [1, 2], None):
        with pytest.raises(ValueError, match="not a learnt network state"):
            b.restore_learnt(bad, 4.0)
        assert b.learnt() == a.learnt()


def _shot_in_wind(wind, t_ns, src=(300.0, 1100.0, 1.5), sigma_s=1e-3, key0=0):
    """Eight nodes on an 800 m circle hearing one shot at ``src`` in ``wind``."""
    from server.solver import travel_times_s

    ang = np.arange(8) * math.pi / 4
    nodes = np.column_stack([800 * np.cos(ang) + 800, 800 * np.sin(ang) + 800, np.full(8, 6.0)])
    tau = travel_times_s(nodes, np.array(src), C, wind)
    return [Arrival(key0 + i, f"n{i}", t_ns + int(t * 1e9), sigma_s, r, peak_dbfs=-20.0)
            for i, (r, t) in enumerate(zip(nodes, tau))]


def test_a_wind_estimate_lapses_after_wind_max_age():
    """Shots' wind estimates count for the searches within ``wind_max_age_s``
    of them: an hour later the network starts from still air again, and the
    estimates come back for a time they cover (locate decides at once, in any
    order). 0 keeps them for ever."""
    t0 = 1_800_000_000 * 10**9
    hour = 3600 * 10**9
    for age_s, lapsed in ((1800.0, True), (0.0, False)):
        assoc = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=age_s)
        assoc.note_wind((2.0, -1.0), np.eye(2) * 0.01, 4.0, t_ns=t0)
        assoc.note_wind((2.2, -0.8), np.eye(2) * 0.01, 4.0, t_ns=t0 + 60 * 10**9)
        near = (assoc.wind_mps, assoc.wind_sigma_mps)
        assert near[1] is not None and near[0][0] == pytest.approx(2.1, abs=0.01)
        assoc.wind_at(t0 + hour)
        assert ((assoc.wind_mps, assoc.wind_sigma_mps) == ((0.0, 0.0), None)) == lapsed
        assoc.wind_at(t0 + 30 * 10**9)
        assert (assoc.wind_mps, assoc.wind_sigma_mps) == near
        # one estimate in reach pools that one alone
        assoc.wind_at(t0 - 1799 * 10**9)
        if lapsed:
            assert assoc.wind_mps[0] == pytest.approx(2.0, abs=0.01) and assoc.wind_sigma_mps > near[1]


def test_a_search_an_hour_after_the_last_wind_uses_still_air():
    """The shot that taught the wind was an hour ago: the next shot is searched
    and picked in still air (its arrivals are straight-line ones here), not in
    the old wind, which would move the predictions by up to 30 ms (34 ms apart)."""
    src = np.array([300.0, 1100.0, 1.5])
    found = {}
    for age_s in (1800.0, 0.0):
        assoc = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=age_s)
        assoc.note_wind((2.5, -1.0), np.eye(2) * 1e-8, 4.0, t_ns=REF)
        for a in _shot_in_wind((0.0, 0.0), REF + 3600 * 10**9, src=tuple(src), sigma_s=2e-5):
            assoc.add(a)
        found[age_s] = assoc.step(None)[0]
    (shot,) = found[1800.0]
    assert len(shot.arrivals) == 8 and np.linalg.norm(shot.solution.pos[:2] - src[:2]) < 0.5
    # kept for ever, the hour-old wind loses arrivals or moves the shot
    assert not found[0.0] or len(found[0.0][0].arrivals) < 8 or \
        np.linalg.norm(found[0.0][0].solution.pos[:2] - src[:2]) > 0.5


def test_learnt_wind_keeps_its_times_and_an_old_store_without_them_lapses():
    """learnt() keeps each wind estimate's shot time; a state from before times
    were kept ([wind, information]) restores, its estimates of unknown age
    counting only where estimates never lapse."""
    import json
    t0 = 1_800_000_000 * 10**9
    a = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1800.0)
    a.note_wind((2.0, -1.0), np.eye(2) * 0.01, 4.0, t_ns=t0)
    state = json.loads(json.dumps(a.learnt()))
    assert state["winds"][0][2] == t0
    b = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1800.0)
    b.restore_learnt(state, 4.0)
    assert b.wind_mps == pytest.approx(a.wind_mps) and b.wind_sigma_mps == pytest.approx(a.wind_sigma_mps)
    old = {**state, "winds": [w[:2] for w in state["winds"]]}
    b.restore_learnt(old, 4.0)
    b.wind_at(t0)
    assert (b.wind_mps, b.wind_sigma_mps) == ((0.0, 0.0), None)
    forever = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=0.0)
    forever.restore_learnt(old, 4.0)
    forever.wind_at(t0)
    assert forever.wind_mps == pytest.approx(a.wind_mps)
    for bad in ({**state, "winds": [[*state["winds"][0][:2], "noon"]]},
                {**state, "winds": [[*state["winds"][0][:2], t0, 1]]}):
        with pytest.raises(ValueError, match="not a learnt network state"):
            b.restore_learnt(bad, 4.0)


def test_adopting_a_network_that_learnt_a_wind_redoes_the_searches_it_changes():
    """The review associator searched a seed before the main one learnt the wind
    at its time; adopting the main one's view redoes that search, even when the
    pools both last took (at other times) are alike — still air here."""
    wind, src = (2.0, -0.8), np.array([300.0, 1100.0, 1.5])
    arr = _shot_in_wind(wind, REF)
    rev = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1800.0)
    for a in arr:
        rev.add(a)
    rev.step(min(a.t_ns for a in arr) + rev.wait_ns())      # searched in still air, kept pending
    assert rev._cache
    main = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1800.0)
    main.note_wind(wind, np.eye(2) * 1e-8, 4.0, t_ns=REF)    # a shot at REF taught it the wind
    main.wind_at(REF + 3600 * 10**9)                          # and its last shot was an hour later
    rev.adopt_network(main)
    (shot,), _ = rev.step(None)
    assert shot.solution.wind_mps == pytest.approx(wind, abs=1e-3)
    assert np.linalg.norm(shot.solution.pos[:2] - src[:2]) < 0.05


def test_an_age_too_large_to_count_in_ns_means_for_ever():
    assoc = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1e300)
    assoc.note_wind((2.0, -1.0), np.eye(2) * 0.01, 4.0, t_ns=REF)
    assoc.wind_at(REF + 10**9 * 3600 * 24 * 365 * 100)
    assert assoc.wind_sigma_mps is not None


def test_a_burst_round_is_searched_again_in_the_wind_of_its_own_time(monkeypatch):
    """After its first round forms, a burst's next rounds are searched again
    from its position (``_repeats``) in the wind at their time — not in the
    still air of the unrelated sounds an hour later, searched just before."""
    wind = (2.5, -1.0)
    rounds = _shot_in_wind(wind, REF) + _shot_in_wind(wind, REF + 500_000_000, key0=8)
    later = _shot_in_wind((0.0, 0.0), REF + 3600 * 10**9, src=(900.0, 400.0, 1.5), key0=16)[:3]
    assoc = Associator(AssociationConfig(), C, z_source=1.5, wind_max_age_s=1800.0)
    assoc.note_wind(wind, np.eye(2) * 1e-8, 4.0, t_ns=REF - 60 * 10**9)
    for a in rounds + later:
        assoc.add(a)
    searched = []            # (seed time, the wind the search predicts with), every refinement
    real_refine = Associator._refine

    def refine(self, seed, cands, p0, c):
        searched.append((seed.t_ns, self.wind_mps))
        return real_refine(self, seed, cands, p0, c)

    monkeypatch.setattr(Associator, "_refine", refine)
    found, _ = assoc.step(None)
    near = [w for t, w in searched if t < REF + 10**10]
    assert len(near) > 2 and all(w == pytest.approx(wind, abs=1e-3) for w in near)
    assert len(found) == 2 and all(len(s.arrivals) == 8 for s in found)
    assert all(np.linalg.norm(s.solution.pos[:2] - np.array([300.0, 1100.0])) < 0.05 for s in found)
