"""Association: grouping single-node arrivals into shots.

An arrival is one node's onset. A shot is a set of arrivals, at most one per node,
all consistent with one source position and emission time. Association runs on a
buffer of pending arrivals, oldest first, behind a *watermark*: an arrival is only
decided once every node has reported audio up to the latest time any arrival of
the same shot could reach it (``t`` + the travel time over ``hearing_range_m``:
every node that hears a shot is within that range of it, however wide the
network).

Search, for one pending arrival ``a0`` (the seed) at node ``r0``:

1. *Coarse grid.* Every cell p of a 2-D grid over the network (only the cells
   within ``hearing_range_m`` of the seed: the cost of a search does not grow
   with the network's extent, nor do the nodes it considers — those within two
   hearing ranges) implies an
   emission time T(p) = t0 − |p − r0|/c and a predicted arrival time at every
   other node. Each node with a pending arrival near its prediction adds to the
   cell's score (1 for an exact fit, less further off, 0 beyond the cell's
   tolerance). When the air temperature is unknown the tolerance also covers the
   range of candidate speeds of sound.
2. *Local grid.* Around the best few distinct coarse cells, a fine grid (and,
   with unknown temperature, every candidate speed of sound) is scored the same
   way with a tighter tolerance.
3. *Refinement.* From the best local cell, each node's arrival nearest the
   prediction is taken, the solver is run (height with a prior, speed of sound
   fitted when unknown), and the choice is repeated with the fine tolerance. The
   arrivals within the fine tolerance are the shot's *core*.
4. *Extension.* Timing in real networks is often worse than the nodes' own
   error estimates (blocked paths, picks at 1 ms resolution, node positions a few
   metres off). Each node not in the core contributes its arrival nearest the
   prediction within ``extend_tolerance_s``; the robust solver (residual scale
   estimated from the data, Huber loss, one-at-a-time rejection) decides which
   stay. A far node whose sound came around a building is kept when the data show
   that such errors are the norm, and dropped when the other nodes agree to
   microseconds.

A candidate becomes a shot only if its core has at least ``min_nodes`` arrivals
with ``a0`` among them; if it is unlikely to be a chance alignment of unrelated
sounds (:meth:`Associator._priced`, at most ``max_chance``; a seed that fails only
this, within ``review_max_chance``, is noted — :meth:`Associator.came_close` —
and the engine's review associator searches from it among the put-aside
arrivals for a candidate to show a person); if most nodes closer
than the furthest node that heard it heard it too (``min_fraction``; a fine-grid
cell from which no such shot could come is not refined at all,
:meth:`Associator._plausible` — most searches in a busy network end there); if it fits
about as well as the network's shots do (:meth:`Associator._consistent`); and if
it is not an echo of a shot already formed: echoes off a wall are consistent with
a "ghost" source at the mirror image of the shooter that fires at the same
instant (``ECHO_T0_S``); the remains of a shot (its late, rejected arrivals and
their echoes) can line up into a copy of it close by (``DUPLICATE_T0_S``,
``DUPLICATE_M``), or into a candidate whose arrivals trail a formed shot's by less
than ``ECHO_WINDOW_S`` — such a candidate needs ``ECHO_MIN_FRACTION`` of that
shot's arrivals, and as many as it if it lies elsewhere (the next round of a burst
comes from the same place); and a line-up whose arrivals mostly follow louder
sounds at the same nodes is echoes (``ECHO_LEVEL_DB``). A candidate with a single
arrival beyond its unknowns must be made of first sounds (see below;
:meth:`Associator._thin_and_late`); its chance alignment is made smaller by a
burst's repeat of its timing (:meth:`Associator._repeat_factor`). A candidate made
only of first sounds is priced among the line-ups of first sounds (the smaller of
that and the count over every arrival).

A seed that is the first sound at its node is also searched among the other
nodes' first sounds only: in a fast burst with timing errors of a few ms,
mixtures of rounds fit about as well as the first round and crowd it out of the
grid's best cells.

Among the candidates of the ready seeds the best is formed first, so that an
echo or a stray sound cannot take arrivals from a real shot: the most arrivals
that are the first sound their node heard (not preceded, within
``ECHO_WINDOW_S``, by a sound as loud that no formed shot explains), then a
repeat of a formed shot's position, then the most arrivals, then the largest core,
then, of two whose arrivals differ at a node both use, the one that is earlier at every
such node (the direct sound arrives first; a reflection louder than a blocked direct
sound lines up with the other nodes into a ghost nearby), then (when still alike) the
far smaller chance alignment, then the better fit.
A seed that is part of a viable candidate is not searched itself (it would find
the same shot). When a shot is formed, the arrivals it left at its nodes within
the fine tolerance are duplicates of its own and are put aside, and the pending
arrivals that repeat its timing at enough of its nodes (another round of a
burst, up to ``REPEAT_WINDOW_S`` away) are searched again from its position — a
burst at 15 rounds/s is ambiguous for the grid search but not for this; from a
known position only the emission time is unknown, which is what their chance
alignment is computed for (:meth:`Associator._repeat_chance`). A formed shot
explains the sounds trailing it at its nodes that are weaker, or heard at one node
alone (its echoes), not the next rounds, which are as loud and reach every node the
same delay later.

The network's timing scale (how much worse than the nodes' own σ the shots fit)
is learnt from formed shots with spare arrivals and widens the fine tolerance;
the wind, pooled from the shots that can fit it (server/engine.py), is used as
known in the association's solves.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from common.config import AssociationConfig
from server.solver import Solution, residual_scale, solve, travel_times_s

#: A candidate whose emission time is within this (s) of a formed shot's, and
#: whose every arrival comes after that shot's at the same node, is its echoes.
ECHO_T0_S = 0.02
#: A candidate this close (s, m) to a formed shot is the same round found twice.
DUPLICATE_T0_S = 0.03
DUPLICATE_M = 60.0
#: Arrivals trailing a formed shot's at the same node by less than this (s) may be
#: its echoes.
ECHO_WINDOW_S = 0.6
#: A candidate made mostly of such trailing arrivals needs at least this fraction
#: of that shot's arrivals (the next round of a burst is as strong as the first).
ECHO_MIN_FRACTION = 0.5
#: An arrival preceded within ECHO_WINDOW_S by a sound this much louder (dB) at
#: the same node may be its echo.
ECHO_LEVEL_DB = 6.0
#: A candidate's arrival counts as preceded (by an unexplained sound at its node)
#: only if that sound was at most this much quieter (dB).
PRECEDE_DB = 3.0
#: Shots with at least this many more arrivals than unknowns teach the network's
#: timing scale; the median of the last SCALE_POOL such shots is used, at most
#: MAX_NET_SCALE.
SCALE_MIN_DOF = 3
SCALE_POOL = 15
MAX_NET_SCALE = 10.0
#: A formed shot's other rounds are looked for up to this long (s) from it, and
#: a burst's repeats of a candidate's timing counted within it: deliberate
#: semi-automatic fire puts 0.3–1.5 s between rounds (the Pittsburgh tests:
#: 0.4–1.2 s).
REPEAT_WINDOW_S = 2.0
#: Rounds of a burst are at least this far apart (s; 15 rounds/s is 67 ms): a
#: pattern repeated sooner is the shot's own echoes, not evidence of a burst.
MIN_ROUND_GAP_S = 0.06
#: Once SCALE_MIN_SHOTS shots have taught the network's scale, a candidate whose
#: own residual scale exceeds MIX_FACTOR × it is not a shot.
SCALE_MIN_SHOTS = 3
MIX_FACTOR = 2.0
#: Wind estimates pooled (the last this many shots that fitted the wind).
WIND_POOL = 20
#: Arrivals whose own timing is worse than this (s, 1-σ) are not used.
MAX_SIGMA_S = 0.005
#: Distinct coarse-grid peaks searched with the fine grid per seed, and of those
#: the best REFINE_PEAKS refined.
COARSE_PEAKS = 10
REFINE_PEAKS = 3
#: Fine grid: cell size as a fraction of the coarse step, and its half-width in
#: coarse steps.
FINE_FRACTION = 0.125
FINE_HALF_STEPS = 1.5
#: How far (m) a refined shot may be from the fine-grid cell it was refined
#: from, as :meth:`Associator._plausible` allows.
PLAUSIBLE_SLACK_M = 10.0
#: Fine peaks scoring below this fraction of the seed's best are not refined.
PEAK_FRACTION = 0.6
#: Of two candidates alike in arrivals, the one far less likely to be a chance
#: alignment (by more than this factor) is the better; otherwise the better fit.
CHANCE_TIE = 100.0


@dataclass(frozen=True)
class Arrival:
    """One node's onset as the server sees it. ``pos``: node position (3,) m ENU.

    ``snippet`` (optional): the node's raw samples around the onset, sample 0 at
    ``snippet_t0_ns``, at ``sample_rate_hz`` — for cross-correlation refinement.
    ``sigma_s``: the onset's own 1-σ timing error (clock and pick; arrivals
    worse than ``MAX_SIGMA_S`` are not used). ``path_sigma_s``: the 1-σ timing
    error the node's position uncertainty adds (σ along the ray / c); it weighs
    the arrival like the model error does, without making it unusable.
    ``peak_dbfs``: the onset's peak level (dBFS; 0 is full scale, where a
    clipped onset is); NaN when unknown (picks from another system): the rules
    that compare levels then take any two sounds as about as loud."""

    key: int
    node: str
    t_ns: int
    sigma_s: float
    pos: np.ndarray = field(repr=False)
    peak_dbfs: float = math.nan
    degraded: bool = False
    snippet: np.ndarray | None = field(default=None, repr=False, compare=False)
    snippet_t0_ns: int = 0
    sample_rate_hz: float = 0.0
    path_sigma_s: float = 0.0

    @property
    def own_sigma_s(self) -> float:
        """The arrival's timing error before the network's model error (s, 1 σ)."""
        return math.hypot(self.sigma_s, self.path_sigma_s)


@dataclass(frozen=True)
class Association:
    """A shot: its arrivals (those fitting the solution) and the solution, whose
    times are seconds relative to ``ref_ns``. ``n_core``: how many of the arrivals
    fit within the fine tolerance (the evidence the shot was formed on)."""

    arrivals: tuple[Arrival, ...]
    solution: Solution
    ref_ns: int
    n_core: int = 0
    #: Expected number of chance alignments as good as this one (see Associator._priced).
    chance: float = 0.0
    #: ``chance`` without a burst's repeats of its timing as evidence
    #: (Associator._repeat_factor): when only those repeats bring it under the
    #: threshold, they are re-checked once shots formed since may explain them
    #: as their echoes' (Associator._repeats_explained).
    chance_alone: float = 0.0

    @property
    def t0_ns(self) -> int:
        return self.ref_ns + int(round(self.solution.t0_s * 1e9))


#: Node-to-cell distances cached per grid window: at most this many floats in
#: all (bounded memory whatever the network's size), over at most GRID_CACHE
#: windows (a small network has one window, the whole area).
GRID_CACHE_FLOATS = 2_000_000
GRID_CACHE = 8


class Grid:
    """Candidate source positions (cells (N, 3), 2-D): the lattice points of
    spacing ``step_m`` from ``origin`` (x, y) with indices ``ix0..ix1`` ×
    ``iy0..iy1`` (inclusive). Caches node-to-cell distances up to ``max_floats``."""

    def __init__(self, origin: np.ndarray, step_m: float, ix: tuple[int, int], iy: tuple[int, int], z: float,
                 max_floats: int = GRID_CACHE_FLOATS) -> None:
        xs = origin[0] + step_m * np.arange(ix[0], ix[1] + 1)
        ys = origin[1] + step_m * np.arange(iy[0], iy[1] + 1)
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        self.cells = np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])
        self.step_m = step_m
        self.z = z
        self.max_floats = max_floats
        self._dist: dict[str, np.ndarray] = {}

    def distances(self, node: str, pos: np.ndarray) -> np.ndarray:
        d = self._dist.get(node)
        if d is None:
            diff = self.cells - pos
            d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            if (len(self._dist) + 1) * len(d) <= self.max_floats:
                self._dist[node] = d
        return d


def height_prior(node_z: np.ndarray, z0: float, z_sigma: float) -> tuple[float, float]:
    """(z0, σ) m of a source height prior around ``z0``: σ is ``z_sigma``
    widened by the spread (1.4826 × MAD) of the nodes' heights ``node_z`` (n,) m."""
    z = np.asarray(node_z, dtype=float)
    relief = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    return (float(z0), float(math.hypot(z_sigma, relief)))


