"""Association of fast bursts where the timing is a few ms off (wind, node
positions), and a seed's search area bounded by the hearing range."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from common.config import AssociationConfig
from server.association import Arrival, Associator
from tests.test_association import _associate

C = 343.0
REF = 1_700_000_000 * 10**9


def _windy_burst_world(seed: int):
    """A simulated town (sim.world, 8 nodes over 1.2 km) with three incidents, one
    a burst of 10 rounds at 15 rounds/s; wind 2 m/s, 10 % blocked paths, 30 %
    echo facades. Arrivals are the paths' exact times (sim.propagation) with
    the nodes' clock errors, levels from the paths' amplitudes, and the
    detector's 30 ms refractory time; the server is told node positions 0.5 m
    off and a temperature 1 °C off, as in the hard world of
    benchmarks/bench_accuracy.py — timing errors of a few ms, which at 15
    rounds/s make mixtures of rounds fit about as well as the rounds do."""
    from common.acoustics import speed_of_sound
    from sim.propagation import arrivals as paths
    from sim.world import clock_offsets_ns, make_scenario, make_town

    town = make_town(8, 1200.0, seed=seed)
    rng = np.random.default_rng([seed, 0xA1C])
    ang = rng.uniform(0, 2 * math.pi)
    scen = make_scenario(town, 3, seed=seed, burst=True, burst_rounds=10, burst_rate_hz=15.0,
                         wind_mps=(2 * math.cos(ang), 2 * math.sin(ang), 0.0), blocked_fraction=0.1,
                         echo_fraction=0.3, temperature_c=float(rng.uniform(-5, 30)), local_sounds=False)
    offsets = clock_offsets_ns(town.n_nodes, 20_000, seed=seed)
    told = town.nodes_enu + np.random.default_rng([seed, 0x905]).normal(0, 0.5, town.nodes_enu.shape)
    arrivals = []
    for i in range(town.n_nodes):
        last = -(10**18)
        for p in sorted(paths(scen, town, i), key=lambda p: p.t_arrival_utc_ns):
            if p.t_arrival_utc_ns - last < 30_000_000:          # the detector's refractory time
                continue
            last = p.t_arrival_utc_ns
            arrivals.append((p.t_arrival_utc_ns + int(offsets[i]), i, 20 * math.log10(max(p.amplitude, 1e-9))))
    arrivals.sort()
    out = [Arrival(k, town.node_ids[i], t, 2e-5, told[i], peak_dbfs=lv - 200.0)
           for k, (t, i, lv) in enumerate(arrivals)]
    gun = [s for s in scen.sources if s.kind == "gunshot"]
    return out, gun, speed_of_sound(scen.temperature_c + 1.0)


def test_burst_at_15_rounds_per_second_in_a_windy_town_gives_every_round():
    arrivals, gun, c = _windy_burst_world(4)
    found = _associate(arrivals, c, model_sigma_s=0.5 / c)[0]
    assert len(gun) == 12
    assert len(found) == len(gun)                  # the right count: no round lost, none extra
    for shot in found:                             # each is a round, not a mixture of rounds
        best = min(gun, key=lambda g: abs(g.t_emit_utc_ns - shot.t0_ns))
        assert abs(best.t_emit_utc_ns - shot.t0_ns) < 20_000_000
        assert np.linalg.norm(np.array(best.pos_enu[:2]) - shot.solution.pos[:2]) < 25.0


def test_search_is_bounded_by_the_hearing_range():
    """A 40 × 40 lattice (150 m, 5.85 km wide): the seed's grid covers only the
    cells within the hearing range of it, and the longest wait is one hearing
    range of travel, not the network's width."""
    cfg = replace(AssociationConfig(), hearing_range_m=500.0)
    assoc = Associator(cfg, C, z_source=1.5)
    k = np.arange(1600)
    pos = np.column_stack([(k % 40) * 150.0, (k // 40) * 150.0, np.full(k.size, 5.0)])
    for i, p in enumerate(pos):
        assoc.add_node(f"n{i}", p)
    assert assoc.max_travel_ns() == int((500.0 / C + 0.05) * 1e9)
    grid = assoc._grid_for(pos[820])
    span = grid.cells[:, :2].max(axis=0) - grid.cells[:, :2].min(axis=0)
    assert np.all(span <= 2 * (500.0 + 2 * cfg.grid_step_m))
    # a source in the middle, heard within 400 m: found, from arrivals of nearby nodes only
    src = np.array([3010.0, 2980.0, 1.5])
    d = np.linalg.norm(pos - src, axis=1)
    key = 0
    for i in np.flatnonzero(d <= 400.0):
        assoc.add(Arrival(key, f"n{i}", REF + int((2.0 + d[i] / C) * 1e9), 2e-5, pos[i]))
        key += 1
    found, _ = assoc.step(None)
    assert len(found) == 1
    assert np.linalg.norm(found[0].solution.pos[:2] - src[:2]) < 1.0


def test_the_wait_and_the_candidates_reach_one_hearing_range_of_travel_however_wide_the_network():
    """Every node that hears a shot is within hearing_range_m of it, so all its
    arrivals come within that range's travel time of each other: a node 3 km away
    neither lengthens the wait nor lends the search a sound heard later than that."""
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    r = AssociationConfig().hearing_range_m
    assoc.add_node("a", np.array([0.0, 0.0, 5.0]))
    assoc.add_node("b", np.array([100.0, 0.0, 5.0]))
    assert assoc.max_travel_ns() == int((r / C + 0.05) * 1e9)
    assoc.add_node("c", np.array([3000.0, 0.0, 5.0]))
    assert assoc.max_travel_ns() == int((r / C + 0.05) * 1e9)
    seed = Arrival(1, "a", REF, 2e-5, np.array([0.0, 0.0, 5.0]))
    assoc.add(seed)
    near = Arrival(2, "c", REF + int((r / C - 0.5) * 1e9), 2e-5, np.array([3000.0, 0.0, 5.0]))
    late = Arrival(3, "c", REF + int((r / C + 1.0) * 1e9), 2e-5, np.array([3000.0, 0.0, 5.0]))
    assoc.add(near)
    assoc.add(late)
    # (3 km of travel would reach the later sound; no source within 2 km of both can)
    assert [a.key for a in assoc._candidates(seed)["c"]] == [2]


def _four_node_rounds(t0s, seed=5, src=(250.0, 310.0, 1.5), levels=None, reflection=None):
    """Rounds at ``t0s`` (s) from ``src`` heard by four nodes (timing noise
    0.2 ms) at −20 dBFS or ``levels[node index]``; ``reflection`` (node index,
    delay s, level dBFS): a second sound at that node after each round's."""
    rng = np.random.default_rng(seed)
    nodes = np.array([[0.0, 0.0, 6.0], [700.0, 50.0, 6.0], [650.0, 720.0, 6.0], [-30.0, 680.0, 6.0]])
    src = np.array(src)
    arrivals, key = [], 0
    for t0 in t0s:
        for i, r in enumerate(nodes):
            t = t0 + np.linalg.norm(r - src) / C + rng.normal(0, 2e-4)
            level = (levels or {}).get(i, -20.0)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r, peak_dbfs=level))
            key += 1
            if reflection is not None and reflection[0] == i:
                arrivals.append(Arrival(key, f"n{i}", REF + int((t + reflection[1]) * 1e9), 2e-5, r,
                                        peak_dbfs=reflection[2]))
                key += 1
    return src, sorted(arrivals, key=lambda a: a.t_ns)


def test_four_node_rounds_of_a_burst_are_located_a_lone_four_node_shot_is_not():
    """With four nodes one arrival is redundant: a lone shot is no more likely
    than a chance line-up and is not formed. Rounds of a burst repeat one
    pattern of times at every node; that repeat is the evidence, and every round
    is located."""
    src, arrivals = _four_node_rounds([1.0, 1.45, 2.2])
    found = _associate(arrivals, model_sigma_s=0.0005)[0]
    assert len(found) == 3
    for shot in found:
        assert np.linalg.norm(shot.solution.pos[:2] - src[:2]) < 2.0
    _, lone = _four_node_rounds([1.0])
    assert _associate(lone, model_sigma_s=0.0005)[0] == []


def test_each_further_round_of_a_burst_is_further_evidence():
    """A line-up that mixes rounds (round k at one node, k + 1 at the others) is
    repeated by a regular burst too, but it runs out of rounds at one end: the
    true rounds are repeated more often. Each round that repeats a candidate's
    timing must lower its chance of being a coincidence, not just the first."""
    _, two = _four_node_rounds([1.0, 1.45])
    _, three = _four_node_rounds([1.0, 1.45, 1.9])
    f2 = _associate(two, model_sigma_s=0.0005)[0]
    f3 = _associate(three, model_sigma_s=0.0005)[0]
    assert len(f2) == 2 and len(f3) == 3
    # the first round: repeated once in the two-round burst, twice in the three-round one
    assert f3[0].chance < 0.01 * f2[0].chance


def test_of_two_like_candidates_the_far_less_likely_coincidence_wins():
    """Alike in arrivals and core, two candidates are ranked by their chance
    alignment when it differs by more than CHANCE_TIE (with one redundant
    arrival the rms is a single residual); otherwise by the better fit."""
    from dataclasses import replace

    from server.association import CHANCE_TIE, Association
    from server.solver import solve

    src, arrivals = _four_node_rounds([1.0])
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    rec = np.array([a.pos for a in arrivals])
    ts = np.array([(a.t_ns - REF) * 1e-9 for a in arrivals])
    sol = solve(rec, ts, 2e-4, C, z_source=1.5)
    evidence = Association(tuple(arrivals), sol, REF, n_core=4, chance=1e-9)
    tight = Association(tuple(arrivals), replace(sol, rms_s=sol.rms_s / 10), REF, n_core=4, chance=1e-3)
    assert assoc._better(evidence, tight) and not assoc._better(tight, evidence)
    alike = replace(evidence, chance=tight.chance / (0.5 * CHANCE_TIE))
    assert assoc._better(tight, alike) and not assoc._better(alike, tight)


def _burst_with_a_loud_reflection(t0s):
    """Four nodes, a source 50 m from node n0, rounds at ``t0s`` (s). At n2 a
    building blocks the direct path (−26 dBFS) and a wall reflects the sound
    6 dB louder, 291.4 ms later: exactly what a source at (−337, −366) m would
    give there, with the other three nodes' direct sounds (the second
    intersection of their hyperbolas). Timing noise 0.2 ms."""
    return _four_node_rounds(t0s, seed=3, src=(30.0, 40.0, 1.5), levels={2: -26.0}, reflection=(2, 0.2914, -20.0))


def test_a_reflection_louder_than_the_blocked_direct_sound_makes_no_ghost():
    """With four nodes, a loud reflection at one node and the other nodes' direct
    sounds fit a ghost source 540 m away as well as the rounds fit theirs.
    The direct sound is the first to arrive: of two line-ups on the same nodes,
    the earlier path is the shot (association._earlier_path). And a formed
    round explains its louder reflection, heard at that node alone, so the
    reflection does not make the next round's direct sound look like an echo
    (Associator._round_delay)."""
    src, arrivals = _burst_with_a_loud_reflection([1.0, 1.45, 2.2])
    found = _associate(arrivals, model_sigma_s=0.0005)[0]
    assert len(found) == 3
    for shot in found:
        assert np.linalg.norm(shot.solution.pos[:2] - src[:2]) < 2.0


def test_earlier_path_compares_the_nodes_both_candidates_use():
    from server.association import Association, _earlier_path

    def cand(times):
        arr = tuple(Arrival(k, n, t, 2e-5, np.zeros(3)) for k, (n, t) in enumerate(times.items()))
        return Association(arr, None, 0)

    a = cand({"n0": 100, "n1": 200, "n2": 300, "n3": 400})
    b = cand({"n0": 100, "n1": 500, "n2": 300, "n4": 600})     # later at n1, n3 vs n4 not compared
    c = cand({"n0": 100, "n1": 500, "n2": 250, "n3": 400})     # later at n1, earlier at n2
    assert _earlier_path(a, b, 10) and not _earlier_path(b, a, 10)
    assert not _earlier_path(a, c, 10) and not _earlier_path(c, a, 10)
    assert not _earlier_path(a, a, 10)                          # nothing differs
    assert not _earlier_path(a, cand({"n0": 105, "n1": 195}), 10)   # within the tolerance


def _eight_node_shots(noise_s, seed=2, late_s=0.0):
    """Six shots heard by eight nodes on a 600 m circle, times ``noise_s`` off
    (1 σ); node n3 hears every shot ``late_s`` late as well (a blocked path)."""
    rng = np.random.default_rng(seed)
    ang = np.arange(8) * math.pi / 4
    nodes = np.column_stack([600 * np.cos(ang) + 600, 600 * np.sin(ang) + 600, np.full(8, 6.0)])
    arrivals, key = [], 0
    for k in range(6):
        src = np.array([rng.uniform(300, 900), rng.uniform(300, 900), 1.5])
        for i, r in enumerate(nodes):
            t = 2.0 + 3.0 * k + np.linalg.norm(r - src) / C + rng.normal(0, noise_s) + (late_s if i == 3 else 0.0)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r, peak_dbfs=-20.0))
            key += 1
    return arrivals


