"""Benchmark: association (+ solver) throughput against network size.

Run from the project root:

    python benchmarks/bench_association.py [--nodes 8,100,1000] [--sources N]
        [--rate R] [--hearing-m 400] [--range-m M] [--spacing-m 150] [--clutter R]
        [--model-sigma-ms 0.1] [--engine] [--seed 0]

Fireworks-like load: sources at random places inside a square lattice of nodes
(150 m spacing unless ``--spacing-m``), emitted at ``--rate`` sources per
second of stream time; every node within ``--hearing-m`` hears each source at t0 + d/c + N(0, 50 µs). The
arrivals are fed in time order to ``server.association.Associator`` (which runs
the solver on every candidate), stepping with a watermark 0.1 s behind the
stream. Prints, per lattice: arrivals, sources, shots reported (how many the
association or engine reported, not matched to the sources), wall time,
arrivals (events) per second and ms per event, and how many seconds of stream
the association decides per wall second ("× real time": below 1 a live server
falls behind). ``--range-m`` sets ``AssociationConfig.hearing_range_m``
(default: the configuration's default). ``--clutter R`` adds, at every node,
R sounds per second that only that node hears (doors, dogs, traffic: what a
street node's detector picks besides shots), at random times. ``--engine``
runs the whole server core instead of the associator alone
(``server.engine.Engine``, in memory: association, the review search among
put-aside sounds, the final solve with cross-correlated snippets, incidents),
fed the same arrivals as events (one synthetic 30 ms impulse snippet each) in
0.1 s batches, deciding after each, with a heartbeat from every node every
0.5 s of stream (a node's rate after it has heard something): what a live
server spends, without its sockets and store. It goes on stepping after the
last sound until everything is decided ("reported live": the shots reported
that way, before the end-of-stream ``finish``, again a count not matched to
the sources; "delay": for those, the stream time from a shot's emission to its
decision — what a live server's alert waits for, less its computing time).

What to look for: the time per event should not grow with the number of nodes
once the lattice is wider than the hearing range. Clutter is what a busy
network mostly hears, and every sound is searched as a possible shot: its cost
grows with the arrivals around it, i.e. with clutter × the nodes within hearing
range.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.acoustics import speed_of_sound  # noqa: E402
from common.config import AssociationConfig, PublisherConfig, ServerConfig, SolverConfig  # noqa: E402
from common.geodesy import LocalFrame  # noqa: E402
from common.protocol import Event, Heartbeat  # noqa: E402
from server.association import Arrival, Associator  # noqa: E402
from server.engine import Engine  # noqa: E402

SPACING_M = 150.0
SIGMA_S = 50e-6
#: where the lattice's ENU origin lies (``--engine``: the events carry WGS84)
FRAME = LocalFrame(40.44, -79.99, 250.0)
FS = 48_000
#: ``--engine``: how long the nodes go on reporting after the last sound, at most
TAIL_NS = 60_000_000_000
#: a 30 ms snippet at ``FS``: 5 ms of silence, then an impulse decaying over 1 ms (int16)
SNIPPET = np.where(np.arange(1440) >= 240, np.exp(-(np.arange(1440) - 240) / 48.0) * 20_000, 0).astype(np.int16)


def lattice(n: int, spacing_m: float = SPACING_M) -> np.ndarray:
    """``n`` node positions (n, 3) m on a near-square lattice ``spacing_m`` apart."""
    cols = int(math.ceil(math.sqrt(n)))
    k = np.arange(n)
    return np.column_stack([(k % cols) * spacing_m, (k // cols) * spacing_m, np.full(n, 5.0)])


def arrivals_for(nodes: np.ndarray, n_sources: int, rate: float, hearing_m: float, c: float,
                 rng: np.random.Generator, clutter: float = 0.0) -> list[tuple[int, int]]:
    """(t_ns, node index) of every arrival, time-sorted: ``n_sources`` sources
    at ``rate`` per second, and ``clutter`` sounds per node per second heard
    by that node alone, over the same stretch of time."""
    lo, hi = nodes[:, :2].min(axis=0), nodes[:, :2].max(axis=0)
    out = []
    t0 = t_start = 10.0
    for _ in range(n_sources):
        t0 += rng.exponential(1.0 / rate)
        p = np.append(rng.uniform(lo, hi), 1.5)
        d = np.linalg.norm(nodes - p, axis=1)
        for i in np.flatnonzero(d <= hearing_m):
            out.append((int((t0 + d[i] / c + rng.normal(0.0, SIGMA_S)) * 1e9), int(i)))
    if clutter > 0:
        for i in range(len(nodes)):
            n = rng.poisson(clutter * (t0 - t_start))
            out += [(int(t * 1e9), i) for t in rng.uniform(t_start, t0, n)]
    out.sort()
    return out


#: the air of the benchmark's world (°C)
TEMPERATURE_C = 15.0


def _load(n_nodes: int, n_sources: int, rate: float, hearing_m: float, range_m: float | None, seed: int,
          clutter: float, spacing_m: float) -> tuple[float, np.ndarray, list[tuple[int, int]], AssociationConfig]:
    """What :func:`run` and :func:`run_engine` share: (speed of sound m/s, node
    positions (n, 3) m, the arrivals, the association settings)."""
    c = speed_of_sound(TEMPERATURE_C)
    nodes = lattice(n_nodes, spacing_m)
    arr = arrivals_for(nodes, n_sources, rate, hearing_m, c, np.random.default_rng(seed), clutter)
    cfg = AssociationConfig() if range_m is None else replace(AssociationConfig(), hearing_range_m=range_m)
    return c, nodes, arr, cfg


def run(n_nodes: int, n_sources: int, rate: float, hearing_m: float, range_m: float | None,
        seed: int, clutter: float = 0.0, spacing_m: float = SPACING_M,
        model_sigma_s: float = 1e-4) -> dict[str, float]:
    c, nodes, arr, cfg = _load(n_nodes, n_sources, rate, hearing_m, range_m, seed, clutter, spacing_m)
    assoc = Associator(cfg, c, z_source=1.5, model_sigma_s=model_sigma_s)
    t_start = time.perf_counter()
    for i, p in enumerate(nodes):
        assoc.add_node(f"n{i}", p)
    shots = 0
    next_step = arr[0][0] if arr else 0
    for k, (t_ns, i) in enumerate(arr):
        if t_ns >= next_step:
            shots += len(assoc.step(t_ns - 100_000_000)[0])
            next_step = t_ns + 100_000_000
        assoc.add(Arrival(key=k + 1, node=f"n{i}", t_ns=t_ns, sigma_s=SIGMA_S, pos=nodes[i]))
    shots += len(assoc.step(None)[0])
    wall = time.perf_counter() - t_start
    return _result(n_nodes, arr, n_sources, shots, wall)


def _result(n_nodes: int, arr: list[tuple[int, int]], n_sources: int, shots: int, wall: float) -> dict[str, float]:
    stream_s = (arr[-1][0] - arr[0][0]) * 1e-9 if arr else 0.0
    return {"nodes": n_nodes, "arrivals": len(arr), "sources": n_sources, "shots": shots, "wall_s": wall,
            "events_per_s": len(arr) / wall if wall > 0 else float("nan"),
            "ms_per_event": 1e3 * wall / max(len(arr), 1),
            "realtime": stream_s / wall if wall > 0 else float("nan")}


def run_engine(n_nodes: int, n_sources: int, rate: float, hearing_m: float, range_m: float | None,
               seed: int, clutter: float = 0.0, spacing_m: float = SPACING_M,
               model_sigma_s: float = 1e-4) -> dict[str, float]:
    """:func:`run` through the whole ``Engine`` (see the module docstring)."""
    _, nodes, arr, assoc_cfg = _load(n_nodes, n_sources, rate, hearing_m, range_m, seed, clutter, spacing_m)
    cfg = ServerConfig(database=":memory:", allow_plaintext=True, max_clock_skew_s=0.0,
                       temperature_c=TEMPERATURE_C, association=assoc_cfg,
                       solver=replace(SolverConfig(), model_sigma_s=model_sigma_s))
    wgs = [tuple(float(v) for v in FRAME.to_wgs84(p)) for p in nodes]
    ids = [f"n{i}" for i in range(n_nodes)]
    seqs = [0] * n_nodes
    step_ns = 100_000_000
    beat_ns = int(PublisherConfig().active_heartbeat_s * 1e9)
    t_start = time.perf_counter()
    eng = Engine(cfg, store=None)
    shots = 0
    delays: list[float] = []            # per shot decided live: stream seconds from its emission
    k = 0
    t = next_beat = arr[0][0] if arr else 0
    # after the last sound the nodes go on reporting, as live, until all is decided
    end_ns = (arr[-1][0] if arr else 0) + TAIL_NS

    def undecided() -> int:
        return eng.assoc.pending + (eng.review.pending if eng.review is not None else 0)

    while k < len(arr) or (undecided() and t < end_ns):
        t += step_ns
        batch = []
        while k < len(arr) and arr[k][0] <= t:
            t_ns, i = arr[k]
            seqs[i] += 1
            batch.append(Event(node_id=ids[i], seq=seqs[i], t_utc_ns=t_ns, sigma_ns=SIGMA_S * 1e9,
                               sample_rate_hz=float(FS), peak_dbfs=-6.0, snr_db=40.0,
                               snippet_t0_ns=t_ns - 5_000_000, snippet=SNIPPET,
                               lat=wgs[i][0], lon=wgs[i][1], alt=wgs[i][2]))
            k += 1
        if batch:
            eng.ingest_events(batch, received_ns=t)
        for i in range(n_nodes if t >= next_beat else 0):
            eng.ingest_heartbeat(Heartbeat(node_id=ids[i], seq=0, t_utc_ns=t, stream_utc_ns=t, lat=wgs[i][0],
                                           lon=wgs[i][1], alt=wgs[i][2], version="bench", status={}),
                                 received_ns=t)
        if t >= next_beat:
            next_beat = t + beat_ns
        decided = eng.advance(now_ns=t)
        shots += len(decided)
        delays += [(t - r.t_utc_ns) * 1e-9 for r in decided]
    live = shots
    shots += len(eng.finish())
    wall = time.perf_counter() - t_start
    return {**_result(n_nodes, arr, n_sources, shots, wall), "live_shots": live,
            "delay_p50_s": float(np.median(delays)) if delays else float("nan"),
            "delay_max_s": max(delays) if delays else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="8,100,1000", help="comma list of lattice sizes")
    ap.add_argument("--sources", type=int, default=60, help="sources per lattice (default 60)")
    ap.add_argument("--rate", type=float, default=5.0, help="sources per second of stream time (default 5)")
    ap.add_argument("--hearing-m", type=float, default=400.0, help="nodes within this hear a source (m)")
    ap.add_argument("--range-m", type=float, default=None,
                    help="AssociationConfig.hearing_range_m (default: the configuration's default)")
    ap.add_argument("--spacing-m", type=float, default=SPACING_M,
                    help=f"lattice spacing (m, default {SPACING_M:.0f})")
    ap.add_argument("--clutter", type=float, default=0.0,
                    help="sounds per node per second that only that node hears (default 0)")
    ap.add_argument("--model-sigma-ms", type=float, default=0.1,
                    help="the association's model timing error (ms, default 0.1; the server's default "
                         f"[solver] model_sigma_s is {SolverConfig().model_sigma_s * 1e3:g})")
    ap.add_argument("--engine", action="store_true",
                    help="run the whole server core (server.engine.Engine), not the associator alone")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.clutter >= 0 and args.model_sigma_ms >= 0 and args.rate > 0 and args.sources > 0
            and args.spacing_m > 0):
        ap.error("--clutter and --model-sigma-ms must be >= 0; --rate, --sources and --spacing-m > 0")
    default_range = AssociationConfig().hearing_range_m
    rng_name = f"{args.range_m:.0f} m" if args.range_m is not None else f"{default_range:.0f} m (default)"
    what = "engine (association, review, final solve, incidents)" if args.engine else "association"
    print(f"{what} throughput: lattice spacing {args.spacing_m:.0f} m, heard within {args.hearing_m:.0f} m, "
          f"{args.rate:g} sources/s, hearing_range_m {rng_name}, clutter {args.clutter:g} sounds/s per node, "
          f"model σ {args.model_sigma_ms:g} ms")
    print(f"{'nodes':>6} {'arrivals':>8} {'sources':>7} {'shots reported':>14} {'wall s':>7} {'events/s':>9} "
          f"{'ms/event':>9} {'× real time':>11}"
          + (f" {'reported live':>13} {'delay p50 s':>11} {'max s':>6}"
                                    if args.engine else ""))
    for n in (int(x) for x in args.nodes.split(",") if x.strip()):
        bench = run_engine if args.engine else run
        r = bench(n, args.sources, args.rate, args.hearing_m, args.range_m, args.seed, args.clutter, args.spacing_m,
                  args.model_sigma_ms * 1e-3)
        print(f"{r['nodes']:>6} {r['arrivals']:>8} {r['sources']:>7} {r['shots']:>14} {r['wall_s']:>7.2f} "
              f"{r['events_per_s']:>9.0f} {r['ms_per_event']:>9.2f} {r['realtime']:>11.2f}"
              + (f" {r['live_shots']:>13} {r['delay_p50_s']:>11.1f} {r['delay_max_s']:>6.1f}"
                 if args.engine else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
