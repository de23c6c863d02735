"""Benchmark: localisation accuracy in simulated worlds, against theory and targets.

Run from the project root:

    python benchmarks/bench_accuracy.py [--parts crlb,nodes,noise,worlds,bursts,throughput]
        [--seeds 1,2,3] [--trials 400] [--burst-rates 10,15] [--markdown FILE]

Parts:

* ``crlb``: the solver alone on exact geometry with Gaussian timing error σ
  (random 8-node networks over 1.2 km, sources inside): RMSE of the horizontal
  position against the Cramér–Rao bound sqrt(trace of the x, y block of
  (JᵀJ/σ²)⁻¹) of the same model (x, y, t0, height known). Target ≤ 1.2× CRLB.
  Also the calibration of the reported 95 % radius.
* ``nodes`` / ``noise``: median and p95 horizontal error of the whole server
  path (association + solver on arrival times) against the number of nodes
  (σ = 100 µs) and against the timing noise (8 nodes).
* ``worlds``: the full pipeline on rendered audio — the simulated town's
  gunshots, echoes, blocked paths, wind, local sounds and bursts, each node's
  audio through the node detector (``node.detector.Detector`` and
  ``node.pipeline.onset_to_event`` with a ``FixedTimebase`` whose offset is the
  node's clock error), then the server's ``Engine`` — the same code path as
  ``earwitness locate``. The server is told node positions with an error and a
  temperature with an error (it does not know the truth). Recall, median / p95
  error, false and extra shots, and the fraction of rounds whose true position
  lies within the reported 95 % radius. Scored by the project's rules
  (``sim.report.score``, as ``benchmarks/scoring.py``): a located shot matches
  a round within 0.1 s of its emission and 100 m of its place (optimal
  one-to-one assignment); "false": more than 100 m from every round; "extra":
  near a round but matched to none (a duplicate, or more located than fired).
* ``bursts``: bursts at 10 and 15 rounds/s (``--burst-rates``) and two shooters firing within the same
  second (rounds separated, counted, and two incidents).
* ``throughput``: ``server.locate.locate_set`` on a rendered 48 kHz recording
  set (WAVs written to a temporary folder): node-seconds of audio per wall second.

Targets (issue 3): worlds recall ≥ 98 %, median ≤ 1.5 m, p95 ≤ 5 m, zero false
shots, ≥ 90 % calibrated; RMSE ≤ 1.2× CRLB; throughput ≥ 200 node-s per s.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.acoustics import speed_of_sound  # noqa: E402
from common.config import DetectorConfig, Position, ServerConfig  # noqa: E402
from common.protocol import Event  # noqa: E402

SAMPLE_RATE = 48_000
#: The timing uncertainty a GPS-disciplined node reports (1 σ), as in the simulation.
NODE_TIMING_SIGMA_NS = 20_000.0


# ------------------------------------------------------------------ worlds
@dataclass(frozen=True)
class World:
    """One simulated world and what the server is told about it."""

    name: str
    seed: int
    nodes: int = 8
    shots: int = 10
    wind_mps: float = 0.0
    temperature_error_c: float = 0.0
    position_error_m: float = 0.0
    clock_sigma_ns: float = 20_000.0
    blocked_fraction: float = 0.0
    echo_fraction: float = 0.3
    burst_rounds: int = 5
    burst_rate_hz: float = 10.0


HARD = dict(wind_mps=2.0, temperature_error_c=1.0, position_error_m=0.5, clock_sigma_ns=20_000.0,
            blocked_fraction=0.1, echo_fraction=0.3)


def build(world: World):
    """(town, scenario) of ``world``."""
    from sim.world import make_scenario, make_town

    town = make_town(world.nodes, 1200.0, seed=world.seed)
    rng = np.random.default_rng([world.seed, 0xA1C])
    ang = rng.uniform(0, 2 * math.pi)
    wind = (world.wind_mps * math.cos(ang), world.wind_mps * math.sin(ang), 0.0)
    scen = make_scenario(town, world.shots, seed=world.seed, burst=True, burst_rounds=world.burst_rounds,
                         burst_rate_hz=world.burst_rate_hz, wind_mps=wind, blocked_fraction=world.blocked_fraction,
                         echo_fraction=world.echo_fraction, temperature_c=float(rng.uniform(-5.0, 30.0)))
    return town, scen


def _node_events(args) -> list[Event]:
    """Render one node's audio, run the node detector, stamp events (worker process)."""
    from node.detector import Detector
    from node.pipeline import onset_to_event
    from node.timebase import FixedTimebase
    from sim.render import NodeRenderer

    town, scen, i, offset_ns, told_pos, seed = args
    r = NodeRenderer(scen, town, i, SAMPLE_RATE, seed=seed)
    det = Detector(DetectorConfig(), SAMPLE_RATE)
    tb = FixedTimebase(scen.start_utc_ns, SAMPLE_RATE, offset_ns=int(offset_ns), sigma_ns=NODE_TIMING_SIGMA_NS,
                       mode="simulated")
    onsets = []
    step = SAMPLE_RATE * 10
    for f0 in range(0, r.n_frames, step):
        onsets += det.process(r.render(f0, min(step, r.n_frames - f0)))
    onsets += det.flush()
    return [onset_to_event(o, node_id=town.node_ids[i], seq=k, timebase=tb, sample_rate_hz=SAMPLE_RATE,
                           position=told_pos) for k, o in enumerate(onsets)]