def test_the_network_timing_error_is_learnt_from_shots_with_spare_arrivals():
    """Shots heard by eight nodes whose times are 3 ms off (node positions a
    metre off, paths around buildings): the association learns that the
    network adds about 3 ms, although it assumed 0.5 ms — also when one node
    hears every shot 20 ms late and is left out of each (the residual scale of
    a shot is that of the arrivals it keeps). With 0.1 ms errors it learns no
    more than the assumed 0.5 ms (a residual scale is never taken below 1)."""
    for late_s in (0.0, 0.02):
        found, _, assoc = _associate(_eight_node_shots(3e-3, late_s=late_s), model_sigma_s=5e-4)
        assert len(found) >= 5 and assoc.learnt_from == len(found)     # (one may not form before it learns)
        assert all(len(s.arrivals) == (8 if late_s == 0 else 7) for s in found)
        assert 2e-3 < assoc.learnt_model_sigma_s < 4.5e-3
    found, _, assoc = _associate(_eight_node_shots(1e-4), model_sigma_s=5e-4)
    assert len(found) == 6 and assoc.learnt_model_sigma_s <= 5.01e-4
    _, _, assoc = _associate(_eight_node_shots(1e-4)[:16], model_sigma_s=5e-4)
    assert assoc.learnt_model_sigma_s is None                  # two shots cannot tell


