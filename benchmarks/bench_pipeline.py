"""Benchmark: the node detector's cost and the server's association + solving rate.

    python benchmarks/bench_pipeline.py [--seconds 60] [--shots 30]

Prints absolute figures and ratios:
* detector: CPU seconds per second of 48 kHz audio and the real-time factor, fed in
  0.1 s chunks (as the node does) and in one piece;
* server: events per second through the engine (association + solver +
  incidents), in memory and with the SQLite store, on events the real detector
  produced from a simulated town; "shots reported" is how many the engine
  reported (a count, not scored against the truth: see bench_accuracy.py).
Targets (for later work): detector ≥ 500× real time per core; server ≥ 5,000 events/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common.config import DetectorConfig, Position, ServerConfig  # noqa: E402
from node.detector import Detector  # noqa: E402
from node.pipeline import onset_to_event  # noqa: E402
from node.timebase import FixedTimebase  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.store import Store  # noqa: E402
from sim.render import NodeRenderer  # noqa: E402
from sim.world import make_scenario, make_town  # noqa: E402

FS = 48_000


def bench_detector(x: np.ndarray, chunk: int | None) -> tuple[float, int]:
    det = Detector(DetectorConfig(), FS)
    t0 = time.process_time()
    n = 0
    if chunk is None:
        n += len(det.process(x))
    else:
        for i in range(0, x.size, chunk):
            n += len(det.process(x[i:i + chunk]))
    n += len(det.flush())
    return time.process_time() - t0, n


def make_events(town, scen):
    lat, lon, alt = town.node_wgs84()
    events = []
    for i, nid in enumerate(town.node_ids):
        x = NodeRenderer(scen, town, i, FS, seed=1).render_all()
        det = Detector(DetectorConfig(), FS)
        onsets = det.process(x) + det.flush()
        tb = FixedTimebase(scen.start_utc_ns, FS, sigma_ns=20_000)
        pos = Position(float(lat[i]), float(lon[i]), float(alt[i]))
        events += [onset_to_event(o, node_id=nid, seq=k, timebase=tb, sample_rate_hz=FS, position=pos)
                   for k, o in enumerate(onsets)]
    return sorted(events, key=lambda e: e.t_utc_ns)


def bench_server(events, temperature_c: float, store_path: str | None) -> tuple[float, int]:
    cfg = ServerConfig(database=store_path or ":memory:", temperature_c=temperature_c, max_clock_skew_s=0)
    store = Store(store_path) if store_path else None
    eng = Engine(cfg, store)
    t0 = time.perf_counter()
    shots = 0
    batch = 200
    for i in range(0, len(events), batch):
        eng.ingest_events(events[i:i + batch], received_ns=0)
        shots += len(eng._decide(events[min(i + batch, len(events)) - 1].t_utc_ns - 10**10))
    shots += len(eng.finish())
    dt = time.perf_counter() - t0
    if store:
        store.close()
    return dt, shots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of audio for the detector (default 60)")
    ap.add_argument("--shots", type=int, default=30, help="gunfire incidents for the server benchmark (default 30)")
    args = ap.parse_args(argv)

    town = make_town(8, 1200.0, seed=1)
    scen = make_scenario(town, max(3, int(args.seconds / 5)), seed=1)
    x = NodeRenderer(scen, town, 0, FS, seed=1).render(0, int(args.seconds * FS)).astype(np.float64)
    print(f"detector on {args.seconds:.0f} s of simulated 48 kHz audio (one node, {FS} Hz):")
    for label, chunk in (("0.1 s chunks", FS // 10), ("10 ms chunks", FS // 100), ("one piece", None)):
        cpu, n = bench_detector(x, chunk)
        print(f"  {label:<13} {cpu / args.seconds * 1e3:7.2f} ms CPU per s of audio   "
              f"{args.seconds / cpu:7.0f}× real time   ({n} onsets; target ≥ 500×)")

    scen2 = make_scenario(town, args.shots, seed=2)
    t0 = time.perf_counter()
    events = make_events(town, scen2)
    print(f"\nserver: {len(events)} events from 8 nodes, {args.shots} incidents "
          f"({len([t for t in scen2.truth if t.kind == 'gunshot'])} rounds), made in {time.perf_counter() - t0:.1f} s")
    for label, path in (("in memory", None), ("SQLite store", str(Path("/tmp") / f"ew-bench-{time.time_ns()}.sqlite"))):
        dt, shots = bench_server(events, scen2.temperature_c, path)
        print(f"  {label:<13} {len(events) / dt:8.0f} events/s  ({dt:.2f} s, {shots} shots reported; target ≥ 5,000/s)")
        if path:
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