def _time_or_none(x: object) -> int | None:
    """A kept wind estimate's time: an integer (UTC ns) or None. Raises
    ValueError for anything else."""
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"a wind estimate's time is not an integer of ns: {x!r}")
    return int(x)


class Associator:
    """Streaming associator. ``add`` arrivals, ``step(watermark_ns)`` to decide."""

    def __init__(self, cfg: AssociationConfig, c_mps: float | tuple[float, ...], z_source: float | None,
                 model_sigma_s: float = 0.0002, z_sigma: float | None = None,
                 wind_max_age_s: float = 0.0) -> None:
        """``c_mps``: the speed of sound, or several candidates when the air
        temperature is unknown (the search covers their range, and the solver fits
        c with a prior spanning it). ``z_source``: expected source height (m ENU);
        ``z_sigma``: None to hold it fixed (2-D), else the width (m) of a prior
        around it (3-D with a prior; widened by the spread of the nodes' own
        heights: hilly ground); ``z_source=None``: unconstrained 3-D.
        ``wind_max_age_s``: a shot's wind estimate counts for the searches
        within this long of it (0: for ever; see :meth:`wind_at`)."""
        self.cfg = cfg
        self.c_candidates = tuple(sorted(float(c) for c in np.atleast_1d(c_mps)))
        self.c = min(self.c_candidates)       # for the longest possible travel time
        self.c_nominal = float(np.median(self.c_candidates))
        self.c_unknown = len(self.c_candidates) > 1
        span = self.c_candidates[-1] - self.c_candidates[0]
        #: Prior width (m/s) on c when fitted during association (unknown temperature).
        self.c_sigma: float | None = max(2.0, span / 3.0) if self.c_unknown else None
        self.z_source = z_source
        self.z_sigma = z_sigma
        self.model_sigma_s = model_sigma_s
        self._pending: list[Arrival] = []
        #: Bumped whenever ``_pending`` changes (keys the cached fine tolerance).
        self._pver = 0
        #: True when the last :meth:`step` stopped at its deadline with work left.
        self.incomplete = False
        self._ftol: tuple[tuple[int, float] | None, float] = (None, 0.0)
        self._nodes: dict[str, np.ndarray] = {}
        #: Search grids by window (see :meth:`_grid_for`), most recent last.
        self._grids: dict[tuple[int, int, int, int], Grid] = {}
        #: Bounding box (x, y min and max) of the nodes, kept up to date as nodes come.
        self._bbox: tuple[np.ndarray, np.ndarray] | None = None
        #: The nodes' horizontal positions (N, 2) m (None: to be rebuilt); see :meth:`_plausible`.
        self._node_xy: np.ndarray | None = None
        #: Pending arrivals per node (time order), rebuilt when pending changes.
        self._by_node: dict[str, list[Arrival]] | None = None
        self._recent: list[Association] = []
        #: Each searched seed's candidate (None: nothing found), by arrival key,
        #: kept between steps while the seed is pending; and the seeds' times.
        self._cache: dict[int, Association | None] = {}
        self._seed_t: dict[int, int] = {}
        #: An upper bound of the searched seeds' times; the largest arrival key seen.
        self._seed_t_max = -(2**63)
        self._max_key = -(2**63)
        #: Every recent arrival's (time, peak level) per node, used or not: what
        #: came before a candidate's arrivals (see :meth:`_echo_lineup`).
        self._heard: dict[str, list[tuple[int, float]]] = {}
        self._unexplained: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        #: :meth:`_is_first` answers for the current index, by (arrival key, pending version).
        self._first_memo: dict[tuple[int, int], bool] = {}
        #: Arrivals whose search failed only the chance threshold (see came_close),
        #: and arrivals not to be searched from (see add).
        self._weak: set[int] = set()
        self._pool_only: set[int] = set()
        #: The network's timing-error scale (× the a-priori σ), learnt from recent
        #: well-determined shots: widens the fine tolerance where the deployment's
        #: timing is worse than its nodes claim (positions, wind, urban paths).
        self.net_scale = 1.0
        self._scales: list[float] = []
        self._model_sigmas: list[float] = []   # per learning shot (see learnt_model_sigma_s)
        #: The wind (east, north m/s) and its 1-σ (m/s), pooled over recent shots
        #: (see :meth:`note_wind`); (0, 0) and None until a shot has told.
        self.wind_mps: tuple[float, float] = (0.0, 0.0)
        self.wind_sigma_mps: float | None = None
        #: (information · wind, data information, the shot's time in UTC ns or
        #: None when not known: an estimate restored from before times were kept)
        self._winds: list[tuple[np.ndarray, np.ndarray, int | None]] = []
        self._wind_prior_sigma = 1.0
        # (beyond ~300 years is for ever in effect; the ns count stays an int)
        self.wind_max_age_ns = int(round(min(float(wind_max_age_s), 1e10) * 1e9))
        #: which of ``_winds`` the current wind_mps pools (see wind_at)
        self._wind_in_use: tuple[int, ...] | None = None

    # ------------------------------------------------------------- inputs
    def add(self, arrival: Arrival, seed: bool = True) -> None:
        """Queue an arrival. ``seed=False``: it may join a shot found from another
        arrival, but is not searched from itself (the review associator searches
        only from the arrivals whose own search came close; see :meth:`came_close`)."""
        self.add_node(arrival.node, arrival.pos)
        if not seed:
            self._pool_only.add(arrival.key)
        self._pending.append(arrival)
        self._pver += 1
        self._by_node = None
        self._heard.setdefault(arrival.node, []).append((arrival.t_ns, arrival.peak_dbfs))
        if self._cache:
            # a seed's search is kept between steps; one that could see this arrival
            # is redone (nothing to check when every searched seed is much earlier:
            # the usual case, arrivals come roughly in time order)
            span = self.max_travel_ns()
            if arrival.t_ns - span <= self._seed_t_max:
                self._cache = {k: v for k, v in self._cache.items()
                               if abs(self._seed_t.get(k, 0) - arrival.t_ns) > span}
        # an arrival handed back (its shot could not be recorded) un-forms that
        # shot; a new arrival (a key not seen before) cannot be part of one
        if arrival.key <= self._max_key:
            self._recent = [s for s in self._recent if all(a.key != arrival.key for a in s.arrivals)]
        else:
            self._max_key = arrival.key

    def add_node(self, node: str, pos: np.ndarray) -> None:
        """Make a node known (from its heartbeat) before it reports any arrival, so
        the search area and the waiting time cover it from the start."""
        old = self._nodes.get(node)
        if old is pos:                   # the same array as last time (the engine caches it)
            return
        if old is None or not (abs(old[0] - pos[0]) <= 0.5 and abs(old[1] - pos[1]) <= 0.5
                               and abs(old[2] - pos[2]) <= 0.5):
            pos = np.asarray(pos, dtype=float)
            moved = node in self._nodes
            self._nodes[node] = pos
            if self._bbox is None or moved:
                p = np.array(list(self._nodes.values()))
                self._bbox = (p[:, :2].min(axis=0), p[:, :2].max(axis=0))
            else:
                self._bbox = (np.minimum(self._bbox[0], pos[:2]), np.maximum(self._bbox[1], pos[:2]))
            self._grids = {}
            self._node_xy = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def came_close(self, key: int) -> bool:
        """Whether the search from arrival ``key`` found a candidate that failed
        only the chance threshold, with at most ``review_max_chance`` expected
        chance alignments (forgotten once asked): what a review searches from."""
        if key in self._weak:
            self._weak.discard(key)
            return True
        return False

    @property
    def oldest_pending_ns(self) -> int | None:
        """The time of the earliest arrival not decided yet (None: none pending).
        Every arrival before it has been formed into a shot or put aside for good."""
        return min((a.t_ns for a in self._pending), default=None)

    def note_formed(self, shot: Association) -> None:
        """A shot formed by another associator (the main one, for the review one)
        or before a restart (the engine gives back the last ones from its store):
        the sounds that trail it at its nodes are judged against it — its echoes
        are not line-ups of their own — as they are where it was formed."""
        self._recent.append(shot)
        for a in shot.arrivals:
            self.add_node(a.node, a.pos)
            self._heard.setdefault(a.node, []).append((a.t_ns, a.peak_dbfs))

    def adopt_network(self, other: Associator) -> None:
        """Take what ``other`` knows of the network — its nodes, timing scale,
        pooled wind, source height — as this associator's own (the review
        associator searches the main one's leftovers with the main one's view of
        the network; it forms too few shots to learn it). Searches made under a
        different view are redone."""
        for node, pos in other._nodes.items():
            self.add_node(node, pos)
        # the view is the wind estimates themselves, not the pool either one last
        # took (at whatever time its last search or shot was): a search is redone
        # when an estimate that could count at its seed's time has come or gone
        if other._view() != self._view():
            self._cache, self._seed_t = {}, {}
        self.net_scale, self.z_source = other.net_scale, other.z_source
        self.wind_mps, self.wind_sigma_mps = other.wind_mps, other.wind_sigma_mps
        self._scales, self._model_sigmas = list(other._scales), list(other._model_sigmas)
        self._winds = list(other._winds)
        self._wind_prior_sigma, self._wind_in_use = other._wind_prior_sigma, other._wind_in_use
        self.wind_max_age_ns = other.wind_max_age_ns

    def _view(self) -> tuple:
        """What the searches depend on of what was learnt: the timing scale, the
        source height, and the wind estimates with their times, prior and age."""
        winds = tuple((tuple(v.tolist()), tuple(i.ravel().tolist()), t) for v, i, t in self._winds)
        return (self.net_scale, self.z_source, winds, self._wind_prior_sigma, self.wind_max_age_ns)

    def max_travel_ns(self) -> int:
        """Longest time one shot's arrivals can be spread over: every node that
        hears it is within ``hearing_range_m`` of it, so they all hear it within
        that range's travel time after it was fired (at the slowest candidate
        speed of sound), however wide the network."""
        return int((self.cfg.hearing_range_m / self.c + 0.05) * 1e9)

    def wait_ns(self) -> int:
        """How far the watermark must be past an arrival before it is decided:
        the longest one shot's arrivals can be spread over
        (:meth:`max_travel_ns`), plus how far a decision looks ahead — the
        later rounds of a burst, up to ``REPEAT_WINDOW_S`` after a round, are
        evidence for it (:meth:`_repeat_factor`) and are searched from it once
        it is formed (:meth:`_repeats`) — plus ``latency_s``. With less, a live
        server would decide a round before the sounds that decide it offline
        had come, and the two would differ."""
        return self.max_travel_ns() + int((REPEAT_WINDOW_S + self.cfg.extend_tolerance_s + self.cfg.latency_s) * 1e9)

    def heard_near(self, sol: Solution, t0_ns: int) -> dict[str, float]:
        """Per node within ``hearing_range_m`` of a located source (``sol``: its
        position, speed of sound and wind; emitting at ``t0_ns``): the time (s)
        from the arrival predicted there to the nearest sound the node reported (pending or in a shot),
        if one is within ``extend_tolerance_s`` of it, whether or not a shot
        took it. (A node whose clock is off has its arrival left out of the
        shot, or spread over the fit; measured against the shot's solution,
        the offset shows.)"""
        nodes = [n for n, p in self._nodes.items()
                 if self._heard.get(n) and float(np.linalg.norm(p - sol.pos)) <= self.cfg.hearing_range_m]
        if not nodes:
            return {}
        tol_ns = self._extend_tolerance() * 1e9
        tau = travel_times_s(np.array([self._nodes[n] for n in nodes]), sol.pos, sol.c_mps or self.c, sol.wind_mps)
        out: dict[str, float] = {}
        for node, tau_s in zip(nodes, tau):
            # (times from the emission, in integer ns first: absolute UTC ns as
            # floats are only good to 256 ns)
            dt_ns = [(h - t0_ns) - tau_s * 1e9 for h, _ in self._heard[node]]
            d = min(dt_ns, key=abs)
            if abs(d) <= tol_ns:
                out[node] = float(d) * 1e-9
        return out

    def height_prior(self) -> tuple[float, float] | None:
        """(z0, σ) m of the source height prior, or None (fixed height or free 3-D).
        σ is ``z_sigma`` widened by the spread (1.4826 × MAD) of the nodes' own
        heights: on hilly ground the ground under the shooter is known no better."""
        if self.z_sigma is None or self.z_source is None:
            return None
        z = np.array([p[2] for p in self._nodes.values()]) if self._nodes else np.zeros(1)
        return height_prior(z, self.z_source, self.z_sigma)

    def note_wind(self, wind_mps: tuple[float, float], cov: np.ndarray, prior_sigma_mps: float,
                  t_ns: int | None = None) -> None:
        """Pool one shot's wind estimate (east, north m/s; covariance (2, 2), from a
        fit with the prior 0 ± ``prior_sigma_mps``; the shot's time ``t_ns``, UTC
        ns) with the last ``WIND_POOL`` ones: the prior is taken out of each and
        put back once, and the data are combined inverse-variance weighted. The
        pool is then the one at ``t_ns`` (:meth:`wind_at`)."""
        cov = np.asarray(cov, dtype=float)
        if cov.shape != (2, 2) or not np.all(np.isfinite(cov)) or np.linalg.det(cov) <= 0:
            return
        prior_info = np.eye(2) / prior_sigma_mps**2
        info = np.linalg.inv(cov)
        w = np.asarray(wind_mps, dtype=float)
        data_info = info - prior_info
        lam, vec = np.linalg.eigh(data_info)
        data_info = (vec * np.maximum(lam, 0.0)) @ vec.T
        self._winds = (self._winds + [(info @ w, data_info, None if t_ns is None else int(t_ns))])[-WIND_POOL:]
        self._wind_prior_sigma = float(prior_sigma_mps)
        self._wind_in_use = None
        self.wind_at(t_ns)

    def wind_at(self, t_ns: int | None) -> None:
        """Make :attr:`wind_mps` and :attr:`wind_sigma_mps` the pool of the wind
        estimates that count at ``t_ns`` (UTC ns): those of shots within
        ``wind_max_age_s`` of it (all of them when that is 0 or ``t_ns`` is
        None; an estimate of unknown time only then). With none, still air and
        None. Searches and final solutions call it with their shot's time, so a
        network whose last shots were hours ago starts from still air, not from
        a wind that has long changed."""
        age = self.wind_max_age_ns
        use = tuple(k for k, (_, _, t) in enumerate(self._winds)
                    if age <= 0 or t_ns is None or (t is not None and abs(int(t_ns) - t) <= age))
        if use == self._wind_in_use:
            return
        self._wind_in_use = use
        if not use:
            self.wind_mps, self.wind_sigma_mps = (0.0, 0.0), None
            return
        total = np.eye(2) / self._wind_prior_sigma**2 + sum(self._winds[k][1] for k in use)
        pooled_cov = np.linalg.inv(total)
        mean = pooled_cov @ sum(self._winds[k][0] for k in use)
        self.wind_mps = (float(mean[0]), float(mean[1]))
        self.wind_sigma_mps = float(np.sqrt(max(np.linalg.eigvalsh(pooled_cov).max(), 0.0)))

    def learnt(self) -> dict:
        """What the associator has learnt of the network from its recent shots
        (the timing scales and model errors behind :attr:`net_scale` and
        :attr:`learnt_model_sigma_s`, the wind estimates behind
        :attr:`wind_mps`), as plain JSON values: the engine keeps it in its store
        so that a restart carries it on (:meth:`restore_learnt`)."""
        return {"scales": list(self._scales), "model_sigmas": list(self._model_sigmas),
                "winds": [[v.tolist(), i.tolist(), t] for v, i, t in self._winds]}

    def restore_learnt(self, state: object, wind_prior_sigma_mps: float) -> None:
        """Take back what :meth:`learnt` gave. Raises ValueError (and changes
        nothing) when ``state`` is not such a value. A wind estimate kept
        without its shot's time (a store written before times were kept) is of
        unknown age: it counts only where estimates never lapse."""
        try:
            scales = [float(x) for x in state["scales"]][-SCALE_POOL:]            # type: ignore[index]
            sigmas = [float(x) for x in state["model_sigmas"]][-SCALE_POOL:]      # type: ignore[index]
            kept = state["winds"]                                                  # type: ignore[index]
            if any(len(w) not in (2, 3) for w in kept):
                raise ValueError("a wind estimate is not [wind, information] or [wind, information, time]")
            winds = [(np.array(w[0], dtype=float).reshape(2), np.array(w[1], dtype=float).reshape(2, 2),
                      _time_or_none(w[2] if len(w) > 2 else None)) for w in kept][-WIND_POOL:]
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a learnt network state ({type(exc).__name__}: {exc})") from None
        if not all(math.isfinite(x) and x > 0 for x in scales) or not all(math.isfinite(x) and x >= 0
                                                                          for x in sigmas) \
                or not all(np.all(np.isfinite(v)) and np.all(np.isfinite(i)) for v, i, _ in winds):
            raise ValueError("not a learnt network state (a value is not a finite, positive number)")
        self._scales, self._model_sigmas, self._winds = scales, sigmas, winds
        self.net_scale = float(np.clip(np.median(scales), 1.0, MAX_NET_SCALE)) if scales else 1.0
        self._wind_prior_sigma = float(wind_prior_sigma_mps)
        self._wind_in_use = None
        # the pool at the latest estimate's time, as it was when it was noted
        self.wind_at(max((t for *_, t in winds if t is not None), default=None))
        self._cache, self._seed_t = {}, {}

    def _learn(self, shot: Association) -> None:
        """Update :attr:`net_scale` from a formed shot with spare arrivals."""
        n_params = self._n_params()
        if shot.solution.n_used - n_params < SCALE_MIN_DOF:
            return
        self._scales = (self._scales + [shot.solution.scale])[-SCALE_POOL:]
        self.net_scale = float(np.clip(np.median(self._scales), 1.0, MAX_NET_SCALE))
        own = np.array([a.own_sigma_s for a in shot.arrivals])
        typical = shot.solution.scale * float(np.median(np.hypot(own, self.model_sigma_s)))
        model = math.sqrt(max(typical**2 - float(np.median(own)) ** 2, 0.0))
        self._model_sigmas = (self._model_sigmas + [model])[-SCALE_POOL:]

    @property
    def learnt_model_sigma_s(self) -> float | None:
        """The model timing error (s, 1 σ: what ``model_sigma_s`` stands for) that
        the network's recent shots with spare arrivals show: each shot's residual
        scale × its arrivals' σ, less their own σ in quadrature; the median of the
        last ``SCALE_POOL``. None until ``SCALE_MIN_SHOTS`` shots have taught it.
        Never less than ``model_sigma_s`` (a residual scale is at least 1), and,
        unlike :attr:`net_scale`, not capped: it tells an operator what to
        configure."""
        if len(self._model_sigmas) < SCALE_MIN_SHOTS:
            return None
        return float(np.median(self._model_sigmas))

    @property
    def learnt_from(self) -> int:
        """How many recent shots :attr:`learnt_model_sigma_s` is the median of."""
        return len(self._model_sigmas)

    @property
    def teaching_arrivals(self) -> int:
        """The fewest arrivals a formed shot needs to teach :attr:`net_scale` and
        :attr:`learnt_model_sigma_s`: ``SCALE_MIN_DOF`` more than its unknowns."""
        return self._n_params() + SCALE_MIN_DOF

    # ------------------------------------------------------------- decide
    def step(self, watermark_ns: int | None, deadline: float | None = None
             ) -> tuple[list[Association], list[Arrival]]:
        """Decide every pending arrival old enough for ``watermark_ns`` (None: all).

        ``deadline`` (``time.monotonic()`` value): stop searching seeds once it has
        passed (after at least one search) and return what was decided so far,
        with :attr:`incomplete` set; the searches done are kept, so the next call
        carries on and reaches the same decisions as one uninterrupted step.

        Among the ready seeds' candidates the best (see :meth:`_better`) is formed
        first (so that an echo or a stray sound cannot take arrivals from a real
        shot), then the next, until no ready seed yields a shot; the ready seeds left
        are put aside. Returns (new shots, arrivals put aside as unassociated:
        including second reports of a formed shot's sounds)."""
        shots: list[Association] = []
        rejected: list[Arrival] = []
        wait_ns = self.wait_ns()
        self._pending.sort(key=lambda a: a.t_ns)
        cache = self._cache
        self.incomplete = False
        searched = 0
        while True:
            ready = [a for a in self._pending
                     if watermark_ns is None or a.t_ns + wait_ns <= watermark_ns]
            if not ready:
                break
            # A seed that is already part of a viable candidate found from another
            # seed would mostly find that candidate again: it is searched only if
            # that candidate goes (formed or invalidated). A real shot is still
            # found from any of its arrivals not taken by a weaker candidate.
            covered = {a.key for v in cache.values() if v is not None and not self._is_echo(v)
                       for a in v.arrivals}
            # what precedes what, as of now: a seed's own choice among its peaks
            # (see _better) already prefers first sounds over a burst's later rounds
            self._index_preceding()
            for seed in ready:
                if seed.key not in cache and seed.key not in covered and seed.key not in self._pool_only:
                    if deadline is not None and searched and time.monotonic() > deadline:
                        self.incomplete = True
                        shots.sort(key=lambda s: s.t0_ns)
                        return shots, rejected
                    searched += 1
                    cand = self._try_seed(seed)
                    cache[seed.key] = cand
                    self._seed_t[seed.key] = seed.t_ns
                    self._seed_t_max = max(self._seed_t_max, seed.t_ns)
                    if cand is not None and not self._is_echo(cand):
                        covered |= {a.key for a in cand.arrivals}
            # A seed searched before the shots formed since may have passed on a
            # burst's repeats that those shots now explain as their echoes':
            # searched again (decided at once, every seed is searched before any
            # shot forms).
            stale = [k for k, v in cache.items() if v is not None and self._repeats_explained(v)]
            if stale:
                for key in stale:
                    del cache[key]
                continue
            # An arrival whose own search found nothing may still belong to a shot
            # found from another seed; only when no ready seed yields a shot are
            # the ready arrivals left over put aside (echoes, local sounds, …).
            cands = [cache[a.key] for a in ready if cache.get(a.key) is not None]
            cands = [c for c in cands if not self._is_echo(c) and not self._echo_lineup(c)]
            cands = [c for c in cands if not self._thin_and_late(c)]
            if not cands:
                # put aside only what no later seed (up to a shot's spread after
                # it, not yet ready) could still take into a shot
                settled_ns = None if watermark_ns is None else watermark_ns - wait_ns - self.max_travel_ns()
                done = [a for a in ready if settled_ns is None or a.t_ns <= settled_ns]
                rejected.extend(done)
                keys = {a.key for a in done}
                self._pending = [a for a in self._pending if a.key not in keys]
                self._pver += 1
                self._by_node = None
                self._cache = {k: v for k, v in cache.items() if k not in keys}
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
            # a second report of the same sound at a node (within the fine
            # tolerance of the arrival used there) is that node's duplicate
            dups = self._duplicates(best)
            rejected.extend(dups)
            used |= {a.key for a in dups}
            self._pending = [a for a in self._pending if a.key not in used]
            self._pver += 1
            self._by_node = None
            cache = self._cache = _without(cache, used)
            shots.append(best)
            self._recent.append(best)
            self._learn(best)
            self._repeats(best, cache)
        if self._recent:
            horizon = (self._pending[0].t_ns if self._pending else (watermark_ns or 0)) - wait_ns - int(5e9)
            self._recent = [s for s in self._recent if s.t0_ns > horizon]
        live = {a.key for a in self._pending}
        self._cache = {k: v for k, v in self._cache.items() if k in live}
        self._pool_only &= live
        self._seed_t = {k: t for k, t in self._seed_t.items() if k in self._cache}
        keep_from = (self._pending[0].t_ns if self._pending else (watermark_ns or 0)) - 2 * wait_ns
        self._heard = {n: [h for h in v if h[0] >= keep_from] for n, v in self._heard.items()}
        shots.sort(key=lambda s: s.t0_ns)
        return shots, rejected

    # ---------------------------------------------------------- internals
    def _grid_for(self, seed_pos: np.ndarray) -> Grid:
        """The search grid for a seed heard at ``seed_pos``: the cells of the
        network's lattice (its nodes' bounding box plus ``margin_m``) within
        ``hearing_range_m`` (+ one step) of the seed — the shot it heard was no
        further — so a seed's search costs the same however far the network
        extends. A small network's window is its whole area (one grid, cached)."""
        assert self._bbox is not None
        step = self.cfg.grid_step_m
        origin = self._bbox[0] - self.cfg.margin_m
        n_max = np.floor((self._bbox[1] + self.cfg.margin_m - origin) / step + 1e-9).astype(int)
        r = self.cfg.hearing_range_m + step
        lo = np.maximum(np.floor((seed_pos[:2] - r - origin) / step).astype(int), 0)
        hi = np.minimum(np.ceil((seed_pos[:2] + r - origin) / step).astype(int), n_max + 1)
        key = (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]))
        grid = self._grids.pop(key, None)
        if grid is None:
            z = self.z_source if self.z_source is not None else float(np.median([p[2] for p in self._nodes.values()]))
            grid = Grid(origin, step, (key[0], key[1]), (key[2], key[3]), z)
        self._grids[key] = grid                   # most recently used last
        while len(self._grids) > GRID_CACHE:
            self._grids.pop(next(iter(self._grids)))
        return grid

    def _pending_by_node(self) -> dict[str, list[Arrival]]:
        if self._by_node is None:
            by: dict[str, list[Arrival]] = {}
            for a in sorted(self._pending, key=lambda a: a.t_ns):
                by.setdefault(a.node, []).append(a)
            self._by_node = by
        return self._by_node

    def _reach_s(self, dist_m: float) -> float:
        """How far (s) from a seed an arrival at a node ``dist_m`` from the seed's
        node may be and still come from the same source: the travel time over that
        distance, and over no more than ``hearing_range_m`` (the source is no
        further from either node), at the slowest candidate speed of sound, plus
        the extension tolerance and 10 ms."""
        return min(dist_m, self.cfg.hearing_range_m) / self.c + (self._extend_tolerance() + 0.01)

    def _candidates(self, seed: Arrival) -> dict[str, list[Arrival]]:
        """Per other node, the pending arrivals that could come from the same
        source as ``seed``: within :meth:`_reach_s` of it."""
        far = 2.0 * self.cfg.hearing_range_m
        by_node: dict[str, list[Arrival]] = {}
        for node, arr in self._pending_by_node().items():
            if node == seed.node:
                continue
            dist = float(np.linalg.norm(arr[0].pos[:2] - seed.pos[:2]))
            if dist > far:                      # both cannot have heard one shot
                continue
            reach_ns = int(self._reach_s(dist) * 1e9)
            i = bisect.bisect_left(arr, seed.t_ns - reach_ns, key=lambda a: a.t_ns)
            j = bisect.bisect_right(arr, seed.t_ns + reach_ns, key=lambda a: a.t_ns)
            got = [a for a in arr[i:j] if a.sigma_s <= MAX_SIGMA_S]
            if got:
                by_node[node] = got
        # in order of their first arrival, as the pending list is
        return dict(sorted(by_node.items(), key=lambda kv: kv[1][0].t_ns))

    def _try_seed(self, seed: Arrival) -> Association | None:
        if seed.sigma_s > MAX_SIGMA_S:
            return None
        self.wind_at(seed.t_ns)
        cands = self._candidates(seed)
        if len(cands) + 1 < self.cfg.min_nodes:
            return None
        best: Association | None = None
        searches = [cands]
        if self._is_first(seed):
            # a shot's sound is the first its nodes hear of it: also search among
            # the other nodes' first sounds only. In a fast burst with timing
            # errors of a few ms, mixtures of rounds fit about as well as the
            # first round does and crowd it out of the grid's best cells; among
            # first sounds there is nothing to mix it with.
            first = {n: kept for n, arr in cands.items() if (kept := [a for a in arr if self._is_first(a)])}
            if len(first) + 1 >= self.cfg.min_nodes and sum(map(len, first.values())) < sum(map(len, cands.values())):
                searches.append(first)
        best_key = None
        priced = False                      # best.chance computed (see _better)
        for pool in searches:
            for p, c in self._peaks(seed, pool):
                if not self._plausible(seed, pool, p, c):
                    continue
                cand = self._refine(seed, pool, p, c)
                if cand is None:
                    continue
                key = self._rank(cand)
                if best is None or key > best_key:
                    best, best_key, priced = cand, key, False
                elif key == best_key:
                    # alike in arrivals: the rest of the ranking decides (see
                    # _better: the earlier path, then the chance alignment)
                    if not priced:
                        best, priced = self._priced(best, cands), True
                    cand = self._priced(cand, cands)
                    if self._better(cand, best):
                        best = cand
        if best is None or not self._enough_nodes(best) or not self._consistent(best):
            return None
        if len(searches) > 1 and all(self._is_first(a) for a in best.arrivals):
            # made of first sounds only: it is one of the line-ups of first sounds,
            # so that is the population a coincidence would have come from too
            best = self._priced(best, cands, searches[1])
        elif not priced:
            best = self._priced(best, cands)
        if not best.chance <= self.cfg.max_chance:        # (NaN: not a shot)
            if best.chance <= self.cfg.review_max_chance:
                self._weak.add(seed.key)
            return None
        return best

    def _peaks(self, seed: Arrival, cands: dict[str, list[Arrival]]) -> list[tuple[np.ndarray, float]]:
        """The best (position, speed of sound) starting points for ``seed``:
        coarse grid, then a fine grid around its best distinct cells."""
        cfg = self.cfg
        fine = self._fine_tolerance()
        rel = {n: np.array([(a.t_ns - seed.t_ns) * 1e-9 for a in arr]) for n, arr in cands.items()}
        pos = {n: arr[0].pos for n, arr in cands.items()}
        c = self.c_nominal
        if any(self.wind_mps):
            # the pooled wind, to first order: it moves every cell's predicted
            # time at a node, relative to the seed's node, by the same
            # -w·(r_node - r_seed)/c² (the cell's own position cancels), so the
            # grids compare still-air predictions with times shifted by that
            wx, wy = self.wind_mps
            rel = {n: t + (wx * (pos[n][0] - seed.pos[0]) + wy * (pos[n][1] - seed.pos[1])) / c**2
                   for n, t in rel.items()}
        grid = self._grid_for(seed.pos)
        d0 = grid.distances(seed.node, seed.pos)
        # c-range: half the spread of 1/c over the candidates (s/m)
        dc = 0.5 * (1.0 / self.c_candidates[0] - 1.0 / self.c_candidates[-1])
        base = fine + grid.step_m * 0.9 / c
        score = np.ones(len(d0))            # soft: how well (ranks cells)
        hits = np.ones(len(d0))             # hard: how many nodes fit at all
        for node, times in rel.items():
            dd = grid.distances(node, pos[node]) - d0
            pred = dd / c
            tol = base + np.abs(dd) * dc if dc > 0 else base
            fit, w = _soft_hits(times, pred, tol)
            score[fit] += w
            hits[fit] += 1.0
        need = cfg.min_nodes - 0.5
        score[hits < need] = 0.0
        if score.max() <= 0.0:
            return []
        order = np.argsort(-score)[:256]
        picked: list[np.ndarray] = []
        for ci in order:
            if score[ci] <= 0.0 or len(picked) >= COARSE_PEAKS:
                break
            p = grid.cells[ci]
            if any(abs(p[0] - q[0]) < 3.5 * grid.step_m and abs(p[1] - q[1]) < 3.5 * grid.step_m for q in picked):
                continue
            picked.append(p)
        # fine grid (and every candidate c) around each coarse peak
        h = grid.step_m * FINE_HALF_STEPS
        fstep = max(0.5, grid.step_m * FINE_FRACTION)
        offs = np.arange(-h, h + 1e-9, fstep)
        ox, oy = np.meshgrid(offs, offs, indexing="xy")
        ftol = fine + fstep * 0.9 / c
        out: list[tuple[np.ndarray, float]] = []
        nodes = list(rel)
        npos = np.array([pos[n] for n in nodes])
        # every candidate arrival, node by node (each node's in time order)
        flat_t = np.concatenate([rel[n] for n in nodes])
        flat_i = np.repeat(np.arange(len(nodes)), [len(rel[n]) for n in nodes])
        reach = ftol + 2.0 * h * math.sqrt(2.0) / self.c
        for p in picked:
            # per node, only the arrivals the fine grid around p can reach
            dd_p = _norm_rows(npos - p) - float(np.linalg.norm(seed.pos - p))
            win = reach + np.abs(dd_p) * dc
            idx = np.flatnonzero(np.abs(flat_t - dd_p[flat_i] / c) <= win[flat_i])
            ni = flat_i[idx]
            counts = np.bincount(ni, minlength=len(nodes))
            # a node with nothing in reach adds nothing to any cell: leave it out
            live = np.flatnonzero(counts)
            if len(live) + 1 < need:
                continue                    # no cell can fit enough nodes
            # (live nodes, most arrivals in reach) s, padded with inf
            times = np.full((len(live), int(counts.max())), np.inf)
            times[np.searchsorted(live, ni), np.arange(len(ni)) - np.searchsorted(ni, ni)] = flat_t[idx]
            cells = np.column_stack([p[0] + ox.ravel(), p[1] + oy.ravel(), np.full(ox.size, grid.z)])
            dist0 = _norm_rows(cells - seed.pos)
            diff = cells[:, None, :] - npos[live][None, :, :]
            dd = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff)) - dist0[:, None]      # (cells, nodes)
            best_s, best = -1.0, (p, c)
            for cc in self.c_candidates:
                near = np.min(np.abs(times[None, :, :] - (dd / cc)[:, :, None]), axis=2)
                w = np.sqrt(np.clip(1.0 - near / ftol, 0.0, None))
                s = 1.0 + np.sum(w, axis=1)
                s[1.0 + np.count_nonzero(w, axis=1) < need] = 0.0
                k = int(np.argmax(s))
                if s[k] > best_s:
                    best_s, best = float(s[k]), (cells[k], cc)
            if best_s > 0.0:
                out.append((best_s, best))
        if not out:
            return []
        top = max(s for s, _ in out)
        out.sort(key=lambda x: -x[0])
        # a peak much weaker than the best one is another (partial) alignment
        return [b for s, b in out if s >= PEAK_FRACTION * top][:REFINE_PEAKS]

    def _plausible(self, seed: Arrival, cands: dict[str, list[Arrival]], p: np.ndarray, c: float) -> bool:
        """Whether a shot refined from the fine-grid cell ``p`` (speed of sound
        ``c``) could pass :meth:`_enough_nodes`: for some distance r, at least
        that of the seed's node, the seed and the nodes with an arrival within
        the extension tolerance of the cell's prediction (and within r) are at
        least ``min_fraction`` of all the nodes within r. The refined shot is a
        solve away from the cell: ``PLAUSIBLE_SLACK_M`` on every distance and
        on the prediction (2 × that / c on the tolerance), in its favour. Most
        searches of a busy network start from sounds that one node heard alone;
        the line-ups of other sounds they find span nodes that heard nothing,
        and are dropped here rather than refined (several solves each) into
        candidates :meth:`_enough_nodes` would refuse."""
        f = self.cfg.min_fraction
        if f <= 0.0:
            return True
        if self._node_xy is None:
            self._node_xy = np.array([q[:2] for q in self._nodes.values()], dtype=float)
        slack = PLAUSIBLE_SLACK_M
        tol = self._extend_tolerance() + 2.0 * slack / c
        t0 = -float(self._travel_s(seed.pos[None, :], p, c)[0])
        d_fit = [float(np.hypot(a.pos[0] - p[0], a.pos[1] - p[1])) for a in self._pick(seed, cands, p, t0, c, tol)]
        if len(d_fit) + 1 < self.cfg.min_nodes:
            return False
        d_all = np.sort(np.hypot(self._node_xy[:, 0] - p[0], self._node_xy[:, 1] - p[1]))
        d_fit.sort()
        d0 = float(np.hypot(seed.pos[0] - p[0], seed.pos[1] - p[1]))
        for r in [d0] + [d for d in d_fit if d > d0]:
            heard = 1 + int(np.searchsorted(d_fit, r + slack, side="right"))
            near = int(np.searchsorted(d_all, min(r, self.cfg.hearing_range_m) - slack, side="right"))
            if heard >= max(self.cfg.min_nodes, math.ceil(f * near)):
                return True
        return False

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

    def _repeats_explained(self, cand: Association) -> bool:
        """``cand`` passed the chance threshold on a burst's evidence (other sounds
        repeating its timing) that the shots formed since explain: it is made
        of their echoes, and their rounds repeat (:meth:`_repeat_factor`). Its
        search is to be redone as things are now."""
        if cand.chance_alone <= self.cfg.max_chance or self._formed_echo_delays(cand) is None:
            return False
        return cand.chance_alone * self._repeat_factor(cand) > self.cfg.max_chance

    def _priced(self, cand: Association, *pools: dict[str, list[Arrival]]) -> Association:
        """``cand`` with its ``chance``: the expected number of chance alignments
        as good as ``cand`` among the arrivals around its seed (each of
        ``pools``: per other node, the arrivals it could be made of; the
        smallest count of them is taken), if none of them came from a common
        source.

        The seed and ``u − 1`` arrivals at other nodes (u unknowns: x, y, t0, and
        c when the temperature is unknown) always fit some source; each further
        node fits by chance with probability q = 2·τ·λ (λ: that node's rate of
        arrivals around the seed). The count of such choices is divided by the
        number of ways one alignment of k nodes contains the seed's
        (u − 1)-tuples. Evaluated twice, and the smaller taken: for the core (k
        arrivals within the fine tolerance τ) and for all the arrivals kept (τ:
        the largest residual among them). A real shot heard by many nodes scores
        far below ``max_chance``; a few stray sounds that happen to line up, in a
        busy neighbourhood, do not. Times the burst's evidence
        (:meth:`_repeat_factor`; without it: ``chance_alone``)."""
        alone = min(self._chance_count(cand, cands) for cands in pools)
        # (a factor that underflows to 0 must not make an infinite count NaN)
        chance = alone * self._repeat_factor(cand) if math.isfinite(alone) else alone
        return replace(cand, chance=chance, chance_alone=alone)

    def _chance_count(self, cand: Association, cands: dict[str, list[Arrival]]) -> float:
        """:meth:`_priced`'s count among one pool, before a burst's evidence."""
        u = self._n_unknowns_2d()
        seed = cand.arrivals[0]
        rates: list[float] = []
        counts: list[int] = []
        for n, arr in cands.items():
            # the window _candidates took them from
            window = 2.0 * self._reach_s(float(np.linalg.norm(arr[0].pos[:2] - seed.pos[:2])))
            rates.append(len(arr) / max(window, 1e-3))
            counts.append(len(arr))
        others = len(rates)
        if others < u:
            return float("inf")
        mean_n = float(np.mean(counts))
        tuples = math.comb(others, u - 1) * mean_n ** (u - 1)
        rates.sort(reverse=True)
        tau_all = max(self._fine_tolerance(), float(np.max(np.abs(cand.solution.residuals_s[cand.solution.used]))))
        out = float("inf")
        for k, tau in ((cand.n_core, self._fine_tolerance()), (cand.solution.n_used, tau_all)):
            k_extra = k - u
            if k_extra <= 0 or others < u - 1 + k_extra:
                continue
            q = [min(1.0, 2.0 * tau * r) for r in rates[:k_extra]]
            extras = math.comb(others - (u - 1), k_extra)
            overlap = math.comb(k - 1, u - 1)
            out = min(out, float(tuples * extras * np.prod(q) / overlap))
        return out

    def _repeat_factor(self, cand: Association) -> float:
        """Evidence from a burst: the probability that, by chance, other recent
        sounds (pending or already in a shot) repeat ``cand``'s timing at every
        one of its nodes (the same delay Δ after or before each of its arrivals,
        within the fine tolerance, ``MIN_ROUND_GAP_S`` ≤ |Δ| ≤
        ``REPEAT_WINDOW_S``), given that some do; 1 when none do. A repeat
        that formed shots explain — ``cand`` is their echoes, and they repeat
        (:meth:`_formed_echo_delays`, :meth:`_echoes_repeat`) — is not counted.

        A burst fires from one place, so its rounds repeat one pattern of arrival
        times across the nodes. For unrelated sounds, once Δ is fixed by one of the
        seed node's other sounds (``n_delays`` choices), each other node matches
        with probability q = 2·τ·λ (λ: its rate of sounds within
        ``REPEAT_WINDOW_S``); when k of the delays are matched at every node, the
        factor is C(``n_delays``, k) × (Π q)^k — each further round repeated is
        further evidence (a line-up that mixes rounds repeats less often than
        the rounds themselves: it runs out of rounds at one end). It lets a
        few-node shot that is one of several rounds stand out from a chance
        line-up, where a single redundant arrival cannot. (Every node must
        repeat: with fewer, the repeated line-ups of echoes and of mixed rounds
        that a regular burst produces passed on the Pittsburgh recordings.)"""
        tol_ns = self._fine_tolerance() * 1e9
        window_ns = REPEAT_WINDOW_S * 1e9
        seed = cand.arrivals[0]
        arr = self._heard_times(x.node for x in cand.arrivals)
        deltas = [int(t - seed.t_ns) for t in arr[seed.node]
                  if MIN_ROUND_GAP_S * 1e9 <= abs(int(t - seed.t_ns)) <= window_ns]
        if not deltas:
            return 1.0
        others = cand.arrivals[1:]
        rates = []
        for x in others:
            n = int(np.count_nonzero(np.abs(arr[x.node] - x.t_ns) <= window_ns))
            rates.append(n / (2.0 * REPEAT_WINDOW_S))
        matched = [d for d in deltas if all(np.any(np.abs(arr[x.node] - (x.t_ns + d)) <= tol_ns) for x in others)]
        shadow = self._formed_echo_delays(cand) if matched else None
        k = sum(1 for d in matched if not (shadow is not None and self._echoes_repeat(shadow, d, tol_ns)))
        if k == 0:
            return 1.0
        q = float(np.prod([min(1.0, 2.0 * tol_ns * 1e-9 * r) for r in rates]))
        return float(min(1.0, math.comb(len(deltas), k) * q**k))

    def _formed_echo_delays(self, cand: Association) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """Could ``cand`` be the echoes of formed shots? Per arrival's node: the
        times (ns) of the formed arrivals there that it trails (by up to
        :meth:`max_travel_ns`: a reflection is a path within hearing range) and
        is weaker than by ``PRECEDE_DB``, and the times of every formed arrival
        there. None when some arrival has no such sound before it, or its level
        (or theirs) is unknown — then nothing says it is an echo."""
        span = self.max_travel_ns()
        formed = self._formed_by_node()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for x in cand.arrivals:
            heard = formed.get(x.node, ())
            trailed = [t for t, lv, _ in heard
                       if 0 < x.t_ns - t <= span and x.peak_dbfs <= lv - PRECEDE_DB]   # False with NaN
            if not trailed:
                return None
            out[x.node] = (np.array(trailed, dtype=np.int64), np.array([t for t, _, _ in heard], dtype=np.int64))
        return out

    def _formed_by_node(self) -> dict[str, list[tuple[int, float, Association]]]:
        """Per node, the arrivals of the recent formed shots there: (time ns,
        peak dBFS, the shot)."""
        out: dict[str, list[tuple[int, float, Association]]] = {}
        for shot in self._recent:
            for x in shot.arrivals:
                out.setdefault(x.node, []).append((x.t_ns, x.peak_dbfs, shot))
        return out

    @staticmethod
    def _echoes_repeat(shadow: dict[str, tuple[np.ndarray, np.ndarray]], delta_ns: int, tol_ns: float) -> bool:
        """A repeat of a candidate's timing ``delta_ns`` later (or earlier) that its
        echo reading explains: at every node, one of the formed sounds it trails
        is repeated ``delta_ns`` later by a formed sound, so the same reflection
        of that one lies where the repeat is. A burst's echoes repeat its rhythm
        at every node; that repetition is the burst's, and says nothing more
        about the echoes' line-up."""
        for trailed, heard in shadow.values():
            if not np.any(np.abs(heard[None, :] - (trailed[:, None] + delta_ns)) <= tol_ns):
                return False
        return True

    def _thin_and_late(self, cand: Association) -> bool:
        """``cand`` has a single arrival beyond its unknowns (x, y, t0, and c when
        the temperature is unknown) and one of its arrivals came after an
        unexplained sound at its node about as loud (:meth:`_preceded`). With one
        redundant arrival, timing alone cannot tell a shot from a line-up of
        echoes and other rounds; a shot's sound is the first its nodes hear of
        it, so such a thin candidate must be made of first sounds only."""
        u = self._n_unknowns_2d()
        return cand.solution.n_used <= u + 1 and self._preceded(cand) > 0

    def _better(self, a: Association, b: Association) -> bool:
        """Ranking: most arrivals that are first at their node (see
        :meth:`_preceded`), then a repeat of a formed shot's position (a burst),
        then most arrivals, then the largest core, then the one whose arrivals,
        where the two differ at a node both use, are all earlier
        (:func:`_earlier_path`), then the far smaller chance alignment (by more
        than ``CHANCE_TIE``: e.g. a shot whose timing the other rounds of its
        burst repeat), then the smallest rms. With a single redundant arrival
        the rms is one residual: it says little."""
        ka, kb = self._rank(a), self._rank(b)
        if ka != kb:
            return ka > kb
        tol_ns = self._fine_tolerance() * 1e9
        if _earlier_path(a, b, tol_ns):
            return True
        if _earlier_path(b, a, tol_ns):
            return False
        if not (b.chance <= CHANCE_TIE * a.chance and a.chance <= CHANCE_TIE * b.chance):
            return a.chance < b.chance
        return a.solution.rms_s < b.solution.rms_s

    def _rank(self, cand: Association) -> tuple[int, bool, int, int]:
        """The part of :meth:`_better`'s ranking that comes before the earlier
        path and the chance alignment."""
        return (cand.solution.n_used - self._preceded(cand), self._repeat(cand), cand.solution.n_used, cand.n_core)

    def _repeat(self, cand: Association) -> bool:
        """``cand`` is another round from where a formed shot was, shortly before
        or after it (a burst fires from one place)."""
        return any(abs(cand.t0_ns - s.t0_ns) <= REPEAT_WINDOW_S * 1e9
                   and float(np.linalg.norm(cand.solution.pos[:2] - s.solution.pos[:2])) < DUPLICATE_M
                   for s in self._recent)

    def _index_preceding(self) -> None:
        """Index, per node, the pending arrivals not explained as echoes of a formed
        shot: trailing its arrival at that node by at most ``ECHO_WINDOW_S`` and
        either weaker than it (by ``PRECEDE_DB``; any, when the arrivals carry no
        levels, e.g. picks from another system) or not repeated at the shot's
        other nodes (:meth:`_round_delay`). An echo is weaker than its sound,
        or, where a wall reflects more than a building blocking the direct path
        lets through, louder but heard at that node alone; the next round of a
        burst is as loud and reaches every node the same delay later, and stays
        a sound that later line-ups at its node come after."""
        window = ECHO_WINDOW_S * 1e9
        trail = self._formed_by_node()
        heard = self._heard_times(self._heard) if trail else {}
        idx: dict[str, list[tuple[int, float]]] = {}
        for x in self._pending:
            if any(0 < x.t_ns - t <= window
                   and (not x.peak_dbfs > lv - PRECEDE_DB        # weaker, or a level unknown
                        or not self._round_delay(shot, x.node, x.t_ns - t, heard))
                   for t, lv, shot in trail.get(x.node, ())):
                continue
            idx.setdefault(x.node, []).append((x.t_ns, x.peak_dbfs))
        self._unexplained = {n: (np.array([t for t, _ in v], dtype=np.int64), np.array([lv for _, lv in v]))
                             for n, v in idx.items()}
        self._first_memo = {}

    def _heard_times(self, nodes) -> dict[str, np.ndarray]:
        """Per node of ``nodes``, the times (ns, int64) of the sounds it has
        reported lately (pending or in a shot; see ``_heard``)."""
        return {n: np.array([t for t, _ in self._heard.get(n, ())], dtype=np.int64) for n in nodes}

    def _round_delay(self, shot: Association, node: str, delay_ns: int, heard: dict[str, np.ndarray]) -> bool:
        """A sound ``delay_ns`` after ``shot``'s arrival at ``node`` could be its
        burst's next round: at least half of the shot's other nodes heard
        something the same delay after their arrival (within the fine
        tolerance). A reflection is heard at its own node only."""
        fine = self._fine_tolerance() * 1e9
        others = [a for a in shot.arrivals if a.node != node]
        hits = sum(1 for a in others
                   if a.node in heard and np.any(np.abs(heard[a.node] - (a.t_ns + delay_ns)) <= fine))
        return 2 * hits >= len(others)

    def _preceded(self, cand: Association) -> int:
        """How many of ``cand``'s arrivals come shortly (≤ ``ECHO_WINDOW_S``) after
        another pending, unexplained arrival at the same node that was about as
        loud or louder (≥ its level − ``PRECEDE_DB``): not first (:meth:`_is_first`).
        A shot's sound is the first its nodes hear of it; a line-up of echoes, or
        of different rounds of a burst at different nodes, comes after sounds
        nothing has explained."""
        return sum(1 for x in cand.arrivals if not self._is_first(x))

    def _is_first(self, x: Arrival) -> bool:
        """``x`` is not preceded (within ``ECHO_WINDOW_S``, beyond the fine
        tolerance) at its node by another pending sound about as loud that no
        formed shot explains (see :meth:`_index_preceding`)."""
        got = self._unexplained.get(x.node)
        if got is None:
            return True
        memo = (x.key, self._pver)
        first = self._first_memo.get(memo)
        if first is None:
            t, level = got
            fine = self._fine_tolerance() * 1e9
            first = not bool(np.any((t < x.t_ns - fine) & (t >= x.t_ns - ECHO_WINDOW_S * 1e9)
                                    & ~(level < x.peak_dbfs - PRECEDE_DB)))   # as loud, or unknown
            self._first_memo[memo] = first
        return first

    def sigma(self, arrivals: list[Arrival] | tuple[Arrival, ...]) -> np.ndarray:
        """Each arrival's 1-σ timing error (s) in a solve: its own (onset and
        node position) and the network's model error, in quadrature."""
        return np.sqrt(np.array([a.own_sigma_s for a in arrivals]) ** 2 + self.model_sigma_s**2)

    def _fine_tolerance(self) -> float:
        """How far (s) an arrival may be from a shot's prediction and still be part
        of its core: ``tolerance_sigmas`` × the typical timing error (the pending
        arrivals' own, with the model error), never less than ``tolerance_s``."""
        key = (self._pver, self.net_scale)
        if self._ftol[0] != key:      # (once per change of the pending set, not per use)
            sig = float(np.median([a.own_sigma_s for a in self._pending])) if self._pending else 0.0
            tol = self.cfg.tolerance_sigmas * float(np.hypot(sig, self.model_sigma_s)) * self.net_scale
            self._ftol = (key, min(max(self.cfg.tolerance_s, tol),
                                   max(self.cfg.tolerance_s, self.cfg.extend_tolerance_s)))
        return self._ftol[1]

    def _extend_tolerance(self) -> float:
        return max(self.cfg.extend_tolerance_s, self._fine_tolerance())

    def _solve(self, seed: Arrival, chosen: list[Arrival], c: float, p: np.ndarray, *,
               fit_c: bool, robust: bool) -> Solution | None:
        """Solve for ``chosen`` (times relative to ``seed``) from ``p``: plain
        Huber-weighted fit when not ``robust``; else with the data's residual
        scale and one-at-a-time rejection."""
        rec = np.array([a.pos for a in chosen])
        ts = np.array([(a.t_ns - seed.t_ns) * 1e-9 for a in chosen])
        sig = self.sigma(chosen)
        fixed = self.z_source if self.z_sigma is None else None
        prior = self.height_prior()
        c_sigma = self.c_sigma if fit_c and len(chosen) >= 5 else None
        # once the network has shown how well its shots fit, a candidate may not
        # keep arrivals that only a much looser fit would tolerate
        cap = MIX_FACTOR * self.net_scale if len(self._scales) >= SCALE_MIN_SHOTS else None
        return solve(rec, ts, sig, c, x0=p, z_source=fixed, z_prior=prior, min_used=self.cfg.min_nodes,
                     reject_sigma=self.cfg.tolerance_sigmas, max_reject=None if robust else 0,
                     c_sigma=c_sigma, huber_k=2.0, adaptive=robust, wind0=self.wind_mps, max_scale=cap)

    def _travel_s(self, positions: np.ndarray, p: np.ndarray, c: float) -> np.ndarray:
        """Travel times (s, (n,)) from a source at ``p`` (3,) m to ``positions``
        (n, 3) m at ``c`` m/s in the network's pooled wind (:attr:`wind_mps`):
        the model the association's solves fit, so that the arrivals picked
        around a solution are those it predicts. (A straight-line prediction
        is off by up to distance × wind / c² — 17 ms at 1 km in 2 m/s.)"""
        if not any(self.wind_mps):
            return np.array([float(np.linalg.norm(p - q)) / c for q in positions])
        return travel_times_s(positions, p, c, self.wind_mps)

    def _pick(self, seed: Arrival, cands: dict[str, list[Arrival]], p: np.ndarray, t0: float, c: float,
              tol: float, skip: set[str] | None = None) -> list[Arrival]:
        """Per node, the arrival nearest the prediction of source (p, t0) within
        ``tol`` (travel times in the pooled wind, :meth:`_travel_s`)."""
        out = []
        nodes = [n for n in cands if not (skip and n in skip)]
        if not nodes:
            return out
        taus = self._travel_s(np.array([cands[n][0].pos for n in nodes]), p, c)
        for node, tau in zip(nodes, taus):
            arr = cands[node]
            pred = t0 + float(tau)
            best, best_dt = None, tol
            for a in arr:
                dt = abs((a.t_ns - seed.t_ns) * 1e-9 - pred)
                if dt < best_dt:
                    best, best_dt = a, dt
            if best is not None:
                out.append(best)
        return out

    def _refine(self, seed: Arrival, cands: dict[str, list[Arrival]], p0: np.ndarray,
                c: float) -> Association | None:
        """From a fine-grid cell: the core (nearest arrival per node, solve, repeat
        with the fine tolerance), then the extension and the robust final solve."""
        cfg = self.cfg
        fine = self._fine_tolerance()
        step_m = self.cfg.grid_step_m
        p = p0.copy()
        t0 = -float(self._travel_s(seed.pos[None, :], p, c)[0])
        sol: Solution | None = None
        chosen: list[Arrival] = []
        for tol in (fine + step_m * FINE_FRACTION * 1.5 / c, fine):
            prev = chosen
            chosen = [seed] + self._pick(seed, cands, p, t0, c, tol)
            if len(chosen) < cfg.min_nodes:
                return None
            if sol is not None and len(chosen) == len(prev) and all(a is b for a, b in zip(chosen, prev)):
                continue            # the same arrivals: the solve from its own solution gives it again
            sol = self._solve(seed, chosen, c, p, fit_c=self.c_unknown, robust=False)
            if sol is None:
                return None
            p, t0, c = sol.pos, sol.t0_s, sol.c_mps
        assert sol is not None
        keep = np.abs(sol.residuals_s) < fine
        if not keep[0] or keep.sum() < cfg.min_nodes:
            return None
        core = [a for a, k in zip(chosen, keep) if k]
        # extension: the nodes not in the core, within the wider tolerance
        ext = self._extend_tolerance()
        extra = self._pick(seed, cands, p, t0, c, ext, skip={a.node for a in core}) if ext > fine else []
        final = core + extra
        sol = self._solve(seed, final, c, p, fit_c=self.c_unknown, robust=True)
        if sol is not None and not self._consistent(Association((), sol, seed.t_ns)):
            # something fits well enough not to be rejected but spoils the fit (an
            # arrival of another sound that happens to line up): leave out, one at
            # a time, the arrival whose absence makes the rest fit best
            final, sol = self._trim(seed, final, c, sol)
        if sol is None or not sol.used[0]:
            return None
        # (by key: _trim may have left out a core arrival, so final need not begin with the core)
        core_keys = {a.key for a in core}
        in_core = np.array([a.key in core_keys for a in final])
        n_core = int(np.count_nonzero(sol.used & in_core & (np.abs(sol.residuals_s) < fine)))
        if n_core < cfg.min_nodes:
            return None
        arrivals = tuple(a for a, k in zip(final, sol.used) if k)
        if len(arrivals) < len(final):
            # the kept arrivals alone; their residual scale is the robust fit's (a
            # plain solve takes the a-priori σ as exact: scale 1, which would
            # teach the network a timing it does not have)
            scale = sol.scale
            sol = self._solve(seed, list(arrivals), c, sol.pos, fit_c=self.c_unknown, robust=False)
            if sol is None:
                return None
            sol = replace(sol, scale=scale)
        return Association(arrivals=arrivals, solution=sol, ref_ns=seed.t_ns, n_core=n_core)

    def _trim(self, seed: Arrival, arrivals: list[Arrival], c: float,
              sol: Solution) -> tuple[list[Arrival], Solution | None]:
        """Drop arrivals (never the seed) one at a time, each time the one whose
        absence leaves the smallest residual scale, until the fit is consistent
        with the network's (:meth:`_consistent`) or ``min_nodes`` are left."""
        cur = list(arrivals)
        while len(cur) > self.cfg.min_nodes:
            best: tuple[float, int, Solution] | None = None
            for i in range(1, len(cur)):
                trial = cur[:i] + cur[i + 1:]
                s = self._solve(seed, trial, c, sol.pos, fit_c=self.c_unknown, robust=False)
                if s is None:
                    continue
                e = s.residuals_s / self.sigma(trial)
                sc = residual_scale(e, self._n_params())
                if best is None or sc < best[0]:
                    best = (sc, i, s)
            if best is None:
                return cur, None
            cur.pop(best[1])
            sol = self._solve(seed, cur, c, best[2].pos, fit_c=self.c_unknown, robust=True)
            if sol is None:
                return cur, None
            if self._consistent(Association((), sol, seed.t_ns)):
                return cur, sol
        return cur, None

    def _repeats(self, shot: Association, cache: dict[int, Association | None]) -> None:
        """Look for further rounds from the position of a shot just formed: a burst
        fires from one place, so another round reaches every node the same time
        after (or before) that shot did. A pending arrival at one of the shot's
        nodes, up to ``REPEAT_WINDOW_S`` from the shot's arrival there, whose
        delay is matched
        (within the fine tolerance) at enough other nodes of the shot, is searched
        again from the shot's position; the result replaces its cached candidate
        when better. (Rounds 67 ms apart make the grid search ambiguous; this
        search is not.)"""
        fine_ns = self._fine_tolerance() * 1e9
        at = {a.node: a.t_ns for a in shot.arrivals}
        by_node: dict[str, np.ndarray] = {}
        for a in self._pending:
            if a.node in at:
                by_node.setdefault(a.node, []).append(a.t_ns)
        times = {n: np.array(v, dtype=np.int64) for n, v in by_node.items()}
        window = REPEAT_WINDOW_S * 1e9
        # every pending arrival tried here is a chance to find a repeat by luck
        tried = sum(1 for a in self._pending if a.node in at and fine_ns < abs(a.t_ns - at[a.node]) <= window)
        # arrivals of a round found here at every node that has a sound to
        # offer: searching from them would find it again (a round found at
        # fewer nodes is searched from its other arrivals too — they may find
        # it at more)
        found: set[int] = set()
        for a in self._pending:
            if a.node not in at or not fine_ns < abs(a.t_ns - at[a.node]) <= window or a.key in found:
                continue
            delay = a.t_ns - at[a.node]
            match = 1 + sum(1 for n, t in times.items() if n != a.node
                            and np.any(np.abs(t - (at[n] + delay)) <= fine_ns))
            if match < self.cfg.min_nodes:
                continue
            cands = self._candidates(a)
            self.wind_at(a.t_ns)
            cand = self._refine(a, cands, shot.solution.pos.copy(), shot.solution.c_mps or self.c_nominal)
            if cand is None or not self._enough_nodes(cand):
                continue
            cand = self._priced(cand, cands)
            # the search from a formed shot's position is evidence of its own
            chance = self._repeat_chance(cand, cands, shot, tried)
            cand = replace(cand, chance=min(cand.chance, chance), chance_alone=min(cand.chance_alone, chance))
            if not cand.chance <= self.cfg.max_chance:
                continue
            if {x.node for x in cand.arrivals} >= cands.keys():
                found |= {x.key for x in cand.arrivals}
            old = cache.get(a.key)
            if old is None or self._better(cand, old):
                cache[a.key] = cand
                self._seed_t[a.key] = a.t_ns

    def _repeat_chance(self, cand: Association, cands: dict[str, list[Arrival]], shot: Association,
                       tried: int) -> float:
        """Expected number of chance alignments as good as ``cand``, a candidate
        found by :meth:`_repeats` from the position of ``shot``: there the source
        position is given, and the seed fixes the emission time, so every other
        arrival is redundant. Each of the shot's other nodes has an arrival within
        ±τ of the prediction by chance with probability q = 2·τ·λ (λ: its arrival
        rate around the seed, τ: the largest residual of ``cand``'s arrivals, at
        least ``tolerance_s``); ``cand`` has m of them: choose which (of the
        shot's nodes), times the ``tried`` seeds the repeat search looked at."""
        used = cand.solution.used
        tau = max(self.cfg.tolerance_s, float(np.max(np.abs(cand.solution.residuals_s[used]))))
        seed = cand.arrivals[0]
        shot_nodes = {a.node for a in shot.arrivals} - {seed.node}
        q = []
        for n in shot_nodes:
            arr = cands.get(n, ())
            window = 2.0 * self._reach_s(float(np.linalg.norm(self._nodes[n][:2] - seed.pos[:2])))
            q.append(min(1.0, 2.0 * tau * len(arr) / max(window, 1e-3)))
        m = sum(1 for a in cand.arrivals[1:] if a.node in shot_nodes)
        if m < self.cfg.min_nodes - 1 or m > len(q):
            return float("inf")
        q.sort(reverse=True)
        return float(max(tried, 1) * math.comb(len(q), m) * np.prod(q[:m]))

    def _echo_lineup(self, cand: Association) -> bool:
        """``cand`` is made of echoes: at half or more of its nodes, a louder sound
        (by ``ECHO_LEVEL_DB``) came shortly before (within ``ECHO_WINDOW_S``).
        An echo is always later and weaker than the sound it echoes; a real shot's
        arrival is the loudest thing its node heard in the moment before it, bar
        the occasional louder sound from elsewhere. (Inactive when the arrivals
        carry no levels, e.g. picks from another system: then none is louder.)"""
        window = ECHO_WINDOW_S * 1e9
        n = 0
        for a in cand.arrivals:
            for t, level in self._heard.get(a.node, ()):
                if a.t_ns - window <= t < a.t_ns and level >= a.peak_dbfs + ECHO_LEVEL_DB:
                    n += 1
                    break
        return n >= max(1, 0.5 * len(cand.arrivals))

    def _n_unknowns_2d(self) -> int:
        """Unknowns fixed by the arrivals alone: x, y, t0, and c when the
        temperature is unknown (the height has its prior)."""
        return 3 + (1 if self.c_unknown else 0)

    def _n_params(self) -> int:
        """Unknowns of an association solve: x, y, t0, the height (with its prior
        or free), and c when the temperature is unknown."""
        return 3 + (self.z_sigma is not None or self.z_source is None) + (self.c_sigma is not None)

    def _consistent(self, cand: Association) -> bool:
        """``cand`` fits as well as the network's shots do: its residual scale is at
        most ``MIX_FACTOR`` × the network's, once ``SCALE_MIN_SHOTS`` shots have
        taught that. Arrivals of different rounds of a burst, or of a shot and its
        echoes, can line up into a candidate with as many nodes as a real round,
        but only loosely."""
        if len(self._scales) < SCALE_MIN_SHOTS:
            return True
        return cand.solution.scale <= MIX_FACTOR * self.net_scale

    def _duplicates(self, shot: Association) -> list[Arrival]:
        """Pending arrivals, not part of ``shot``, at one of its nodes within the
        fine tolerance of the arrival it used there: the same sound reported twice."""
        tol_ns = self._fine_tolerance() * 1e9
        used_at = {a.node: a.t_ns for a in shot.arrivals}
        keys = {a.key for a in shot.arrivals}
        return [a for a in self._pending
                if a.key not in keys and a.node in used_at and abs(a.t_ns - used_at[a.node]) <= tol_ns]

    def _is_echo(self, cand: Association) -> bool:
        """``cand`` is explained by a formed shot: its mirror-image ghost, the same
        round found twice, or a weak line-up of arrivals trailing that shot's."""
        for shot in self._recent:
            if _mirrors(cand, shot) or _duplicate(cand, shot):
                return True
            if _trails(cand, shot):
                n, m = cand.solution.n_used, shot.solution.n_used
                # the next round of a burst comes from the same place; a line-up of
                # echoes from elsewhere must be as strong as the shot it trails
                same_place = float(np.linalg.norm(cand.solution.pos[:2] - shot.solution.pos[:2])) < DUPLICATE_M
                if n < ECHO_MIN_FRACTION * m or (not same_place and n < max(m, self.cfg.min_nodes + 2)):
                    return True
        return False