def test_a_clipped_sound_has_a_level():
    """0 dBFS is full scale, where a clipped onset is, not "no level": the next
    round of a burst clipped at one node stays a sound of its own there (as it
    would at −0.01 dBFS), not an echo of the round before. An arrival without
    a level (NaN: picks from another system) trailing a shot is taken as its
    echo, as one 19 dB weaker is."""
    from server.association import Association
    from server.solver import solve

    nodes = np.array([[0, 0, 5.0], [600, 0, 5.0], [0, 600, 5.0], [600, 600, 5.0], [300, 300, 5.0]])

    def unexplained_at_n0(level: float) -> bool:
        assoc = Associator(AssociationConfig(), C, z_source=1.5)
        shot = tuple(Arrival(i, f"n{i}", REF + i * 1_000_000, 1e-5, nodes[i], peak_dbfs=-1.0) for i in range(5))
        assoc.note_formed(Association(shot, solve(nodes, np.arange(5) * 1e-3, 1e-5, C, z_source=1.5), REF))
        for i in range(5):         # the next round, 0.2 s later at every node
            assoc.add(Arrival(10 + i, f"n{i}", REF + i * 1_000_000 + 200_000_000, 1e-5, nodes[i],
                              peak_dbfs=level if i == 0 else -1.0))
        assoc._index_preceding()
        return "n0" in assoc._unexplained

    assert unexplained_at_n0(-0.01) and unexplained_at_n0(0.0)
    assert not unexplained_at_n0(-20.0) and not unexplained_at_n0(math.nan)


