"""Association: grouping single-node arrivals into shots.

An arrival is one node's onset. A shot is a set of arrivals, at most one per node,
all consistent with one source position and emission time. Association runs on a
buffer of pending arrivals, oldest first, behind a *watermark*: an arrival is only
decided once every node has reported audio up to the latest time any arrival of
the same shot could reach it (``t + max travel time across the network``).

For the oldest pending arrival ``a0`` (the seed) at node ``r0``, every grid cell p
implies an emission time T(p) = t0 − |p − r0|/c and a predicted arrival time at
every other node. The cells where most nodes have a pending arrival near their
prediction are refined by the solver (nearest arrival per node, solve, re-pick
within the fine tolerance, solve again). The best refined candidate becomes a shot
when at least ``min_nodes`` arrivals, ``a0`` among them, fit it; its arrivals leave
the buffer. Otherwise ``a0`` is put aside as unassociated (an echo, a node-local
sound such as a door or a dog, or a shot too few nodes heard).

Echoes off a wall are consistent with a "ghost" source at the mirror image of the
shooter that fires at the same instant. A candidate whose emission time is within
``ECHO_T0_S`` of an already-formed shot, and whose every arrival comes after that
shot's arrival at the same node, is such a ghost and is not a shot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from common.config import AssociationConfig
from server.solver import Solution, solve

ECHO_T0_S = 0.02
#: Most grid cells refined per seed: in a burst every node hears a comb of
#: arrivals, many cells line up with some of them, and the right one is not
#: always among the first few.
MAX_CELLS = 12
#: Arrivals whose own timing is worse than this (s, 1-σ) are not used.
MAX_SIGMA_S = 0.005


@dataclass(frozen=True)
class Arrival:
    """One node's onset as the server sees it. ``pos``: node position (3,) m ENU."""

    key: int
    node: str
    t_ns: int
    sigma_s: float
    pos: np.ndarray = field(repr=False)
    peak_dbfs: float = 0.0
    degraded: bool = False


@dataclass(frozen=True)
class Association:
    """A shot: its arrivals (those fitting the solution) and the solution, whose
    times are seconds relative to ``ref_ns``."""

    arrivals: tuple[Arrival, ...]
    solution: Solution
    ref_ns: int

    @property
    def t0_ns(self) -> int:
        return self.ref_ns + int(round(self.solution.t0_s * 1e9))


class Grid:
    """Candidate source positions covering the nodes plus a margin (cells, 2-D)."""

    def __init__(self, node_pos: np.ndarray, step_m: float, margin_m: float, z: float) -> None:
        lo = node_pos[:, :2].min(axis=0) - margin_m
        hi = node_pos[:, :2].max(axis=0) + margin_m
        xs = np.arange(lo[0], hi[0] + step_m, step_m)
        ys = np.arange(lo[1], hi[1] + step_m, step_m)
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        self.cells = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])
        self.step_m = step_m
        self._dist: dict[str, np.ndarray] = {}

    def distances(self, node: str, pos: np.ndarray) -> np.ndarray:
        d = self._dist.get(node)
        if d is None:
            d = np.linalg.norm(self.cells - pos, axis=1)
            self._dist[node] = d
        return d


