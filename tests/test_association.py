"""Association: overlapping shots, bursts, echoes, node-local sounds, streaming."""

from __future__ import annotations

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


@pytest.mark.parametrize("seed", range(3))
def test_sounds_heard_by_one_node_only_never_make_shots(seed):
    """Unrelated impulses (doors, dogs, traffic) at every node, one every 2 s per
    node on average: no chance alignment becomes a shot."""
    nodes = _nodes()
    rng = np.random.default_rng(seed)
    arrivals = [Arrival(k, f"n{k % 8}", REF + int(rng.uniform(0, 60) * 1e9), 2e-5, nodes[k % 8])
                for k in range(240)]
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    for a in arrivals:
        assoc.add(a)
    found, rejected = assoc.step(None)
    assert found == [] and len(rejected) == 240


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
    assoc = Associator(AssociationConfig(), C, z_source=1.5)
    for a in sorted(arrivals, key=lambda a: a.t_ns):
        assoc.add(a)
    found, _ = assoc.step(None)
    assert len(found) == 1
    assert np.linalg.norm(found[0].solution.pos[:2] - src[:2]) < 0.5