@pytest.mark.parametrize("wind", [(2.4, -0.8), (9.5, -3.0)])
def test_arrivals_are_picked_where_the_solve_predicts_them_in_the_pooled_wind(wind):
    """Once the network has learnt its wind, the association's solves take it
    as known; the grid search and the arrivals picked around a solution must
    predict by the same travel times. (A straight-line prediction is off by
    up to distance × wind / c²: up to 28 ms here in 2.5 m/s, where the fine
    tolerance is 0.8 ms — the shot was lost; in 10 m/s the grid found no
    cell either.)"""
    from tests.test_association import _shot_in_wind

    src = np.array([300.0, 1100.0, 1.5])
    for known in (wind, (0.0, 0.0)):
        assoc = Associator(AssociationConfig(), C, z_source=1.5)
        assoc.note_wind(known, np.eye(2) * 1e-8, 4.0, t_ns=REF)     # learnt, to a hair, from a shot just before
        assert np.allclose(assoc.wind_mps, known, atol=1e-6)
        for a in _shot_in_wind(wind, REF + 2 * 10**9, src=tuple(src), sigma_s=2e-5):
            assoc.add(a)
        found, _ = assoc.step(None)
        if known == wind:
            assert len(found) == 1 and len(found[0].arrivals) == 8
            assert np.linalg.norm(found[0].solution.pos[:2] - src[:2]) < 0.5
        else:                         # told still air, the same arrivals fit less well
            assert not found or len(found[0].arrivals) < 8 or \
                np.linalg.norm(found[0].solution.pos[:2] - src[:2]) > 0.5