class Associator:
    """Streaming associator. ``add`` arrivals, ``step(watermark_ns)`` to decide."""

    def __init__(self, cfg: AssociationConfig, c_mps: float | tuple[float, ...], z_source: float | None,
                 model_sigma_s: float = 0.0002, z_sigma: float | None = None) -> None:
        """``c_mps``: the speed of sound, or several candidates when the air
        temperature is unknown (each seed is tried with each; the best fit wins).
        ``z_source``: expected source height (m ENU); ``z_sigma``: None to hold it
        fixed (2-D), else the width (m) of a prior around it (3-D with a prior);
        ``z_source=None``: unconstrained 3-D."""
        self.cfg = cfg
        self.c_candidates = tuple(float(c) for c in np.atleast_1d(c_mps))
        self.c = min(self.c_candidates)       # for the longest possible travel time
        self.z_source = z_source
        self.z_sigma = z_sigma
        self.model_sigma_s = model_sigma_s
        self._pending: list[Arrival] = []
        self._nodes: dict[str, np.ndarray] = {}
        self._grid: Grid | None = None
        self._recent: list[Association] = []

    # ------------------------------------------------------------- inputs
    def add(self, arrival: Arrival) -> None:
        self.add_node(arrival.node, arrival.pos)
        self._pending.append(arrival)

    def add_node(self, node: str, pos: np.ndarray) -> None:
        """Make a node known (from its heartbeat) before it reports any arrival, so
        the search area and the waiting time cover it from the start."""
        if node not in self._nodes or not np.allclose(self._nodes[node], pos, atol=0.5):
            self._nodes[node] = np.asarray(pos, dtype=float)
            self._grid = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def max_travel_ns(self) -> int:
        """Longest time one shot's arrivals can be spread over: the widest node
        pair, and at least ``hearing_range_m`` (nodes not yet heard from may lie
        further out)."""
        span = self.cfg.hearing_range_m
        if len(self._nodes) >= 2:
            p = np.array(list(self._nodes.values()))
            span = max(span, float(np.max(np.linalg.norm(p[:, None, :2] - p[None, :, :2], axis=2))))
        return int((span / self.c + 0.05) * 1e9)

    # ------------------------------------------------------------- decide
    def step(self, watermark_ns: int | None) -> tuple[list[Association], list[Arrival]]:
        """Decide every pending arrival old enough for ``watermark_ns`` (None: all).

        Among the ready seeds, the candidate shot explaining the most nodes is formed
        first (so that an echo or a stray sound cannot take arrivals from a real
        shot), then the next, until no ready seed yields a shot; the ready seeds left
        are put aside. Returns (new shots, arrivals put aside as unassociated)."""
        shots: list[Association] = []
        rejected: list[Arrival] = []
        wait_ns = self.max_travel_ns() + int(self.cfg.latency_s * 1e9)
        self._pending.sort(key=lambda a: a.t_ns)
        cache: dict[int, Association | None] = {}
        while True:
            ready = [a for a in self._pending
                     if watermark_ns is None or a.t_ns + wait_ns <= watermark_ns]
            if not ready:
                break
            for seed in ready:
                if seed.key not in cache:
                    cache[seed.key] = self._try_seed(seed)
            # An arrival whose own search found nothing may still belong to a shot
            # found from another seed; only when no ready seed yields a shot are
            # the ready arrivals left over put aside (echoes, local sounds, …).
            cands = [cache[a.key] for a in ready
                     if cache[a.key] is not None and not self._is_echo_ghost(cache[a.key])]
            if not cands:
                rejected.extend(ready)
                keys = {a.key for a in ready}
                self._pending = [a for a in self._pending if a.key not in keys]
                break
            best = cands[0]
            for cand in cands[1:]:
                if self._better(cand, best):
                    best = cand
            # of a shot and its echoes' mirror-image ghost, the shot comes first
            for cand in cands:
                if _mirrors(best, cand):
                    best = cand
            # commit only once every arrival of it is itself old enough that any
            # competing candidate for those arrivals has been seen too
            if watermark_ns is not None and max(a.t_ns for a in best.arrivals) + wait_ns > watermark_ns:
                break
            used = {a.key for a in best.arrivals}
            self._pending = [a for a in self._pending if a.key not in used]
            cache = _without(cache, used)
            shots.append(best)
            self._recent.append(best)
        if self._recent:
            horizon = (self._pending[0].t_ns if self._pending else (watermark_ns or 0)) - wait_ns - int(5e9)
            self._recent = [s for s in self._recent if s.t0_ns > horizon]
        shots.sort(key=lambda s: s.t0_ns)
        return shots, rejected

    # ---------------------------------------------------------- internals
    def _grid_for(self) -> Grid:
        if self._grid is None:
            p = np.array(list(self._nodes.values()))
            z = self.z_source if self.z_source is not None else float(np.median(p[:, 2]))
            self._grid = Grid(p, self.cfg.grid_step_m, self.cfg.margin_m, z)
        return self._grid

    def _candidates(self, seed: Arrival) -> dict[str, list[Arrival]]:
        span = self.max_travel_ns()
        by_node: dict[str, list[Arrival]] = {}
        lo = seed.t_ns - span
        for a in self._pending:
            if a.t_ns < lo:
                continue
            if a.t_ns > seed.t_ns + span:
                break
            if a.node == seed.node or a.sigma_s > MAX_SIGMA_S:
                continue
            by_node.setdefault(a.node, []).append(a)
        return by_node

    def _try_seed(self, seed: Arrival) -> Association | None:
        if seed.sigma_s > MAX_SIGMA_S:
            return None
        cands = self._candidates(seed)
        if len(cands) + 1 < self.cfg.min_nodes:
            return None
        best: Association | None = None
        for c in self.c_candidates:
            cand = self._try_seed_at(seed, cands, c)
            if cand is not None and (best is None or self._better(cand, best)):
                best = cand
        if best is None or not self._enough_nodes(best) or self._chance(best, cands) > self.cfg.max_chance:
            return None
        return best

    def _chance(self, cand: Association, cands: dict[str, list[Arrival]]) -> float:
        """Expected number of chance alignments as good as ``cand`` among the
        arrivals around its seed, if none of them came from a common source.

        Three arrivals (the seed and two others) always fit some source; each
        further node fits by chance with probability q = 2·τ·λ (τ: the fine
        tolerance, λ: that node's rate of arrivals around the seed). Multiplied
        by the number of ways to pick the triple and the extra nodes. A real
        shot heard by many nodes scores far below ``max_chance``; four stray
        sounds that happen to line up, in a busy neighbourhood, do not."""
        span_s = 2.0 * self.max_travel_ns() * 1e-9 or 1.0
        rates = {n: len(arr) / span_s for n, arr in cands.items()}
        tau = self._fine_tolerance(list(cand.arrivals))
        heard = [a.node for a in cand.arrivals[1:] if a.node in rates]
        k_extra = len(cand.arrivals) - 3
        if k_extra <= 0:
            return float("inf")
        q = sorted((min(1.0, 2.0 * tau * rates[n]) for n in heard), reverse=True)[:k_extra]
        others = len(rates)
        mean_n = float(np.mean([len(a) for a in cands.values()])) if cands else 0.0
        triples = math.comb(others, 2) * mean_n**2
        extras = math.comb(max(others - 2, 0), k_extra)
        return float(triples * extras * np.prod(q))

    def _try_seed_at(self, seed: Arrival, cands: dict[str, list[Arrival]], c: float) -> Association | None:
        """Grid search then refinement for one seed at speed of sound ``c``."""
        cfg = self.cfg
        grid = self._grid_for()
        d0 = grid.distances(seed.node, seed.pos)
        t_emit = -d0 / c                           # s relative to the seed's arrival
        tol_c = grid.step_m * 0.75 / c + self._fine_tolerance([seed] + [a for arr in cands.values() for a in arr])
        count = np.ones(len(d0))
        for node, arr in cands.items():
            times = np.array([(a.t_ns - seed.t_ns) * 1e-9 for a in arr])
            pred = t_emit + grid.distances(node, arr[0].pos) / c
            idx = np.searchsorted(times, pred)
            lo = np.abs(times[np.maximum(idx - 1, 0)] - pred)
            hi = np.abs(times[np.minimum(idx, len(times) - 1)] - pred)
            near = np.minimum(lo, hi)
            count += np.sqrt(np.clip(1.0 - near / tol_c, 0.0, None))
        if count.max() < cfg.min_nodes - 0.5:
            return None
        order = np.argsort(-count)
        tried: list[np.ndarray] = []
        best: Association | None = None
        for ci in order[:64]:
            if count[ci] < cfg.min_nodes - 0.5:
                break
            p = grid.cells[ci]
            if any(np.linalg.norm(p[:2] - q[:2]) < 4 * grid.step_m for q in tried):
                continue
            tried.append(p)
            cand = self._refine(seed, cands, p, tol_c, c)
            if cand is not None and (best is None or self._better(cand, best)):
                best = cand
            # every node with an arrival fits: nothing better can be found
            if best is not None and best.solution.n_used == len(cands) + 1:
                break
            if len(tried) >= MAX_CELLS:
                break
        return best

    def _enough_nodes(self, cand: Association) -> bool:
        """A real shot heard at some distance is heard by most nodes closer than
        that; a chance alignment of unrelated sounds is "heard" by a few nodes with
        silent ones between them. Of the nodes no further from the solution than
        the furthest node that heard it (and within ``hearing_range_m``), at least
        ``min_fraction`` must have heard it."""
        p = cand.solution.pos
        heard = {a.node for a in cand.arrivals}
        dist = {n: float(np.linalg.norm(q[:2] - p[:2])) for n, q in self._nodes.items()}
        reach = min(max(dist[n] for n in heard), self.cfg.hearing_range_m)
        near = sum(1 for n, d in dist.items() if d <= reach)
        return len(heard) >= max(self.cfg.min_nodes, int(np.ceil(self.cfg.min_fraction * near)))

    @staticmethod
    def _better(a: Association, b: Association) -> bool:
        na, nb = a.solution.n_used, b.solution.n_used
        return na > nb or (na == nb and a.solution.rms_s < b.solution.rms_s)

    def _fine_tolerance(self, arrivals: list[Arrival]) -> float:
        """How far (s) an arrival may be from a shot's prediction and still belong
        to it: ``tolerance_sigmas`` × the typical timing error (the arrivals' own,
        with the model error), never less than ``tolerance_s``."""
        sig = float(np.median([a.sigma_s for a in arrivals]))
        return max(self.cfg.tolerance_s, self.cfg.tolerance_sigmas * float(np.hypot(sig, self.model_sigma_s)))

    def _solve(self, seed: Arrival, chosen: list[Arrival], c: float, p: np.ndarray,
               max_reject: int | None) -> Solution | None:
        rec = np.array([a.pos for a in chosen])
        ts = np.array([(a.t_ns - seed.t_ns) * 1e-9 for a in chosen])
        sig = np.sqrt(np.array([a.sigma_s for a in chosen]) ** 2 + self.model_sigma_s**2)
        fixed = self.z_source if self.z_sigma is None else None
        prior = (self.z_source, self.z_sigma) if self.z_sigma is not None and self.z_source is not None else None
        return solve(rec, ts, sig, c, x0=p, z_source=fixed, z_prior=prior, min_used=self.cfg.min_nodes,
                     reject_sigma=max(self.cfg.tolerance_sigmas, self.cfg.tolerance_s / float(np.median(sig))),
                     max_reject=max_reject)

    def _refine(self, seed: Arrival, cands: dict[str, list[Arrival]], p0: np.ndarray,
                tol_c: float, c: float) -> Association | None:
        """From a grid cell: pick each node's arrival nearest the prediction, solve,
        and repeat with the fine tolerance; then keep only arrivals that fit."""
        cfg = self.cfg
        fine = self._fine_tolerance([seed] + [a for arr in cands.values() for a in arr])
        p = p0.copy()
        t0 = -np.linalg.norm(p - seed.pos) / c
        tol = tol_c
        sol: Solution | None = None
        chosen: list[Arrival] = []
        for it in range(3):
            chosen = [seed]
            for node, arr in cands.items():
                pred = t0 + np.linalg.norm(p - arr[0].pos) / c
                dt = [abs((a.t_ns - seed.t_ns) * 1e-9 - pred) for a in arr]
                k = int(np.argmin(dt))
                if dt[k] < tol:
                    chosen.append(arr[k])
            if len(chosen) < cfg.min_nodes:
                return None
            sol = self._solve(seed, chosen, c, p, None if it == 2 else 0)
            if sol is None:
                return None
            p, t0 = sol.pos, sol.t0_s
            tol = fine
        assert sol is not None
        keep = sol.used & (np.abs(sol.residuals_s) < fine)
        if not keep[0] or keep.sum() < cfg.min_nodes:
            return None
        chosen = [a for a, k in zip(chosen, keep) if k]
        sol = self._solve(seed, chosen, c, p, 0)
        if sol is None:
            return None
        return Association(arrivals=tuple(chosen), solution=sol, ref_ns=seed.t_ns)

    def _is_echo_ghost(self, cand: Association) -> bool:
        return any(_mirrors(cand, shot) for shot in self._recent)


def _without(cache: dict[int, Association | None], keys: set[int]) -> dict[int, Association | None]:
    """The cache less the seeds in ``keys`` and every candidate that used one of them."""
    return {k: v for k, v in cache.items()
            if k not in keys and (v is None or not keys & {a.key for a in v.arrivals})}


def _mirrors(ghost: Association, shot: Association) -> bool:
    """``ghost`` looks like echoes of ``shot``: the same emission time (within
    ``ECHO_T0_S``) and, at every node both used, a later arrival."""
    if ghost is shot or abs(shot.t0_ns - ghost.t0_ns) > ECHO_T0_S * 1e9:
        return False
    first = {a.node: a.t_ns for a in shot.arrivals}
    common = [a for a in ghost.arrivals if a.node in first]
    return bool(common) and all(a.t_ns > first[a.node] for a in common)