def _soft_hits(times: np.ndarray, pred: np.ndarray, tol: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The cells that the nearest of ``times`` (sorted, s) fits within ``tol`` of
    their prediction ``pred`` (per cell, s), as indices into ``pred``, and how
    well: 1 for an exact fit, falling towards 0 at ``tol`` (every weight returned
    is > 0). Most cells fit nothing; only the few that do are returned."""
    if times.size == 1:
        near = np.abs(pred - times[0])
    elif times.size <= 8:
        near = np.abs(pred - times[0])
        for t in times[1:]:
            np.minimum(near, np.abs(pred - t), out=near)
    else:
        idx = np.searchsorted(times, pred)
        lo = np.abs(times[np.maximum(idx - 1, 0)] - pred)
        hi = np.abs(times[np.minimum(idx, len(times) - 1)] - pred)
        near = np.minimum(lo, hi)
    r = np.divide(near, tol, out=near)
    fit = np.flatnonzero(r < 1.0)
    return fit, np.sqrt(1.0 - r[fit])


def _norm_rows(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", x, x))


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


def _earlier_path(a: Association, b: Association, tol_ns: float) -> bool:
    """At the nodes both ``a`` and ``b`` use, their arrivals differ at some (by
    more than ``tol_ns``), and wherever they differ ``a``'s is the earlier.
    With few nodes a reflection (louder, where a building blocks the direct
    path) lines up with the other nodes' direct sounds into a ghost source
    nearby that fits as well as the shot; but the direct sound is the first to
    arrive, so of the two the earlier path is the shot."""
    tb = {x.node: x.t_ns for x in b.arrivals}
    diff = [(x.t_ns, tb[x.node]) for x in a.arrivals if x.node in tb and abs(x.t_ns - tb[x.node]) > tol_ns]
    return bool(diff) and all(ta < tb_ for ta, tb_ in diff)


def _duplicate(cand: Association, shot: Association) -> bool:
    """``cand`` is ``shot`` found a second time (from the arrivals it left over)."""
    if cand is shot or abs(shot.t0_ns - cand.t0_ns) > DUPLICATE_T0_S * 1e9:
        return False
    return float(np.linalg.norm(cand.solution.pos[:2] - shot.solution.pos[:2])) < DUPLICATE_M


def _trails(cand: Association, shot: Association) -> bool:
    """Most (≥ 3/4) of ``cand``'s arrivals come at most ``ECHO_WINDOW_S`` after
    ``shot``'s arrival at the same node."""
    first = {a.node: a.t_ns for a in shot.arrivals}
    n = sum(1 for a in cand.arrivals
            if a.node in first and 0 < a.t_ns - first[a.node] <= ECHO_WINDOW_S * 1e9)
    return n >= 0.75 * len(cand.arrivals)