def _burst_and_far_echoes(echo_db, delay_s=1.0, seed=1):
    """A 5-round burst at 10 rounds/s from P, heard by eight nodes on a 1.2 km
    grid at −20 dBFS; and, at the four nodes nearest a point Q in a corner,
    each round again ``echo_db`` louder (negative: weaker), timed exactly as
    from a source at Q (as a far facade's reflections can be): at one of
    those nodes ``delay_s`` after the burst's last round, at the others
    later (up to ~4 s; 0.6 s is as far as trailing sounds are taken for a
    shot's echoes). Timing noise 0.2 ms."""
    rng = np.random.default_rng(seed)
    nodes = np.array([[x, y, 6.0] for x, y in
                      [(0, 0), (600, 0), (1200, 0), (0, 600), (1200, 600), (0, 1200), (600, 1200), (1200, 1200)]])
    p, q = np.array([450.0, 520.0, 1.5]), np.array([1250.0, 1300.0, 1.5])
    arrivals, key, last = [], 0, {}
    for k in range(5):
        for i, r in enumerate(nodes):
            last[i] = t = 1.0 + 0.1 * k + np.linalg.norm(r - p) / C + rng.normal(0, 2e-4)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r, peak_dbfs=-20.0))
            key += 1
    near = np.argsort(np.linalg.norm(nodes[:, :2] - q[:2], axis=1))[:4]
    tq = {i: np.linalg.norm(nodes[i] - q) / C for i in near}
    t0 = max(last[i] + delay_s - tq[i] for i in near) - 0.4
    for k in range(5):
        for i in near:
            t = t0 + 0.1 * k + tq[i] + rng.normal(0, 2e-4)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, nodes[i], peak_dbfs=-20.0 + echo_db))
            key += 1
    return p, q, sorted(arrivals, key=lambda a: a.t_ns)


def _decided_live(arrivals, step_s=0.5, **kw):
    """Every arrival through one Associator, decided as the watermark moves in
    ``step_s`` steps (a live server), then the rest."""
    assoc = Associator(AssociationConfig(), C, z_source=1.5, **kw)
    found, k, t = [], 0, arrivals[0].t_ns
    while t < arrivals[-1].t_ns + int(15e9):
        t += int(step_s * 1e9)
        while k < len(arrivals) and arrivals[k].t_ns <= t:
            assoc.add(arrivals[k])
            k += 1
        found += assoc.step(t)[0]
    return found + assoc.step(None)[0]