def told_positions(world: World, town) -> list[Position]:
    """Where the server is told each node is: its true position with the
    world's position error."""
    rng = np.random.default_rng([world.seed, 0x905])
    told = town.nodes_enu + rng.normal(0.0, world.position_error_m, town.nodes_enu.shape)
    lat, lon, alt = town.frame.to_wgs84(told)
    return [Position(float(a), float(b), float(h)) for a, b, h in zip(lat, lon, alt)]


def world_events(world: World, town, scen, pool: ProcessPoolExecutor | None) -> list[Event]:
    """Every node's events, with the node's clock error and told position error."""
    from sim.world import clock_offsets_ns

    offsets = clock_offsets_ns(town.n_nodes, world.clock_sigma_ns, seed=world.seed)
    told = told_positions(world, town)
    jobs = [(town, scen, i, offsets[i], told[i], world.seed) for i in range(town.n_nodes)]
    results = pool.map(_node_events, jobs) if pool is not None else map(_node_events, jobs)
    events = [e for evs in results for e in evs]
    events.sort(key=lambda e: e.t_utc_ns)
    return events


@dataclass(frozen=True)
class WorldResult:
    world: World
    total: int
    located: int
    false_shots: int
    errors_m: tuple[float, ...]
    incidents_true: int
    incidents_found: int
    wall_s: float
    #: Located shots near a true round but matched to none (see the module docstring).
    extra_shots: int = 0
    #: Candidates for review the server offered, and how many of them were true
    #: rounds that no shot located (the rest are not shots).
    candidates: int = 0
    candidates_new: int = 0
    #: The reported 95 % radius (m) of each located round (as ``errors_m``).
    radii_m: tuple[float, ...] = ()

    @property
    def inside95(self) -> tuple[bool, ...]:
        """Per located round: its error is inside the radius it was reported with."""
        return tuple(e <= r for e, r in zip(self.errors_m, self.radii_m))


def server_config(world: World, scen) -> ServerConfig:
    """What the operator tells the server: the temperature (with the world's error)
    and how well the node positions are surveyed (``model_sigma_s``: the survey's
    position error as travel time, never below the default)."""
    base = ServerConfig(database=":memory:", allow_plaintext=True, max_clock_skew_s=0.0,
                        temperature_c=scen.temperature_c + world.temperature_error_c)
    model = max(base.solver.model_sigma_s, world.position_error_m / speed_of_sound(scen.temperature_c))
    return replace(base, solver=replace(base.solver, model_sigma_s=model))


