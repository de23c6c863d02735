"""The simulated world: a town (nodes and building facades), sound sources, scenarios, truth.

Coordinates are metres in a local ENU frame (:class:`common.geodesy.LocalFrame`)
around the town's origin; the ground is the plane z = 0. Times are integer UTC
nanoseconds (``*_utc_ns``). Everything here is plain data built from a seed:
the same arguments always give the same town and the same scenario.

Modelling choices (stated so nobody mistakes them for physics they are not):

* Walls are the facades of rectangular buildings: vertical segments from the ground
  to the building's height that *reflect* sound (first order, see
  :mod:`sim.propagation`). They do not *occlude* the direct path; non-line-of-sight
  is modelled separately and explicitly by :class:`Blocking` entries of a scenario.
* Sources are omnidirectional points. A gunshot is its muzzle blast only (no
  supersonic crack, no muzzle directivity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.acoustics import DEFAULT_TEMPERATURE_C, speed_of_sound
from common.geodesy import LocalFrame
from common.timefmt import NS_PER_S

#: The default town origin (lat °, lon °, alt m): downtown Pittsburgh.
DEFAULT_ORIGIN = (40.4406, -79.9959, 250.0)
#: Default scenario start: 2024-07-04T21:30:00Z, as UTC ns.
DEFAULT_START_UTC_NS = 1_720_128_600 * NS_PER_S
#: Kinds of sound source the simulation knows.
SOURCE_KINDS = ("gunshot", "fireworks", "door", "dog")
#: Reference pressure for dB SPL (Pa).
P_REF_PA = 20e-6


def db_spl_to_pa(level_db_spl: float) -> float:
    """Sound pressure level (dB re 20 µPa) → pressure (Pa)."""
    return P_REF_PA * 10.0 ** (float(level_db_spl) / 20.0)


def _vec3(value, what: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be 3 finite numbers (east, north, up) in metres, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


# ------------------------------------------------------------------ town
@dataclass(frozen=True)
class Wall:
    """A vertical reflecting facade: the segment ``p0 → p1`` (ENU x, y in m) from
    the ground up to ``height_m``, reflecting with pressure coefficient ``reflection``.

    One-sided by default: it reflects only sound that is on its *outer* side, the
    right-hand side when walking from ``p0`` to ``p1`` (a building's corners listed
    counter-clockwise give outward facades). ``two_sided`` walls reflect on both sides.
    ``building`` is the index of the building the facade belongs to (-1: none).
    """

    p0: tuple[float, float]
    p1: tuple[float, float]
    height_m: float
    reflection: float
    building: int = -1
    two_sided: bool = False

    def __post_init__(self) -> None:
        p0 = np.asarray(self.p0, dtype=float).reshape(-1)
        p1 = np.asarray(self.p1, dtype=float).reshape(-1)
        if p0.shape != (2,) or p1.shape != (2,) or not (np.all(np.isfinite(p0)) and np.all(np.isfinite(p1))):
            raise ValueError(f"wall endpoints must be 2 finite numbers (east, north) in m, "
                             f"got {self.p0!r}, {self.p1!r}")
        if float(np.hypot(*(p1 - p0))) < 0.1:
            raise ValueError(f"wall {self.p0!r}→{self.p1!r} is shorter than 0.1 m; give distinct endpoints")
        if not (math.isfinite(self.height_m) and self.height_m > 0):
            raise ValueError(f"wall height_m must be > 0 m, got {self.height_m}")
        if not 0.0 <= self.reflection <= 1.0:
            raise ValueError(f"wall reflection coefficient must be in 0..1, got {self.reflection}")
        object.__setattr__(self, "p0", (float(p0[0]), float(p0[1])))
        object.__setattr__(self, "p1", (float(p1[0]), float(p1[1])))
        object.__setattr__(self, "height_m", float(self.height_m))
        object.__setattr__(self, "reflection", float(self.reflection))

    @property
    def normal(self) -> tuple[float, float]:
        """Unit normal pointing to the reflecting (outer, right-hand) side."""
        dx, dy = self.p1[0] - self.p0[0], self.p1[1] - self.p0[1]
        length = math.hypot(dx, dy)
        return (dy / length, -dx / length)


@dataclass(frozen=True, eq=False)
class Town:
    """Where the nodes and the buildings are.

    frame: the local ENU frame (its origin is the town's origin, ground at z = 0).
    node_ids: one id per node (``sim-01`` …).
    nodes_enu: (n, 3) m, the microphones' positions (read-only array).
    walls: the reflecting facades.
    size_m: the side of the square town, centred on the origin.
    """

    frame: LocalFrame
    node_ids: tuple[str, ...]
    nodes_enu: np.ndarray
    walls: tuple[Wall, ...] = ()
    size_m: float = 1200.0

    def __post_init__(self) -> None:
        nodes = np.array(self.nodes_enu, dtype=float)
        if nodes.ndim != 2 or nodes.shape[1] != 3 or nodes.shape[0] < 1:
            raise ValueError(f"nodes_enu must have shape (n, 3) m with n >= 1, got {nodes.shape}")
        if not np.all(np.isfinite(nodes)):
            raise ValueError("nodes_enu contains NaN or infinite coordinates")
        ids = tuple(str(i) for i in self.node_ids)
        if len(ids) != nodes.shape[0]:
            raise ValueError(f"{len(ids)} node_ids for {nodes.shape[0]} node positions; give one id per node")
        if len(set(ids)) != len(ids):
            raise ValueError(f"node_ids must be unique, got {ids}")
        if not self.size_m > 0:
            raise ValueError(f"size_m must be > 0, got {self.size_m}")
        nodes.flags.writeable = False
        object.__setattr__(self, "nodes_enu", nodes)
        object.__setattr__(self, "node_ids", ids)
        object.__setattr__(self, "walls", tuple(self.walls))

    @property
    def n_nodes(self) -> int:
        return int(self.nodes_enu.shape[0])

    def node_index(self, node_id: str) -> int:
        """Index of ``node_id`` in :attr:`node_ids`."""
        try:
            return self.node_ids.index(node_id)
        except ValueError:
            raise ValueError(f"unknown node id {node_id!r}; "
                             f"this town has {', '.join(self.node_ids)}") from None

    def node_wgs84(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nodes as (lat °, lon °, alt m) arrays of shape (n,)."""
        return self.frame.to_wgs84(self.nodes_enu)

    def inside_building(self, xy, margin_m: float = 0.0) -> bool:
        """True if the point ``xy`` (east, north m) is within ``margin_m`` of a building footprint."""
        x, y = float(xy[0]), float(xy[1])
        by_building: dict[int, float] = {}
        for w in self.walls:
            if w.building < 0:
                continue
            nx, ny = w.normal
            s = (x - w.p0[0]) * nx + (y - w.p0[1]) * ny
            by_building[w.building] = max(by_building.get(w.building, -math.inf), s)
        return any(s < margin_m for s in by_building.values())


def _coverage_cost(nodes_xy: np.ndarray, test_xy: np.ndarray, k: int) -> float:
    """Worst (over test points) distance to the k-th nearest node (m)."""
    d = np.hypot(test_xy[:, None, 0] - nodes_xy[None, :, 0], test_xy[:, None, 1] - nodes_xy[None, :, 1])
    return float(np.partition(d, k - 1, axis=1)[:, k - 1].max())


def _place_nodes(n: int, size_m: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) node positions: a jittered grid, then refined so that the worst point of
    the square is as close as possible to its 4th-nearest node."""
    half = size_m / 2.0
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    keep = sorted(rng.choice(len(cells), size=n, replace=False))
    dx, dy = size_m / cols, size_m / rows
    xy = np.array([[-half + (cells[i][0] + 0.5) * dx, -half + (cells[i][1] + 0.5) * dy] for i in keep])
    xy += rng.uniform(-0.15, 0.15, size=xy.shape) * np.array([dx, dy])
    if n == 1:
        return xy
    g = np.linspace(-half, half, 17)
    test_xy = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    k = min(4, n)
    min_sep = 0.5 * size_m / math.sqrt(n)
    margin = 0.03 * size_m

    def ok(p: np.ndarray) -> bool:
        if np.any(np.abs(p) > half - margin):
            return False
        d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
        return bool(d[np.triu_indices(n, 1)].min() >= min_sep)

    cost = _coverage_cost(xy, test_xy, k)
    step = 0.06 * size_m
    for _ in range(600):
        cand = xy.copy()
        i = int(rng.integers(n))
        cand[i] += rng.normal(0.0, step, size=2)
        if not ok(cand):
            continue
        c = _coverage_cost(cand, test_xy, k)
        if c <= cost:
            xy, cost = cand, c
    return xy


def _rect_walls(center, half_w, half_d, angle, height, reflections, building) -> list[Wall]:
    ca, sa = math.cos(angle), math.sin(angle)
    local = [(-half_w, -half_d), (half_w, -half_d), (half_w, half_d), (-half_w, half_d)]  # CCW
    corners = [(center[0] + ca * u - sa * v, center[1] + sa * u + ca * v) for u, v in local]
    return [Wall(corners[i], corners[(i + 1) % 4], height, float(reflections[i]), building)
            for i in range(4)]


def make_town(n_nodes: int = 8, size_m: float = 1200.0, seed: int = 0, *,
              origin: tuple[float, float, float] = DEFAULT_ORIGIN,
              n_buildings: int | None = None) -> Town:
    """A square town of side ``size_m`` centred on ``origin`` (lat °, lon °, alt m).

    Nodes (ids ``sim-01`` …) sit on a jittered grid refined for coverage (with the
    defaults every point of the town has 4 nodes within about 800 m), microphones
    4–8 m above the ground. ``n_buildings`` rectangular buildings (default
    ``max(6, 1.5 * n_nodes)``; 4 facades each, 6–25 m high, reflection 0.3–0.8) are
    placed without overlap, half of them 20–70 m from a node so that shots near
    those nodes get echoes.
    """
    if not (isinstance(n_nodes, int) and 1 <= n_nodes <= 999):
        raise ValueError(f"n_nodes must be an integer 1..999, got {n_nodes!r}")
    if not (math.isfinite(size_m) and size_m >= 100.0):
        raise ValueError(f"size_m must be >= 100 m, got {size_m}")
    rng = np.random.default_rng([int(seed), 0x70B1])
    frame = LocalFrame(*(float(v) for v in origin))
    xy = _place_nodes(n_nodes, size_m, rng)
    z = rng.uniform(4.0, 8.0, size=n_nodes)
    nodes = np.column_stack([xy, z])

    n_b = max(6, round(1.5 * n_nodes)) if n_buildings is None else int(n_buildings)
    if n_b < 0:
        raise ValueError(f"n_buildings must be >= 0, got {n_buildings}")
    grid_angle = rng.uniform(0.0, math.pi / 2)
    half = size_m / 2.0
    placed: list[tuple[float, float, float]] = []   # (cx, cy, circumradius)
    walls: list[Wall] = []
    for b in range(n_b):
        for _ in range(200):
            hw, hd = rng.uniform(7.5, 22.5), rng.uniform(6.0, 17.5)
            rad = math.hypot(hw, hd)
            if b % 2 == 0:
                node = nodes[int(rng.integers(n_nodes))]
                bearing, dist = rng.uniform(0, 2 * math.pi), rng.uniform(20.0, 70.0) + rad
                cx, cy = node[0] + dist * math.cos(bearing), node[1] + dist * math.sin(bearing)
            else:
                cx, cy = rng.uniform(-half + rad, half - rad, size=2)
            if abs(cx) > half - rad or abs(cy) > half - rad:
                continue
            if np.min(np.hypot(nodes[:, 0] - cx, nodes[:, 1] - cy)) < rad + 5.0:
                continue
            if any(math.hypot(cx - px, cy - py) < rad + pr + 8.0 for px, py, pr in placed):
                continue
            angle = grid_angle + rng.uniform(-0.1, 0.1)
            walls += _rect_walls((cx, cy), hw, hd, angle, rng.uniform(6.0, 25.0),
                                 rng.uniform(0.3, 0.8, size=4), len(placed))
            placed.append((cx, cy, rad))
            break
    ids = tuple(f"sim-{i + 1:02d}" for i in range(n_nodes))
    return Town(frame=frame, node_ids=ids, nodes_enu=nodes, walls=tuple(walls), size_m=float(size_m))


def clock_offsets_ns(n_nodes: int, sigma_ns: float = 20_000, seed: int = 0) -> np.ndarray:
    """Per-node clock errors: (n_nodes,) int64 ns, zero-mean Gaussian with ``sigma_ns``.

    The simulation's nodes add these to their timebase (``FixedTimebase(offset_ns=...)``).
    """
    if n_nodes < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes}")
    if not sigma_ns >= 0:
        raise ValueError(f"sigma_ns must be >= 0 ns, got {sigma_ns}")
    rng = np.random.default_rng([int(seed), 0xC10C])
    return np.round(rng.normal(0.0, float(sigma_ns), size=int(n_nodes))).astype(np.int64)


# ------------------------------------------------------------------ sources
@dataclass(frozen=True)
class Source:
    """One sound emitted at one place and time.

    kind: one of :data:`SOURCE_KINDS`.
    t_emit_utc_ns: when the sound starts at the source (for a gunshot, the blast front).
    pos_enu: (east, north, up) m in the town's frame.
    level_db_spl_1m: peak sound pressure level at 1 m (dB re 20 µPa).
    incident_id: groups the rounds of a burst / the crackles of one firework.
    round_index: position within its incident (0-based).
    positive_phase_s: gunshot / fireworks: the Friedlander positive-phase duration.
    decay: gunshot / fireworks: the Friedlander decay constant b (dimensionless).
    duration_s: door / dog: the length of the sound.
    near_node: door / dog: index of the one node that is meant to hear it.
    seed: door / dog: seed for the waveform's details.
    """

    id: str
    kind: str
    t_emit_utc_ns: int
    pos_enu: tuple[float, float, float]
    level_db_spl_1m: float
    incident_id: str = ""
    round_index: int = 0
    positive_phase_s: float = 0.001
    decay: float = 1.0
    duration_s: float = 0.3
    near_node: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind {self.kind!r} is not one of {SOURCE_KINDS}")
        if not isinstance(self.t_emit_utc_ns, (int, np.integer)):
            raise ValueError(f"t_emit_utc_ns must be an integer UTC ns, got {self.t_emit_utc_ns!r}")
        object.__setattr__(self, "t_emit_utc_ns", int(self.t_emit_utc_ns))
        object.__setattr__(self, "pos_enu", _vec3(self.pos_enu, f"source {self.id} pos_enu"))
        if not (math.isfinite(self.level_db_spl_1m) and 0.0 <= self.level_db_spl_1m <= 200.0):
            raise ValueError(f"source {self.id}: level_db_spl_1m must be 0..200 dB SPL, "
                             f"got {self.level_db_spl_1m}")
        if not 1e-5 <= self.positive_phase_s <= 0.05:
            raise ValueError(f"source {self.id}: positive_phase_s must be 10 µs..50 ms, "
                             f"got {self.positive_phase_s}")
        if not 0.1 <= self.decay <= 10.0:
            raise ValueError(f"source {self.id}: decay must be 0.1..10, got {self.decay}")
        if not 0.01 <= self.duration_s <= 5.0:
            raise ValueError(f"source {self.id}: duration_s must be 0.01..5 s, got {self.duration_s}")

    @property
    def peak_pa_1m(self) -> float:
        """Peak pressure at 1 m (Pa)."""
        return db_spl_to_pa(self.level_db_spl_1m)


@dataclass(frozen=True)
class TruthShot:
    """Ground truth for one impulsive round (a gunshot round or a firework crackle)."""

    source_id: str
    incident_id: str
    round_index: int
    t_emit_utc_ns: int
    pos_enu: tuple[float, float, float]
    lat: float
    lon: float
    kind: str
    alt_m: float = 0.0


@dataclass(frozen=True)
class Blocking:
    """A non-line-of-sight path between an incident's position and one node.

    The direct path is attenuated by ``attenuation_db`` (20–30 dB) and low-passed;
    a diffracted path ``detour_m`` longer, ``diffraction_loss_db`` below free field
    and low-passed, arrives instead.
    """

    incident_id: str
    node_index: int
    attenuation_db: float
    detour_m: float
    diffraction_loss_db: float


@dataclass(frozen=True)
class Scenario:
    """What happens in the town: sources, timing, the air, and the truth.

    Frame 0 of every node's rendered audio is at ``start_utc_ns``.
    temperature_c / humidity_pct: the *true* air (the server may assume otherwise).
    wind_mps: (east, north, up) m/s; advects sound (travel time |d| / (c + w·û)).
    blocked: non-line-of-sight (incident, node) pairs.
    noise_db_spl: the background level the local sounds were made quiet against.
    """

    sources: tuple[Source, ...]
    start_utc_ns: int
    duration_s: float
    truth: tuple[TruthShot, ...] = ()
    temperature_c: float = DEFAULT_TEMPERATURE_C
    humidity_pct: float = 50.0
    wind_mps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    blocked: tuple[Blocking, ...] = ()
    noise_db_spl: float = 55.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "truth", tuple(self.truth))
        object.__setattr__(self, "blocked", tuple(self.blocked))
        object.__setattr__(self, "wind_mps", _vec3(self.wind_mps, "wind_mps"))
        object.__setattr__(self, "start_utc_ns", int(self.start_utc_ns))
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"scenario duration_s must be > 0 s, got {self.duration_s}")
        ids = [s.id for s in self.sources]
        if len(set(ids)) != len(ids):
            raise ValueError("scenario source ids must be unique")
        speed_of_sound(self.temperature_c, self.humidity_pct)   # range check
        if math.hypot(*self.wind_mps) > 0.3 * self.c_mps:
            raise ValueError(f"wind {self.wind_mps} m/s is implausibly strong; keep |wind| < 100 m/s")

    @property
    def c_mps(self) -> float:
        """The true speed of sound (m/s) in this scenario's air."""
        return speed_of_sound(self.temperature_c, self.humidity_pct)

    def n_frames(self, sample_rate: float) -> int:
        """Number of frames of a node's audio at ``sample_rate`` Hz."""
        return int(round(self.duration_s * float(sample_rate)))

    def source(self, source_id: str) -> Source:
        for s in self.sources:
            if s.id == source_id:
                return s
        raise ValueError(f"no source {source_id!r} in this scenario")


# ------------------------------------------------------------------ scenario
def _pick_position(town: Town, rng: np.random.Generator, near_wall: bool) -> tuple[float, float, float]:
    half = town.size_m / 2.0
    margin = 0.05 * town.size_m
    facades = [w for w in town.walls if w.building >= 0]
    for attempt in range(500):
        if near_wall and facades and attempt < 250:
            w = facades[int(rng.integers(len(facades)))]
            u, off = rng.uniform(0.15, 0.85), rng.uniform(3.0, 25.0)
            nx, ny = w.normal
            x = w.p0[0] + u * (w.p1[0] - w.p0[0]) + off * nx
            y = w.p0[1] + u * (w.p1[1] - w.p0[1]) + off * ny
        else:
            x, y = rng.uniform(-half + margin, half - margin, size=2)
        if abs(x) > half - margin or abs(y) > half - margin:
            continue
        if np.min(np.hypot(town.nodes_enu[:, 0] - x, town.nodes_enu[:, 1] - y)) < 15.0:
            continue
        if town.inside_building((x, y), margin_m=2.0):
            continue
        return (float(x), float(y), float(rng.uniform(1.0, 1.8)))
    raise ValueError("could not place a source in this town (too crowded?); "
                     "use a larger size_m or fewer buildings")


def _local_sound(town: Town, rng: np.random.Generator, kind: str, idx: int, node: int,
                 t_emit_utc_ns: int, noise_pa: float) -> Source:
    """A door or dog near ``node``, loud there and below the noise at every other node."""
    nodes = town.nodes_enu
    me = nodes[node]
    others = np.delete(nodes, node, axis=0)
    d_nearest = float(np.min(np.linalg.norm(others - me, axis=1))) if len(others) else 1e4
    d_max = float(np.clip((d_nearest - 30.0) / 12.0, 5.0, 30.0))
    for _ in range(200):
        dist = rng.uniform(5.0, d_max)
        bearing = rng.uniform(0, 2 * math.pi)
        pos = np.array([me[0] + dist * math.cos(bearing), me[1] + dist * math.sin(bearing),
                        rng.uniform(0.5, 1.5)])
        if not town.inside_building(pos[:2], margin_m=1.0):
            break
    r_own = float(np.linalg.norm(pos - me))
    r_other = float(np.min(np.linalg.norm(others - pos, axis=1))) if len(others) else 1e4
    # Peak at the own node 26 dB over the noise rms, but at every other node the
    # direct path (plus up to 50 % more from echoes) stays below the noise rms.
    amp_1m = min(noise_pa * 10 ** (26 / 20) * r_own, noise_pa * r_other / 1.5)
    level = 20.0 * math.log10(max(amp_1m, P_REF_PA) / P_REF_PA)
    cap = 115.0
    level = min(level, cap)
    dur = rng.uniform(0.25, 0.35) if kind == "dog" else rng.uniform(0.3, 0.45)
    sid = f"{kind}-{idx:02d}"
    return Source(id=sid, kind=kind, t_emit_utc_ns=t_emit_utc_ns, pos_enu=tuple(pos), level_db_spl_1m=level,
                  incident_id=sid, duration_s=dur, near_node=node, seed=int(rng.integers(2**31)))


def make_scenario(town: Town, n_shots: int = 10, seed: int = 0, start_utc_ns: int = DEFAULT_START_UTC_NS,
                  burst: bool = True, fireworks: bool = False, local_sounds: bool = True, *,
                  burst_rounds: int = 5, burst_rate_hz: float = 10.0,
                  gap_s: tuple[float, float] = (2.0, 6.0), n_local_sounds: int = 4,
                  temperature_c: float = DEFAULT_TEMPERATURE_C, humidity_pct: float = 50.0,
                  wind_mps: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  blocked_fraction: float = 0.0, echo_fraction: float = 0.3,
                  noise_db_spl: float = 55.0) -> Scenario:
    """A timeline of gunfire (and optionally fireworks and node-local sounds) in ``town``.

    ``n_shots`` gunshot incidents at random places inside the town (≥ 15 m from every
    node, outside buildings, 1–1.8 m above ground); consecutive incidents start
    ``gap_s`` (2–6 s) after the previous one ends. With ``burst`` one incident is a
    burst of ``burst_rounds`` (3–10) rounds at ``burst_rate_hz`` (5–15) rounds/s from
    one position. Each incident is one gun: 150–160 dB SPL peak at 1 m (±0.3 dB from
    round to round), Friedlander positive phase 0.5–2 ms. ``fireworks`` adds one
    crackling firework (15–60 impulses over 1–3 s, 125–140 dB) as one more incident,
    placed in the timeline like a gunshot incident. ``local_sounds`` adds
    ``n_local_sounds`` doors/dogs, each 5–30 m from one node and audible only there
    (designed against ``noise_db_spl`` background).

    Harder worlds: ``temperature_c`` is the *true* air temperature; ``wind_mps``
    advects sound; ``blocked_fraction`` of (incident, node) pairs are non-line-of-
    sight (direct path 20–30 dB down, a diffracted path 3–30 m longer dominates);
    ``echo_fraction`` of incidents are placed 3–25 m in front of a facade so that
    they have strong early echoes.
    """
    if not (isinstance(n_shots, int) and n_shots >= 1):
        raise ValueError(f"n_shots must be an integer >= 1, got {n_shots!r}")
    if burst and not (3 <= burst_rounds <= 10):
        raise ValueError(f"burst_rounds must be 3..10, got {burst_rounds}")
    if burst and not (5.0 <= burst_rate_hz <= 15.0):
        raise ValueError(f"burst_rate_hz must be 5..15 rounds/s, got {burst_rate_hz}")
    lo_gap, hi_gap = (float(v) for v in gap_s)
    if not 0.0 < lo_gap <= hi_gap:
        raise ValueError(f"gap_s must be (min, max) seconds with 0 < min <= max, got {gap_s}")
    for name, frac in (("blocked_fraction", blocked_fraction), ("echo_fraction", echo_fraction)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must be in 0..1, got {frac}")
    if n_local_sounds < 0:
        raise ValueError(f"n_local_sounds must be >= 0, got {n_local_sounds}")
    c = speed_of_sound(temperature_c, humidity_pct)
    rng = np.random.default_rng([int(seed), 0x5CE7])
    start_utc_ns = int(start_utc_ns)

    kinds = ["gunshot"] * n_shots + (["fireworks"] if fireworks else [])
    order = list(rng.permutation(len(kinds)))
    kinds = [kinds[i] for i in order]
    burst_at = int(rng.integers(n_shots)) if burst else -1

    def ns(t_s: float) -> int:
        return start_utc_ns + round(t_s * NS_PER_S)

    sources: list[Source] = []
    t = rng.uniform(1.5, 2.5)
    gun_no, fw_no = 0, 0
    for kind in kinds:
        near_wall = rng.uniform() < echo_fraction
        pos = _pick_position(town, rng, near_wall)
        if kind == "gunshot":
            gun_no += 1
            inc = f"shot-{gun_no:02d}"
            level = rng.uniform(150.0, 160.0)
            tpos, b = rng.uniform(0.5e-3, 2.0e-3), rng.uniform(0.8, 1.6)
            rounds = burst_rounds if gun_no - 1 == burst_at else 1
            for k in range(rounds):
                sources.append(Source(id=f"{inc}.{k}", kind="gunshot",
                                      t_emit_utc_ns=ns(t + k / burst_rate_hz), pos_enu=pos, level_db_spl_1m=level + rng.normal(0.0, 0.3),
                                      incident_id=inc, round_index=k, positive_phase_s=tpos, decay=b))
            t_end = t + (rounds - 1) / burst_rate_hz
        else:
            fw_no += 1
            inc = f"fireworks-{fw_no:02d}"
            length = rng.uniform(1.0, 3.0)
            times = np.sort(rng.uniform(0.0, length, size=int(rng.integers(15, 61))))
            times -= times[0]
            for k, dt in enumerate(times):
                sources.append(Source(id=f"{inc}.{k}", kind="fireworks", t_emit_utc_ns=ns(t + float(dt)),
                                      pos_enu=(pos[0] + rng.normal(0, 1.0), pos[1] + rng.normal(0, 1.0),
                                               pos[2] + rng.uniform(0.0, 3.0)),
                                      level_db_spl_1m=rng.uniform(125.0, 140.0), incident_id=inc,
                                      round_index=k, positive_phase_s=rng.uniform(0.1e-3, 0.4e-3),
                                      decay=rng.uniform(1.0, 2.0)))
            t_end = t + float(times[-1])
        t = t_end + rng.uniform(lo_gap, hi_gap)
    t_last_emit = t_end

    nodes = town.nodes_enu
    impulsive = list(sources)
    if local_sounds and n_local_sounds > 0:
        noise_pa = db_spl_to_pa(noise_db_spl)
        for j in range(n_local_sounds):
            kind = "dog" if j % 2 == 0 else "door"
            node = int(rng.integers(town.n_nodes))
            t_loc = rng.uniform(1.0, t_last_emit)
            for _ in range(50):   # keep clear of the gunfire arriving at that node
                clash = False
                for s in impulsive:
                    ta = ((s.t_emit_utc_ns - start_utc_ns) / NS_PER_S
                          + float(np.linalg.norm(np.subtract(s.pos_enu, nodes[node]))) / c)
                    if abs(ta - t_loc) < 0.6:
                        clash = True
                        break
                if not clash:
                    break
                t_loc = rng.uniform(1.0, t_last_emit)
            sources.append(_local_sound(town, rng, kind, j + 1, node, ns(t_loc), noise_pa))

    blocked: list[Blocking] = []
    if blocked_fraction > 0:
        for inc in dict.fromkeys(s.incident_id for s in impulsive):
            for n in range(town.n_nodes):
                if rng.uniform() < blocked_fraction:
                    blocked.append(Blocking(inc, n, float(rng.uniform(20.0, 30.0)),
                                            float(rng.uniform(3.0, 30.0)), float(rng.uniform(6.0, 12.0))))

    wind = _vec3(wind_mps, "wind_mps")
    slowest = c - math.hypot(*wind)
    if slowest <= 0:
        raise ValueError(f"wind {wind} m/s is faster than sound; check the units (m/s)")
    max_dist = max(float(np.max(np.linalg.norm(nodes - np.array(s.pos_enu), axis=1))) for s in sources)
    t_last = max((s.t_emit_utc_ns - start_utc_ns) / NS_PER_S
                 + (s.duration_s if s.kind in ("door", "dog") else 0.1) for s in sources)
    duration = math.ceil((t_last + (max_dist + 400.0) / slowest + 1.5) * 10.0) / 10.0

    truth = []
    for s in impulsive:
        lat, lon, alt = town.frame.to_wgs84(np.array(s.pos_enu))
        truth.append(TruthShot(source_id=s.id, incident_id=s.incident_id, round_index=s.round_index,
                               t_emit_utc_ns=s.t_emit_utc_ns, pos_enu=s.pos_enu, lat=float(lat),
                               lon=float(lon), kind=s.kind, alt_m=float(alt)))
    return Scenario(sources=tuple(sorted(sources, key=lambda s: (s.t_emit_utc_ns, s.id))),
                    start_utc_ns=start_utc_ns, duration_s=duration, truth=tuple(truth),
                    temperature_c=float(temperature_c), humidity_pct=float(humidity_pct), wind_mps=wind,
                    blocked=tuple(blocked), noise_db_spl=float(noise_db_spl), seed=int(seed))
