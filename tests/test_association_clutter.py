"""Association in a busy network: sounds that one node hears alone (clutter).

Every sound is searched as a possible shot. The line-ups of clutter such a
search finds span nodes that heard nothing, so :meth:`Associator._enough_nodes`
refuses them; :meth:`Associator._plausible` drops them before they are refined
(several solves each). These tests check that the shortcut changes no decision
and that it is taken."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_association import lattice
from common.config import AssociationConfig
from server.association import Arrival, Associator

C = 343.0
REF = 1_700_000_000 * 10**9


def _busy(seed: int, n_nodes: int = 12, clutter_per_s: float = 0.4, span_s: float = 16.0,
          shots: int = 3, heard_m: float = 1200.0) -> tuple[list[tuple[np.ndarray, float]], list[Arrival]]:
    """Shots at random places, each heard by the nodes within ``heard_m``, and
    ``clutter_per_s`` sounds per node per second that node alone hears."""
    rng = np.random.default_rng(seed)
    nodes = lattice(n_nodes, 400.0)
    lo, hi = nodes[:, :2].min(axis=0), nodes[:, :2].max(axis=0)
    truth, arrivals, key = [], [], 0
    for k in range(shots):
        p, t0 = np.append(rng.uniform(lo, hi), 1.5), 2.0 + k * span_s / shots
        truth.append((p, t0))
        for i, r in enumerate(nodes):
            d = float(np.linalg.norm(r - p))
            if d <= heard_m:
                arrivals.append(Arrival(key, f"n{i}", REF + int((t0 + d / C + rng.normal(0, 5e-5)) * 1e9), 5e-5, r))
                key += 1
    for i, r in enumerate(nodes):
        for t in rng.uniform(0.0, span_s, rng.poisson(clutter_per_s * span_s)):
            arrivals.append(Arrival(key, f"n{i}", REF + int(t * 1e9), 5e-5, r))
            key += 1
    return truth, sorted(arrivals, key=lambda a: a.t_ns)


def _run(arrivals: list[Arrival], *, shortcut: bool, step_s: float = 0.5) -> tuple[list, list, int]:
    """Stream ``arrivals`` through an Associator as a live server would (watermark
    steps of ``step_s``): (shots as (arrival keys, position), put-aside keys,
    number of refinements)."""
    assoc = Associator(AssociationConfig(), C, z_source=1.5, model_sigma_s=5e-4)
    refined = 0
    refine = assoc._refine

    def counting(*a, **kw):
        nonlocal refined
        refined += 1
        return refine(*a, **kw)

    assoc._refine = counting
    if not shortcut:
        assoc._plausible = lambda *a, **kw: True
    shots, aside = [], []
    t_end = arrivals[-1].t_ns
    k = 0
    t = arrivals[0].t_ns
    while t < t_end + int(10e9):
        t += int(step_s * 1e9)
        while k < len(arrivals) and arrivals[k].t_ns <= t:
            assoc.add(arrivals[k])
            k += 1
        found, rejected = assoc.step(t - int(0.1e9))
        shots += [(tuple(sorted(a.key for a in s.arrivals)), np.round(s.solution.pos, 6).tolist()) for s in found]
        aside += [a.key for a in rejected]
    found, rejected = assoc.step(None)
    shots += [(tuple(sorted(a.key for a in s.arrivals)), np.round(s.solution.pos, 6).tolist()) for s in found]
    aside += [a.key for a in rejected]
    return shots, sorted(aside), refined


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dropping_implausible_line_ups_early_changes_no_decision(seed):
    truth, arrivals = _busy(seed)
    with_shortcut = _run(arrivals, shortcut=True)
    without = _run(arrivals, shortcut=False)
    assert with_shortcut[:2] == without[:2]
    # every shot was found, and no clutter made one
    assert len(with_shortcut[0]) == len(truth)
    for p, t0 in truth:
        assert any(np.linalg.norm(np.array(pos[:2]) - p[:2]) < 1.0 for _, pos in with_shortcut[0])
    # and the shortcut is taken: far fewer line-ups are refined
    assert with_shortcut[2] < 0.7 * without[2]


def test_a_line_up_across_silent_nodes_is_not_plausible_but_a_shot_is():
    nodes = lattice(16, 400.0)                      # 4 × 4, 1.2 km square
    assoc = Associator(AssociationConfig(), C, z_source=1.5, model_sigma_s=5e-4)
    for i, r in enumerate(nodes):
        assoc.add_node(f"n{i}", r)

    def heard_by(idx, p):
        return [Arrival(i, f"n{i}", REF + int(np.linalg.norm(nodes[i] - p) / C * 1e9), 5e-5, nodes[i]) for i in idx]

    def pool(arrs):
        return {a.node: [a] for a in arrs[1:]}

    # a source in the middle heard only by the four corners: the 12 nodes nearer
    # to it than the corners heard nothing
    p = np.array([600.0, 600.0, 1.5])
    corners = heard_by([0, 3, 12, 15], p)
    assert not assoc._plausible(corners[0], pool(corners), p, C)
    # the same source heard by the four middle nodes and the corners: 8 of 16
    middle = heard_by([0, 5, 6, 9, 10, 3, 12, 15], p)
    assert assoc._plausible(middle[0], pool(middle), p, C)
    # a source near one corner heard by the four nodes around it
    q = np.array([150.0, 150.0, 1.5])
    local = heard_by([0, 1, 4, 5], q)
    assert assoc._plausible(local[0], pool(local), q, C)
    # a few metres off (where the fine grid may leave it) is still plausible
    assert assoc._plausible(local[0], pool(local), q + np.array([6.0, -6.0, 0.0]), C)