def run_world(world: World, pool: ProcessPoolExecutor | None = None,
              live_step_s: float | None = None) -> WorldResult:
    """Simulate ``world`` and locate its shots through the server's Engine:
    every event at once, as ``earwitness locate`` does (``live_step_s`` None), or
    as a live server, the nodes' heartbeats moving the watermark every
    ``live_step_s`` seconds of audio (``server.locate.replay_live``)."""
    from types import SimpleNamespace

    from server.engine import Engine
    from server.locate import replay_live
    from sim.report import score, to_local

    t0 = time.perf_counter()
    town, scen = build(world)
    events = world_events(world, town, scen, pool)
    cfg = server_config(world, scen)
    eng = Engine(cfg, store=None)
    if live_step_s is None:
        eng.ingest_events(events, received_ns=0)
        found = eng.finish()
    else:
        # every node's heartbeat, from where its events say it is
        nodes = [SimpleNamespace(id=n, lat=p.lat, lon=p.lon, alt=p.alt)
                 for n, p in zip(town.node_ids, told_positions(world, town))]
        found = replay_live(eng, events, nodes, live_step_s)
    reports = sorted(found, key=lambda r: r.t_utc_ns)
    gun = [t for t in scen.truth if t.kind == "gunshot"]
    frame = town.frame
    t_xy = to_local(frame, [t.lat for t in gun], [t.lon for t in gun])
    e_xy = to_local(frame, [r.lat for r in reports], [r.lon for r in reports])
    sc = score(np.array([t.t_emit_utc_ns for t in gun]), t_xy, np.array([r.t_utc_ns for r in reports]), e_xy)
    errs, radii = [], []
    for m in sc.matches:
        if m.estimate_index is None:
            continue
        errs.append(float(m.error_m))
        radii.append(float(reports[m.estimate_index].error_m))
    found_incidents = len({r.incident for r in reports})
    cands = eng.take_candidates()
    both = reports + cands
    sc_all = score(np.array([t.t_emit_utc_ns for t in gun]), t_xy, np.array([r.t_utc_ns for r in both]),
                   to_local(frame, [r.lat for r in both], [r.lon for r in both]))
    return WorldResult(world, sc.total, sc.located, sc.false_shots, tuple(errs),
                       len({t.incident_id for t in gun}), found_incidents, time.perf_counter() - t0,
                       extra_shots=sc.extra_shots, candidates=len(cands),
                       candidates_new=sc_all.located - sc.located, radii_m=tuple(radii))


# ------------------------------------------------------------------ theory
def crlb_xy(receivers: np.ndarray, src: np.ndarray, c: float, sigma_s: float) -> float:
    """sqrt(trace of the (x, y) block of the CRLB) for t_i = t0 + |p − r_i|/c + N(0, σ²),
    height known; m."""
    d = src - receivers
    dist = np.linalg.norm(d, axis=1)
    J = np.column_stack([d[:, 0] / dist / c, d[:, 1] / dist / c, np.ones(len(receivers))])
    F = J.T @ J / sigma_s**2
    C = np.linalg.inv(F)
    return float(math.sqrt(C[0, 0] + C[1, 1]))


def part_crlb(trials: int, seed: int = 0) -> list[dict]:
    """Solver RMSE vs CRLB for several timing noise levels."""
    from server.solver import solve

    rng = np.random.default_rng(seed)
    c = 343.0
    rows = []
    for sigma in (20e-6, 100e-6, 500e-6):
        sq_err, sq_crlb, inside = [], [], 0
        for _ in range(trials):
            rec = np.column_stack([rng.uniform(-600, 600, (8, 2)), rng.uniform(4, 8, 8)])
            src = np.array([*rng.uniform(-450, 450, 2), 1.5])
            t = np.linalg.norm(rec - src, axis=1) / c + rng.normal(0, sigma, 8)
            sol = solve(rec, t, sigma, c, z_source=1.5)
            e2 = float(np.sum((sol.pos[:2] - src[:2]) ** 2))
            sq_err.append(e2)
            sq_crlb.append(crlb_xy(rec, src, c, sigma) ** 2)
            inside += math.sqrt(e2) <= sol.error95_m
        rmse = math.sqrt(np.mean(sq_err))
        bound = math.sqrt(np.mean(sq_crlb))
        rows.append({"sigma_us": sigma * 1e6, "rmse_m": rmse, "crlb_m": bound, "ratio": rmse / bound,
                     "inside95": inside / trials})
    return rows