@pytest.mark.parametrize("delay_s", [0.7, 1.5])
def test_a_bursts_far_echoes_repeating_its_rhythm_are_not_a_second_burst(delay_s):
    """Four nodes' echoes of a burst repeat its rhythm as its rounds do: as
    evidence for a four-node line-up of those echoes, that repeat is the
    burst's, not theirs (Associator._repeats_explained). In the simulated
    windy town (tests above, seed 0) such echoes 0.5–2.4 s after a 10-round
    burst, 7–11 dB weaker, became 7 false shots 500 m away when decided live.
    Here, before, every echoed round was a shot at Q, at once and live. As
    loud as the rounds, they are a second shooter's burst, and are located."""
    p, q, arrivals = _burst_and_far_echoes(-10.0, delay_s)
    for found in (_associate(arrivals, model_sigma_s=0.0005)[0], _decided_live(arrivals, model_sigma_s=0.0005)):
        assert len(found) == 5
        assert all(np.linalg.norm(s.solution.pos[:2] - p[:2]) < 5.0 for s in found)
    p, q, arrivals = _burst_and_far_echoes(0.0, delay_s)
    for found in (_associate(arrivals, model_sigma_s=0.0005)[0], _decided_live(arrivals, model_sigma_s=0.0005)):
        assert len(found) == 10
        assert sum(np.linalg.norm(s.solution.pos[:2] - q[:2]) < 5.0 for s in found) == 5


@pytest.mark.parametrize("live", [False, True])
def test_a_long_burst_with_a_louder_first_round_is_decided(live):
    """Twelve nodes, 20 rounds at 10 rounds/s, the first 6 dB louder than the
    rest. The later rounds' burst evidence underflows to 0 (a dozen nodes
    repeating 19 times), and they trail the first round, weaker: the check
    of whether formed shots explain that evidence divided 0 by 0, and live,
    the associator raised at every step from then on (no shot ever again).
    (15 of the 20 rounds are found at once and 16 live, as before the check
    existed.)"""
    rng = np.random.default_rng(0)
    nodes = np.array([[x, y, 6.0] for x in (0, 400, 800, 1200) for y in (0, 400, 800)])
    src = np.array([610.0, 390.0, 1.5])
    arrivals, key = [], 0
    for k in range(20):
        for i, r in enumerate(nodes):
            t = 1.0 + 0.1 * k + np.linalg.norm(r - src) / C + rng.normal(0, 2e-4)
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r, peak_dbfs=-14.0 if k == 0 else -20.0))
            key += 1
    # and a shot a minute later
    later = np.array([300.0, 700.0, 1.5])
    for i, r in enumerate(nodes):
        t = 60.0 + np.linalg.norm(r - later) / C + rng.normal(0, 2e-4)
        arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 2e-5, r, peak_dbfs=-20.0))
        key += 1
    arrivals.sort(key=lambda a: a.t_ns)
    found = (_decided_live(arrivals, model_sigma_s=0.0005) if live
             else _associate(arrivals, model_sigma_s=0.0005)[0])
    burst = [s for s in found if np.linalg.norm(s.solution.pos[:2] - src[:2]) < 5.0]
    assert len(burst) >= 15 and len(found) == len(burst) + 1
    assert np.linalg.norm(found[-1].solution.pos[:2] - later[:2]) < 5.0


def test_a_chance_that_is_not_a_number_is_not_a_shot(monkeypatch):
    """Every threshold compares ``chance > max_chance``, which a NaN (a count
    of 0 × inf) passes: the association must refuse it, not form it."""
    _, arrivals = _four_node_rounds([1.0, 1.45, 2.2])
    assert len(_associate(arrivals, model_sigma_s=0.0005)[0]) == 3
    monkeypatch.setattr(Associator, "_chance_count", lambda self, cand, cands: math.nan)
    assert _associate(arrivals, model_sigma_s=0.0005)[0] == []
