"""`earwitness sim`: a central server and N simulated nodes on this machine.

Real code: the server (ingest, engine, store) and each node's pipeline
(``NodeRunner``: detector, heartbeats) and ``Publisher``, talking over real ZeroMQ
sockets on loopback, in plaintext (``allow_plaintext``, no CURVE keys).
Simulated or left out, per node: the microphone (``SimAudioSource`` rendering the
simulated town); the GPS (the position is given, no gpsd, no survey-in); the
clock (``FixedTimebase(mode="simulated")`` with a random clock error, instead of
chrony or PPS); the outbox is in memory (``Outbox(None)``); and ``NodeServices``
(gpsd, chrony and system metrics) do not run, so heartbeats carry no GPS, clock
or system health values. The server's store is in memory unless
``SimOptions.database`` names a file.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.config import AudioConfig, NodeConfig, Position, PublisherConfig, ServerConfig, TimebaseConfig
from node.outbox import Outbox
from node.pipeline import NodeRunner
from node.publisher import Publisher
from node.timebase import FixedTimebase
from server.engine import CandidateReport, Engine, ShotReport
from server.net import IngestServer
from server.store import Store
from sim.adapters import SimAudioSource
from sim.render import NodeRenderer
from sim.report import MATCH_WINDOW_S, SimScore, alert_latencies_s, report_json, score, to_local
from sim.world import Scenario, Town, clock_offsets_ns, make_scenario, make_town

log = logging.getLogger("earwitness.sim")

SAMPLE_RATE = 48_000
#: The timing uncertainty a GPS-disciplined node reports (1 σ).
NODE_TIMING_SIGMA_NS = 20_000.0
#: A false or extra shot this close (m) to a simulated firework's crackle, and
#: within MATCH_WINDOW_S of it, was that crackle (SimResult.other_impulse).
OTHER_IMPULSE_M = 25.0


@dataclass(frozen=True)
class SimOptions:
    nodes: int = 8
    shots: int = 10
    seed: int = 1
    realtime: bool = False
    size_m: float = 1200.0
    clock_sigma_ns: float = 20_000.0
    burst: bool = True
    fireworks: bool = False
    local_sounds: bool = True
    database: str = ":memory:"
    blocksize: int = 4800


@dataclass(frozen=True)
class SimResult:
    town: Town
    scenario: Scenario
    reports: tuple[ShotReport, ...]
    score: SimScore
    wall_s: float
    server_counters: dict
    #: Line-ups the server offered for review instead (never shots).
    candidates: tuple[CandidateReport, ...] = ()
    #: With ``realtime``: per located round, seconds from the shot being fired to
    #: its report being published (empty otherwise: then the nodes run faster
    #: than the world, and there is no such time).
    latency_s: tuple[float, ...] = ()

    def report(self) -> dict:
        """The ``--report`` document (sim.report.report_json); a false or extra
        shot that was a simulated firework's crackle says so (``"source"``)."""
        truth = [{"lat": t.lat, "lon": t.lon, "t_ns": t.t_emit_utc_ns, "incident": t.incident_id,
                  "round": t.round_index + 1} for t in self.gunshots]
        doc = report_json(truth, [r.to_json() for r in self.reports], self.score)
        for key, idx in (("false", self.score.false_estimates), ("extra", self.score.extra_estimates)):
            for entry, j in zip(doc[key], idx):
                if (src := self.other_impulse(j)) is not None:
                    entry["source"] = src
        doc["summary"]["wall_s"] = round(self.wall_s, 2)
        doc["candidates"] = [c.to_json() for c in self.candidates]
        if self.latency_s:
            lat = np.array(self.latency_s)
            doc["summary"]["alert_latency_s"] = {"p50": round(float(np.median(lat)), 2),
                                                 "p90": round(float(np.percentile(lat, 90)), 2),
                                                 "max": round(float(lat.max()), 2)}
        return doc

    @property
    def gunshots(self):
        return [t for t in self.scenario.truth if t.kind == "gunshot"]

    def other_impulse(self, j: int) -> str | None:
        """The incident id of the simulated impulse other than gunfire (a
        firework's crackle) that located shot ``j`` is — emitted within
        ``MATCH_WINDOW_S`` of its time and within ``OTHER_IMPULSE_M`` of its
        position — or None. Earwitness locates impulses; it does not tell a
        firework from a gunshot (a person reviewing the shot can)."""
        rep = self.reports[j]
        others = [t for t in self.scenario.truth if t.kind != "gunshot"]
        if not others:
            return None
        xy = to_local(self.town.frame, [t.lat for t in others], [t.lon for t in others])
        e = to_local(self.town.frame, [rep.lat], [rep.lon])[0]
        best = None
        for t, p in zip(others, xy):
            d = float(np.hypot(*(p - e)))
            if abs(t.t_emit_utc_ns - rep.t_utc_ns) <= MATCH_WINDOW_S * 1e9 and d <= OTHER_IMPULSE_M:
                if best is None or d < best[0]:
                    best = (d, t.incident_id)
        return None if best is None else best[1]