def part_sweep(kind: str, trials: int, seed: int = 0) -> list[dict]:
    """Association + solver on arrival times: error vs number of nodes or timing noise."""
    from common.config import AssociationConfig
    from server.association import Arrival, Associator

    rng = np.random.default_rng(seed + (1 if kind == "nodes" else 2))
    c = 343.0
    settings = [(n, 100e-6) for n in (4, 5, 6, 8, 12)] if kind == "nodes" else \
        [(8, s) for s in (10e-6, 50e-6, 200e-6, 1e-3)]
    rows = []
    for n, sigma in settings:
        errs, found = [], 0
        for k in range(trials):
            rec = np.column_stack([rng.uniform(-600, 600, (n, 2)), rng.uniform(4, 8, n)])
            src = np.array([*rng.uniform(-450, 450, 2), 1.5])
            t = np.linalg.norm(rec - src, axis=1) / c + rng.normal(0, sigma, n)
            assoc = Associator(AssociationConfig(), c, z_source=1.5, model_sigma_s=max(sigma, 1e-4))
            for i in range(n):
                assoc.add(Arrival(i, f"n{i}", 10**18 + int(round(t[i] * 1e9)), sigma, rec[i]))
            shots, _ = assoc.step(None)
            if shots:
                found += 1
                errs.append(float(np.linalg.norm(shots[0].solution.pos[:2] - src[:2])))
        e = np.array(errs)
        rows.append({"nodes": n, "sigma_us": sigma * 1e6, "found": found / trials,
                     "median_m": float(np.median(e)) if e.size else math.nan,
                     "p95_m": float(np.percentile(e, 95)) if e.size else math.nan})
    return rows


# ------------------------------------------------------------------ throughput
def part_throughput(seed: int = 1, workers: int | None = None, repeats: int = 5) -> dict:
    """locate on a rendered 48 kHz recording set: node-seconds of audio per wall
    second, over ``repeats`` runs of the same set (one run takes ~2 s, and on a
    shared machine single runs vary by ±15 %): the median run and the best."""
    from common.recording_set import RecordingSet, SetNode
    from node.wav_source import write_wav
    from server.locate import locate_set
    from sim.render import NodeRenderer

    world = World("throughput", seed)
    town, scen = build(world)
    lat, lon, alt = town.node_wgs84()
    with tempfile.TemporaryDirectory() as tmp:
        nodes = []
        total_s = 0.0
        for i in range(town.n_nodes):
            x = NodeRenderer(scen, town, i, SAMPLE_RATE, seed=seed).render_all()
            path = write_wav(Path(tmp) / f"{town.node_ids[i]}.wav", x, SAMPLE_RATE)
            total_s += x.size / SAMPLE_RATE
            nodes.append(SetNode(id=town.node_ids[i], lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i]),
                                 wav=path, start_utc_ns=scen.start_utc_ns))
        rs = RecordingSet(path=None, temperature_c=scen.temperature_c, nodes=tuple(nodes))
        walls = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            reports = locate_set(rs, "audio", workers=workers)
            walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    return {"node_seconds": total_s, "wall_s": wall, "rate": total_s / wall, "best_rate": total_s / min(walls),
            "runs": len(walls), "shots": len(reports),
            "rounds": sum(1 for t in scen.truth if t.kind == "gunshot"), "cpus": os.cpu_count()}


# ------------------------------------------------------------------ output
def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
                         + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def summarize_worlds(results: list[WorldResult]) -> dict:
    errs = np.array([e for r in results for e in r.errors_m])
    inside = [i for r in results for i in r.inside95]
    total = sum(r.total for r in results)
    located = sum(r.located for r in results)
    return {"worlds": len(results), "rounds": total, "located": located, "recall": located / max(total, 1),
            "median_m": float(np.median(errs)) if errs.size else math.nan,
            "p95_m": float(np.percentile(errs, 95)) if errs.size else math.nan,
            "false": sum(r.false_shots for r in results),
            "extra": sum(r.extra_shots for r in results),
            "inside95": float(np.mean(inside)) if inside else math.nan,
            "radius_m": float(np.median([x for r in results for x in r.radii_m])) if inside else math.nan,
            "candidates": sum(r.candidates for r in results),
            "candidates_new": sum(r.candidates_new for r in results)}


def world_rows(label: str, results: list[WorldResult]) -> list[str]:
    s = summarize_worlds(results)
    return [label, str(s["worlds"]), str(s["rounds"]), str(s["located"]), f"{100 * s['recall']:.1f} %",
            f"{s['median_m']:.2f}", f"{s['p95_m']:.2f}", str(s["false"]), str(s["extra"]), f"{s['radius_m']:.2f}",
            f"{100 * s['inside95']:.0f} %", f"{s['candidates']} ({s['candidates_new']})"]


