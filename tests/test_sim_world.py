"""The simulated town, scenarios and truth (sim/world.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.geodesy import LocalFrame
from common.timefmt import NS_PER_S
from sim.world import (DEFAULT_ORIGIN, Scenario, Source, Town, Wall, clock_offsets_ns, make_scenario,
                       make_town)


@pytest.fixture(scope="module")
def town() -> Town:
    return make_town(seed=0)


@pytest.fixture(scope="module")
def scenario(town) -> Scenario:
    return make_scenario(town, seed=0)


def _incidents(scenario: Scenario, kind: str = "gunshot") -> dict[str, list[Source]]:
    out: dict[str, list[Source]] = {}
    for s in scenario.sources:
        if s.kind == kind:
            out.setdefault(s.incident_id, []).append(s)
    return {k: sorted(v, key=lambda s: s.round_index) for k, v in out.items()}


# ------------------------------------------------------------------ town
def test_default_town_layout(town):
    assert town.n_nodes == 8
    assert town.node_ids == tuple(f"sim-{i:02d}" for i in range(1, 9))
    assert town.nodes_enu.shape == (8, 3)
    assert np.all(np.abs(town.nodes_enu[:, :2]) < 600.0)
    assert np.all((town.nodes_enu[:, 2] >= 4.0) & (town.nodes_enu[:, 2] <= 8.0))
    assert not town.nodes_enu.flags.writeable
    assert 24 <= len(town.walls) <= 80
    for w in town.walls:
        assert 0.3 <= w.reflection <= 0.8
        assert 6.0 <= w.height_m <= 25.0
    for xy in town.nodes_enu[:, :2]:
        assert not town.inside_building(xy, margin_m=3.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_point_has_four_nodes_within_about_800_m(seed):
    t = make_town(seed=seed)
    g = np.linspace(-600.0, 600.0, 41)
    pts = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    d = np.linalg.norm(pts[:, None, :] - t.nodes_enu[None, :, :2], axis=2)
    fourth = np.sort(d, axis=1)[:, 3]
    assert fourth.max() < 850.0
    assert np.mean(fourth < 800.0) > 0.97


def test_town_is_deterministic_per_seed():
    a, b, c = make_town(seed=7), make_town(seed=7), make_town(seed=8)
    assert np.array_equal(a.nodes_enu, b.nodes_enu) and a.walls == b.walls
    assert not np.array_equal(a.nodes_enu, c.nodes_enu)


def test_town_geodesy_round_trip(town):
    lat, lon, alt = town.node_wgs84()
    back = town.frame.to_enu(lat, lon, alt)
    assert np.allclose(back, town.nodes_enu, atol=1e-6)
    assert abs(float(np.mean(lat)) - DEFAULT_ORIGIN[0]) < 0.01
    assert abs(float(np.mean(alt)) - DEFAULT_ORIGIN[2] - 6.0) < 3.0


def test_town_rejects_bad_input():
    frame = LocalFrame(*DEFAULT_ORIGIN)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        Town(frame, ("a",), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="one id per node"):
        Town(frame, ("a",), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unique"):
        Town(frame, ("a", "a"), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reflection"):
        Wall((0, 0), (1, 0), 5.0, 1.5)
    with pytest.raises(ValueError, match="n_nodes"):
        make_town(n_nodes=0)


def test_inside_building():
    frame = LocalFrame(*DEFAULT_ORIGIN)
    # A 10 m × 10 m building, corners counter-clockwise.
    c = [(0, 0), (10, 0), (10, 10), (0, 10)]
    walls = tuple(Wall(c[i], c[(i + 1) % 4], 8.0, 0.5, building=0) for i in range(4))
    t = Town(frame, ("a",), np.array([[50.0, 50.0, 5.0]]), walls)
    assert t.inside_building((5, 5))
    assert not t.inside_building((11, 5))
    assert t.inside_building((11, 5), margin_m=2.0)
    assert walls[0].normal == pytest.approx((0.0, -1.0))    # outward


def test_clock_offsets():
    off = clock_offsets_ns(2000, sigma_ns=20_000, seed=3)
    assert off.shape == (2000,) and off.dtype == np.int64
    assert 18_000 < off.std() < 22_000
    assert abs(off.mean()) < 2_000
    assert np.array_equal(off, clock_offsets_ns(2000, sigma_ns=20_000, seed=3))
    assert np.all(clock_offsets_ns(5, sigma_ns=0) == 0)


# ------------------------------------------------------------------ scenario
def test_default_scenario_gunfire(town, scenario):
    inc = _incidents(scenario)
    assert len(inc) == 10
    bursts = [v for v in inc.values() if len(v) > 1]
    assert len(bursts) == 1 and len(bursts[0]) == 5
    burst = bursts[0]
    dt = np.diff([s.t_emit_utc_ns for s in burst]) / NS_PER_S
    assert np.allclose(dt, 0.1, atol=1e-9)
    assert len({s.pos_enu for s in burst}) == 1
    assert [s.round_index for s in burst] == list(range(5))
    half = town.size_m / 2
    for rounds in inc.values():
        s = rounds[0]
        assert 150.0 - 1.5 <= s.level_db_spl_1m <= 160.0 + 1.5
        assert 0.5e-3 <= s.positive_phase_s <= 2e-3
        x, y, z = s.pos_enu
        assert abs(x) < half and abs(y) < half and 1.0 <= z <= 1.8
        assert np.min(np.hypot(town.nodes_enu[:, 0] - x, town.nodes_enu[:, 1] - y)) >= 15.0
        assert not town.inside_building((x, y))
    # Incidents are 2–6 s apart (end of one incident to the start of the next).
    ordered = sorted(inc.values(), key=lambda r: r[0].t_emit_utc_ns)
    gaps = [(b[0].t_emit_utc_ns - a[-1].t_emit_utc_ns) / NS_PER_S for a, b in zip(ordered, ordered[1:])]
    assert all(2.0 <= g <= 6.0 for g in gaps)
    # Everything (incl. propagation across town) fits in the scenario.
    last = max(s.t_emit_utc_ns for s in scenario.sources)
    assert (last - scenario.start_utc_ns) / NS_PER_S + 1700.0 / scenario.c_mps < scenario.duration_s


def test_truth_matches_gunshot_rounds(town, scenario):
    guns = [s for s in scenario.sources if s.kind == "gunshot"]
    assert len(scenario.truth) == len(guns) == 14
    by_id = {s.id: s for s in guns}
    for t in scenario.truth:
        s = by_id[t.source_id]
        assert (t.incident_id, t.round_index, t.t_emit_utc_ns, t.pos_enu, t.kind) == (
            s.incident_id, s.round_index, s.t_emit_utc_ns, s.pos_enu, "gunshot")
        back = town.frame.to_enu(t.lat, t.lon, t.alt_m)
        assert np.allclose(back, t.pos_enu, atol=1e-6)


def test_burst_is_configurable(town):
    sc = make_scenario(town, n_shots=3, seed=5, burst_rounds=3, burst_rate_hz=15.0, local_sounds=False)
    burst = [v for v in _incidents(sc).values() if len(v) > 1][0]
    assert len(burst) == 3
    assert np.allclose(np.diff([s.t_emit_utc_ns for s in burst]) / NS_PER_S, 1 / 15.0, atol=1e-9)
    assert all(s.kind == "gunshot" for s in sc.sources)
    none = make_scenario(town, n_shots=4, seed=5, burst=False, local_sounds=False)
    assert all(len(v) == 1 for v in _incidents(none).values())
    with pytest.raises(ValueError, match="burst_rounds"):
        make_scenario(town, burst_rounds=2)
    with pytest.raises(ValueError, match="burst_rate_hz"):
        make_scenario(town, burst_rate_hz=30.0)


def test_fireworks_are_in_truth_marked(town):
    sc = make_scenario(town, n_shots=3, seed=2, fireworks=True, local_sounds=False)
    fw = _incidents(sc, "fireworks")
    assert len(fw) == 1
    crackles = next(iter(fw.values()))
    assert 15 <= len(crackles) <= 60
    span = (crackles[-1].t_emit_utc_ns - crackles[0].t_emit_utc_ns) / NS_PER_S
    assert span <= 3.0
    assert max(s.level_db_spl_1m for s in crackles) < 150.0
    kinds = [t.kind for t in sc.truth]
    assert kinds.count("fireworks") == len(crackles)
    assert kinds.count("gunshot") == len([s for s in sc.sources if s.kind == "gunshot"])


def test_local_sounds_are_near_one_node(town, scenario):
    local = [s for s in scenario.sources if s.kind in ("door", "dog")]
    assert len(local) == 4 and {s.kind for s in local} == {"door", "dog"}
    for s in local:
        d = np.linalg.norm(town.nodes_enu - np.array(s.pos_enu), axis=1)
        assert s.near_node == int(np.argmin(d))
        assert 5.0 <= float(np.hypot(*(np.array(s.pos_enu[:2]) - town.nodes_enu[s.near_node, :2]))) <= 30.0
        assert s.level_db_spl_1m < 120.0
    assert not any(t.source_id in {s.id for s in local} for t in scenario.truth)
    quiet = make_scenario(town, seed=0, local_sounds=False)
    assert not any(s.kind in ("door", "dog") for s in quiet.sources)


def test_scenario_is_deterministic_per_seed(town):
    a = make_scenario(town, seed=11, fireworks=True, blocked_fraction=0.3)
    assert a == make_scenario(town, seed=11, fireworks=True, blocked_fraction=0.3)
    assert a != make_scenario(town, seed=12, fireworks=True, blocked_fraction=0.3)


def test_harder_world_options(town):
    sc = make_scenario(town, seed=4, blocked_fraction=0.5, echo_fraction=1.0, temperature_c=32.0,
                       wind_mps=(6.0, -2.0, 0.0), local_sounds=False)
    pairs = len(_incidents(sc)) * town.n_nodes
    assert 0.3 * pairs < len(sc.blocked) < 0.7 * pairs
    for b in sc.blocked:
        assert 20.0 <= b.attenuation_db <= 30.0 and 0 <= b.node_index < town.n_nodes
    assert sc.wind_mps == (6.0, -2.0, 0.0)
    assert sc.c_mps > make_scenario(town, seed=4, local_sounds=False).c_mps + 9.0
    # echo_fraction=1: every incident stands 3–25 m in front of a facade.
    for rounds in _incidents(sc).values():
        x, y, _ = rounds[0].pos_enu
        near = []
        for w in town.walls:
            p0, p1 = np.array(w.p0), np.array(w.p1)
            u = np.clip(np.dot([x, y] - p0, p1 - p0) / np.dot(p1 - p0, p1 - p0), 0, 1)
            near.append(float(np.linalg.norm(p0 + u * (p1 - p0) - [x, y])))
        assert min(near) <= 25.0 + 1e-6
    assert make_scenario(town, seed=4, local_sounds=False).blocked == ()


def test_scenario_rejects_bad_input(town):
    with pytest.raises(ValueError, match="blocked_fraction"):
        make_scenario(town, blocked_fraction=1.5)
    with pytest.raises(ValueError, match="n_shots"):
        make_scenario(town, n_shots=0)
    with pytest.raises(ValueError, match="kind"):
        Source("x", "cannon", 0, (0, 0, 0), 150.0)
    with pytest.raises(ValueError, match="pos_enu"):
        Source("x", "gunshot", 0, (0, 0), 150.0)
    with pytest.raises(ValueError, match="integer UTC ns"):
        Source("x", "gunshot", 1.5, (0, 0, 0), 150.0)
    with pytest.raises(ValueError, match="wind"):
        Scenario((), 0, 1.0, wind_mps=(200.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="unique"):
        s = Source("x", "gunshot", 0, (0, 0, 0), 150.0)
        Scenario((s, s), 0, 1.0)
    assert math.isfinite(make_scenario(town, n_shots=1, seed=1).duration_s)