def build_world(opts: SimOptions) -> tuple[Town, Scenario]:
    town = make_town(opts.nodes, opts.size_m, seed=opts.seed)
    # Start at the current second, so event times look like live ones (the
    # simulated server does not check them against its clock: faster-than-real-
    # time runs put them in the future).
    start = (time.time_ns() // 10**9 + 1) * 10**9
    scen = make_scenario(town, opts.shots, seed=opts.seed, start_utc_ns=start, burst=opts.burst,
                         fireworks=opts.fireworks, local_sounds=opts.local_sounds)
    return town, scen


def run_sim(opts: SimOptions, *, on_shot=None, server_cfg: ServerConfig | None = None) -> SimResult:
    """Run the whole network once; returns the located shots scored against truth."""
    t_start = time.perf_counter()
    town, scen = build_world(opts)
    cfg = server_cfg or ServerConfig(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                                     database=opts.database, temperature_c=scen.temperature_c,
                                     max_clock_skew_s=0.0, allow_plaintext=True,
                                     expected_nodes=town.node_ids)
    store = Store(cfg.database)
    engine = Engine(cfg, store)
    published: dict[int, int] = {}        # id(report) → monotonic ns when published

    def shot_out(rep: ShotReport) -> None:
        published[id(rep)] = time.monotonic_ns()
        if on_shot is not None:
            on_shot(rep)

    server = IngestServer(cfg, engine, on_shot=shot_out)
    stop_server = threading.Event()
    server_thread = threading.Thread(target=server.run, args=(stop_server,), name="server", daemon=True)
    server_thread.start()

    offsets = clock_offsets_ns(town.n_nodes, opts.clock_sigma_ns, seed=opts.seed)
    lat, lon, alt = town.node_wgs84()
    runners: list[threading.Thread] = []
    sources: list[SimAudioSource] = []
    node_errors: list[BaseException] = []
    stop_nodes = threading.Event()
    for i, node_id in enumerate(town.node_ids):
        ncfg = NodeConfig(
            id=node_id, server=server.bound,
            position=Position(float(lat[i]), float(lon[i]), float(alt[i])),
            audio=AudioConfig(source="sim", sample_rate=SAMPLE_RATE, blocksize=opts.blocksize),
            timebase=TimebaseConfig(mode="simulated"),
            publisher=PublisherConfig(resend_s=5.0, heartbeat_s=1.0),
        )
        renderer = NodeRenderer(scen, town, i, SAMPLE_RATE, seed=opts.seed)
        source = SimAudioSource(renderer, scen.duration_s, blocksize=opts.blocksize, realtime=opts.realtime)
        sources.append(source)
        tb = FixedTimebase(scen.start_utc_ns, SAMPLE_RATE, offset_ns=int(offsets[i]),
                           sigma_ns=NODE_TIMING_SIGMA_NS, mode="simulated")
        pub = Publisher(node_id, server.bound, Outbox(None), ncfg.publisher)
        runner = NodeRunner(ncfg, source, tb, pub, position=lambda p=ncfg.position: p,
                            heartbeat_stream_s=0.5)

        def work(r=runner, p=pub):
            try:
                r.run(stop_nodes)
            except BaseException as exc:  # reported after the run
                node_errors.append(exc)
            finally:
                p.close()

        th = threading.Thread(target=work, name=node_id, daemon=True)
        runners.append(th)
        th.start()
    try:
        for th in runners:
            while th.is_alive():
                th.join(0.2)
    except KeyboardInterrupt:
        stop_nodes.set()
        raise
    finally:
        stop_server.set()
        server_thread.join(5)
    if node_errors:
        raise RuntimeError(f"a simulated node failed: {node_errors[0]!r}") from node_errors[0]
    server.poll_once(timeout_ms=50)
    server.publish(engine.advance())
    server.finish()
    reports = tuple(sorted(server.reports, key=lambda r: r.t_utc_ns))
    server.close()
    store.close()
    gun = [t for t in scen.truth if t.kind == "gunshot"]
    frame = town.frame
    t_xy = to_local(frame, [t.lat for t in gun], [t.lon for t in gun])
    e_xy = to_local(frame, [r.lat for r in reports], [r.lon for r in reports])
    sc = score(np.array([t.t_emit_utc_ns for t in gun]), t_xy,
               np.array([r.t_utc_ns for r in reports]), e_xy)
    counters = dict(server.counters, **engine.counters)
    started = [s.started_mono_ns for s in sources if s.started_mono_ns is not None]
    latency = ()
    if opts.realtime and started:
        # the world's clock: the first node's audio began when frame 0 was due
        latency = alert_latencies_s(sc, [t.t_emit_utc_ns for t in gun], [published[id(r)] for r in reports],
                                    scen.start_utc_ns, min(started))
    return SimResult(town, scen, reports, sc, time.perf_counter() - t_start, counters,
                     tuple(sorted(server.candidates, key=lambda c: c.t_utc_ns)), latency)


def plot_result(res: SimResult, path: str | Path) -> Path:
    from server.plot import MapShot, draw_map

    frame = res.town.frame
    e_xy = to_local(frame, [r.lat for r in res.reports], [r.lon for r in res.reports])
    shots = [MapShot((float(x), float(y)), r.error_m, r.incident, f"{r.incident}.{r.round}")
             for (x, y), r in zip(e_xy, res.reports)]
    gun = res.gunshots
    t_xy = to_local(frame, [t.lat for t in gun], [t.lon for t in gun])
    links = [(m.estimate_index, m.truth_index) for m in res.score.matches if m.estimate_index is not None]
    walls = [((w.p0[0], w.p0[1]), (w.p1[0], w.p1[1])) for w in res.town.walls]
    s = res.score
    title = (f"earwitness sim: {s.located}/{s.total} rounds located, median error "
             f"{s.median_error_m or 0:.2f} m, {s.false_shots} false, {s.extra_shots} extra")
    return draw_map(path, res.town.nodes_enu[:, :2], res.town.node_ids, shots, truth_xy=t_xy,
                    walls=walls, title=title, links=links)


def format_summary(res: SimResult) -> str:
    s = res.score
    fw = sum(1 for j in s.false_estimates + s.extra_estimates if res.other_impulse(j) is not None)
    med = "n/a" if s.median_error_m is None else f"{s.median_error_m:.2f} m"
    p95 = "n/a" if s.p95_error_m is None else f"{s.p95_error_m:.2f} m"
    return (f"{s.located}/{s.total} rounds located ({100 * s.located / max(s.total, 1):.0f} %), "
            f"median error {med}, p95 {p95}, {s.false_shots} false shots, {s.extra_shots} extra"
            + (f" ({fw} of these a firework's crackles: impulses are located, not classified)" if fw else "")
            + f"; {res.server_counters.get('events', 0)} events from {res.town.n_nodes} nodes, "
            f"{res.server_counters.get('unassociated', 0)} not part of a shot"
            + (f", {n} candidate(s) for review" if (n := res.server_counters.get('candidates', 0)) else "")
            + (f"; alert latency (shot fired → published) p50 {np.median(res.latency_s):.1f} s, "
               f"max {max(res.latency_s):.1f} s" if res.latency_s else "")
            + f"; {res.wall_s:.1f} s")