WORLD_HEAD = ["world", "seeds", "rounds", "located", "recall", "median m", "p95 m", "false", "extra", "radius m",
              "in 95 % radius", "for review (new rounds)"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="crlb,nodes,noise,worlds,bursts,throughput")
    ap.add_argument("--seeds", default="1,2,3,4,5", help="world seeds (default 1..5)")
    ap.add_argument("--trials", type=int, default=300, help="trials per point of crlb / nodes / noise")
    ap.add_argument("--workers", type=int, default=None, help="processes for rendering/detection")
    ap.add_argument("--markdown", type=Path, help="also write the tables as markdown to this file")
    ap.add_argument("--burst-rates", default="10,15", help="burst rates (rounds/s) of the bursts part (default 10,15)")
    ap.add_argument("--live-step", type=float, default=None, metavar="S",
                    help="worlds and bursts: decide as a live server would, the watermark moving every S s of "
                         "audio (default: once every event is in, as earwitness locate)")
    args = ap.parse_args(argv)
    if args.live_step is not None and not args.live_step > 0:
        ap.error(f"--live-step {args.live_step}: must be > 0")
    live = args.live_step
    how = "" if live is None else f", decided as live (watermark steps of {live:g} s)"
    args.burst_rates = [float(r) for r in args.burst_rates.split(",") if r]
    parts = [p for p in args.parts.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    md: list[str] = []
    status = 0

    def show(title: str, head: list[str], rows: list[list[str]]) -> None:
        print(f"\n== {title}\n" + _table(head, rows, False), flush=True)
        md.extend([f"### {title}", "", _table(head, rows, True), ""])

    if "crlb" in parts:
        t0 = time.perf_counter()
        rows = part_crlb(args.trials)
        show(f"solver vs Cramér–Rao bound (8 nodes, {args.trials} trials each; {time.perf_counter() - t0:.0f} s)",
             ["timing σ µs", "RMSE m", "CRLB m", "RMSE / CRLB", "in 95 % radius"],
             [[f"{r['sigma_us']:.0f}", f"{r['rmse_m']:.3f}", f"{r['crlb_m']:.3f}", f"{r['ratio']:.2f}",
               f"{100 * r['inside95']:.0f} %"] for r in rows])
        if any(r["ratio"] > 1.2 for r in rows):
            status = 1
    for kind in ("nodes", "noise"):
        if kind in parts:
            rows = part_sweep(kind, max(50, args.trials // 3))
            show(f"error vs {'number of nodes (σ 100 µs)' if kind == 'nodes' else 'timing noise (8 nodes)'}",
                 ["nodes", "timing σ µs", "found", "median m", "p95 m"],
                 [[str(r["nodes"]), f"{r['sigma_us']:.0f}", f"{100 * r['found']:.0f} %", f"{r['median_m']:.3f}",
                   f"{r['p95_m']:.3f}"] for r in rows])
    pool = ProcessPoolExecutor(max_workers=args.workers or os.cpu_count() or 1) \
        if any(p in parts for p in ("worlds", "bursts")) else None
    try:
        if "worlds" in parts:
            t0 = time.perf_counter()
            plain = [run_world(World("default", s), pool, live) for s in seeds]
            hard = [run_world(World("hard", s, **HARD), pool, live) for s in seeds]
            show(f"simulated worlds, full pipeline on rendered audio{how} ({time.perf_counter() - t0:.0f} s)",
                 WORLD_HEAD,
                 [world_rows("default (clock 20 µs, 30 % echo facades)", plain),
                  world_rows("hard: wind 2 m/s, ΔT 1 °C, position 0.5 m, clock 20 µs, 10 % blocked, "
                             "30 % echoes, bursts", hard)])
            for r in hard:
                print(f"  hard seed {r.world.seed}: {r.located}/{r.total} located, {r.false_shots} false, "
                      f"{r.extra_shots} extra, "
                      f"median {np.median(r.errors_m) if r.errors_m else math.nan:.2f} m, "
                      f"max {max(r.errors_m, default=math.nan):.2f} m, {r.wall_s:.0f} s")
        if "bursts" in parts:
            t0 = time.perf_counter()
            rows_b = []
            for rate in args.burst_rates:
                res = [run_world(World(f"burst{rate:g}", s, burst_rounds=10, burst_rate_hz=rate, **HARD), pool,
                                 live) for s in seeds]
                rows_b.append(world_rows(f"burst {rate:g}/s", res))
                for r in res:
                    print(f"  burst {rate:g}/s seed {r.world.seed}: {r.located}/{r.total} located, "
                          f"{r.false_shots} false, {r.extra_shots} extra, median {np.median(r.errors_m) if r.errors_m else math.nan:.2f} m, "
                          f"max {max(r.errors_m, default=math.nan):.2f} m", flush=True)
            show(f"bursts of 10 rounds at {' and '.join(f'{r:g}' for r in args.burst_rates)} rounds/s, hard world"
                 f"{how} ({time.perf_counter() - t0:.0f} s)", WORLD_HEAD, rows_b)
            rows = [two_shooters(s) for s in seeds]
            show("two shooters 0.4 s apart, 150–700 m apart (arrival times, 8 nodes, σ 50 µs)",
                 ["seed", "rounds", "located", "incidents true", "incidents found"],
                 [[str(s), str(r[0]), str(r[1]), str(r[2]), str(r[3])] for s, r in zip(seeds, rows)])
    finally:
        if pool is not None:
            pool.shutdown()
    if "throughput" in parts:
        r = part_throughput(workers=args.workers)
        show(f"earwitness locate throughput (48 kHz WAVs, audio mode; median of {r['runs']} runs)",
             ["node-seconds", "wall s", "node-s per s", "best run", "cpus", "shots reported", "rounds fired"],
             [[f"{r['node_seconds']:.0f}", f"{r['wall_s']:.2f}", f"{r['rate']:.0f}", f"{r['best_rate']:.0f}",
               str(r["cpus"]), str(r["shots"]), str(r["rounds"])]])
    if args.markdown:
        args.markdown.write_text("\n".join(md) + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    return status


def two_shooters(seed: int) -> tuple[int, int, int, int]:
    """Two shooters (3 rounds each, 0.3 s apart) starting 0.4 s apart, through the
    Engine on arrival times: (rounds, located, incidents true, incidents found)."""
    from common.geodesy import LocalFrame
    from server.engine import Engine

    rng = np.random.default_rng([seed, 0x2547])
    c = speed_of_sound(15.0)
    frame = LocalFrame(40.44, -79.99, 250.0)
    rec = np.column_stack([rng.uniform(-600, 600, (8, 2)), rng.uniform(4, 8, 8)])
    a = np.array([*rng.uniform(-300, 300, 2), 1.5])
    while True:
        b = np.array([*rng.uniform(-450, 450, 2), 1.5])
        if 150 <= np.linalg.norm(a - b) <= 700:
            break
    t_start = 1_700_000_000 * 10**9
    shots = [(a, 0.3 * k) for k in range(3)] + [(b, 0.4 + 0.3 * k) for k in range(3)]
    events = []
    lat, lon, alt = frame.to_wgs84(rec)
    for p, te in shots:
        for i in range(8):
            t = te + np.linalg.norm(rec[i] - p) / c + rng.normal(0, 50e-6)
            events.append(Event(node_id=f"n{i}", seq=len(events), t_utc_ns=t_start + int(t * 1e9), sigma_ns=50_000.0,
                                sample_rate_hz=48000.0, peak_dbfs=-20.0, snr_db=30.0,
                                snippet_t0_ns=t_start + int(t * 1e9), snippet=np.zeros(0, dtype=np.int16),
                                lat=float(lat[i]), lon=float(lon[i]), alt=float(alt[i])))
    events.sort(key=lambda e: e.t_utc_ns)
    eng = Engine(ServerConfig(database=":memory:", allow_plaintext=True, max_clock_skew_s=0.0, temperature_c=15.0))
    eng.ingest_events(events, received_ns=0)
    reps = eng.finish()
    ok = 0
    for p, te in shots:
        for r in reps:
            xy = frame.to_enu(r.lat, r.lon, 0.0)[:2]
            if abs((r.t_utc_ns - t_start) / 1e9 - te) < 0.05 and np.linalg.norm(xy - p[:2]) < 10:
                ok += 1
                break
    return len(shots), ok, 2, len({r.incident for r in reps})


if __name__ == "__main__":
    sys.exit(main())
