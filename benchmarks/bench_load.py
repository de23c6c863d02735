"""Load benchmark: ≥ 1,000 simulated nodes against the real server, over loopback.

    python benchmarks/bench_load.py                 # both phases, ~1.5 min
    python benchmarks/bench_load.py --phase ingest  # only the ingest path
    python benchmarks/bench_load.py --nodes 2000 --rate 8000 --plaintext

The server runs in its own process: the real ``IngestServer`` + ``Engine`` +
``Store`` (SQLite WAL, synchronous=FULL, every event sealed into the audit chain,
committed before it is acked), CURVE on with every node's key enrolled (unless
``--plaintext``). The nodes run in this process: one DEALER socket per node (its
own routing id and CURVE key pair), each keeping its unacked events in memory and
resending them after ``--resend-s`` like the real outbox (no per-node SQLite file:
1,000 fsyncing outboxes on one disk would measure the disk, not the server).
Nodes sit on a 150 m lattice; each node sends a heartbeat every ``--heartbeat-s``
(staggered). "Fireworks night": impulsive sources at random places, each heard by
every node within ``--radius`` m, at arrival times t_emit + distance / c.

Phase 1, *ingest*: the server's association is switched off (``IngestOnlyEngine``)
and the burst runs at ``--rate`` events/s for ``--burst-s`` s. Measures what the
server can take in: sustained events/s stored+acked, ingest-to-ACKED latency
(first send → ack received at the node) p50/p99/max, server memory and CPU, and
loss (every event acked, stored exactly once, audit chain verified).

Phase 2, *end to end*: the real Engine (association, solver, incidents) with the
same nodes, a gentle burst (``--e2e-fireworks-per-s`` for ``--e2e-s`` s).
Measures ingest-to-LOCATED latency (the last event of a firework sent → its shot
received on the PUB feed) p50/p99, how many fireworks were located, the
association's CPU cost per event, and loss. The published shots are scored by
the project's rules (``benchmarks/scoring.py``): a shot locates a firework if
within 0.1 s of its emission and 100 m of its place (optimal one-to-one
assignment); "false": more than 100 m from every firework; "extra": near one
but matched to none. The phase waits (up to ``--e2e-wait-s``) until every
firework is located, not merely until as many shots as fireworks arrived.

The two phases are reported separately because association is far more
expensive per event than ingest (see the printout): phase 1 shows the ingest
path's capacity, phase 2 what association sustains at this network size.

``EW_PROFILE=FILE`` writes a cProfile of the server loop to FILE.
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
from collections import deque
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.acoustics import speed_of_sound  # noqa: E402
from common.geodesy import LocalFrame  # noqa: E402
from common.protocol import Ack, Event, Heartbeat, decode, encode  # noqa: E402
from common.recording_set import TruthShot  # noqa: E402
from benchmarks.scoring import TestScore, score_test  # noqa: E402

FRAME = LocalFrame(40.44, -79.99, 250.0)
C = speed_of_sound(20.0)
SPACING_M = 150.0
#: As the real node (PublisherConfig): heartbeats this often for ACTIVE_S after an event.
ACTIVE_HEARTBEAT_S = 0.5
ACTIVE_S = 10.0
SNIPPET = (np.exp(-np.arange(1440) / 48.0) * 20_000 * (np.arange(1440) >= 240)).astype(np.int16)


# --------------------------------------------------------------- the server
def _server_main(workdir: str, keys_dir: str | None, associate: bool, hearing_range_m: float, ready, stop,
                 out) -> None:
    """Child process: build the real server and serve until ``stop`` is set."""
    import threading

    import dataclasses

    from common.config import AssociationConfig, ServerConfig
    from server.engine import Engine
    from server.net import IngestServer
    from server.store import Store

    class IngestOnlyEngine(Engine):
        """The real store path (dedup, audit sealing, commit) without association."""

        def _queue(self, ev, key):  # noqa: D401 - nothing kept in memory
            return None

        def advance(self, now_ns=None, budget_s=None):
            return []

    cfg = ServerConfig(bind="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*",
                       database=os.path.join(workdir, "server.sqlite"), temperature_c=20.0,
                       keys_dir=keys_dir, allow_plaintext=keys_dir is None,
                       # the network's configured hearing range: how far its nodes hear
                       # these sources (the fireworks' radius plus a margin)
                       association=dataclasses.replace(AssociationConfig(), hearing_range_m=hearing_range_m))
    security = None
    if keys_dir is not None:
        from server.security import secure_server_options
        security = secure_server_options(keys_dir)
    store = Store(cfg.database)
    engine = (Engine if associate else IngestOnlyEngine)(cfg, store)
    server = IngestServer(cfg, engine, security=security)
    ready.put((server.bound, server.pub_bound))
    ev = threading.Event()
    run = server.run
    if os.environ.get("EW_PROFILE"):
        def run(stop, _run=server.run):
            import cProfile
            cProfile.runctx("_run(stop)", globals(), {"_run": _run, "stop": stop}, os.environ["EW_PROFILE"])
    loop_cpu = [0.0]

    def timed_run(stop, _run=run):
        try:
            _run(stop)
        finally:
            loop_cpu[0] = time.thread_time()
    th = threading.Thread(target=timed_run, args=(ev,), daemon=True)
    th.start()
    # measure the engine's own time (association + solver) as a share of the loop
    engine_cpu = [0.0]
    if associate:
        adv = engine.advance

        def timed_advance(now_ns=None, budget_s=None):
            t = time.thread_time()
            try:
                return adv(now_ns, budget_s)
            finally:
                engine_cpu[0] += time.thread_time() - t
        engine.advance = timed_advance
    while not stop.wait(0.1):
        pass
    threads = _thread_cpu()         # while every thread is still alive
    ev.set()
    th.join(10)
    server.close()
    if security is not None:
        security.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"stats": server.stats(), "maxrss_mb": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime,
             "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "loop_cpu_s": loop_cpu[0], "threads": threads,
             "engine_cpu_s": engine_cpu[0], "pending": engine.assoc.pending})
    store.close()


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads by name (Linux /proc;
    {} elsewhere): shows where the ingest path's time goes besides the loop."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/self/task/{t}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


# ---------------------------------------------------------------- the nodes
class Nodes:
    """``n`` lightweight nodes: DEALER sockets with in-memory at-least-once delivery."""

    def __init__(self, ctx: zmq.Context, n: int, endpoint: str, curve: dict | None, resend_s: float,
                 heartbeat_s: float) -> None:
        k = int(np.ceil(np.sqrt(n)))
        self.ids = [f"n{i:05d}" for i in range(n)]
        self.pos = np.array([[(i % k) * SPACING_M, (i // k) * SPACING_M, 5.0] for i in range(n)])
        lat, lon, alt = FRAME.to_wgs84(self.pos)
        self.wgs = list(zip(map(float, lat), map(float, lon), map(float, alt)))
        self.resend_s = resend_s
        self.heartbeat_s = heartbeat_s
        self.socks: list[zmq.Socket] = []
        self.poller = zmq.Poller()
        self.index: dict[zmq.Socket, int] = {}
        for i, nid in enumerate(self.ids):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, nid.encode())
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100_000)
            s.setsockopt(zmq.IMMEDIATE, 1)
            if curve is not None:
                pub, sec, server = curve[nid]
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server
            s.connect(endpoint)
            self.socks.append(s)
            self.poller.register(s, zmq.POLLIN)
            self.index[s] = i
        self.seq = [0] * n
        self.unacked: list[dict[int, list]] = [{} for _ in range(n)]   # seq → [frames, t_ev, last_sent]
        self.first_sent: dict[tuple[int, int], float] = {}
        self.ack_latency: list[float] = []
        self.acked = 0
        self.sent = self.resent = self.blocked = self.dup_acks = 0
        first = np.random.default_rng(0).uniform(0, heartbeat_s, n) + time.monotonic()
        self._hb_due = [(float(t), i) for i, t in enumerate(first)]     # heap of (due, node)
        heapq.heapify(self._hb_due)
        self._next_hb = [float(t) for t in first]      # each node's real next heartbeat
        self._active_until = [0.0] * n                 # like the node: faster heartbeats after an event
        self.hb_seq = [0] * n
        self.unsent: deque[tuple[int, int]] = deque()   # (node, seq) whose send hit a full queue
        self._next_resend_scan = 0.0

    def event_frames(self, i: int, t_ns: int) -> tuple[int, list[bytes]]:
        self.seq[i] += 1
        lat, lon, alt = self.wgs[i]
        ev = Event(node_id=self.ids[i], seq=self.seq[i], t_utc_ns=t_ns, sigma_ns=20_000.0,
                   sample_rate_hz=48_000.0, peak_dbfs=-3.0, snr_db=40.0, snippet_t0_ns=t_ns - 5_000_000,
                   snippet=SNIPPET, lat=lat, lon=lon, alt=alt)
        return self.seq[i], encode(ev)

    def submit(self, i: int, seq: int, frames: list[bytes], t_ns: int) -> None:
        now = time.monotonic()
        self._active_until[i] = now + ACTIVE_S
        if self._next_hb[i] > now + ACTIVE_HEARTBEAT_S:
            self._next_hb[i] = now + ACTIVE_HEARTBEAT_S
            heapq.heappush(self._hb_due, (self._next_hb[i], i))
        self.unacked[i][seq] = [frames, t_ns, None]
        self._send(i, seq)

    def _send(self, i: int, seq: int) -> bool:
        item = self.unacked[i].get(seq)
        if item is None:
            return True
        try:
            self.socks[i].send_multipart(item[0], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.blocked += 1
            self.unsent.append((i, seq))
            return False
        now = time.monotonic()
        if item[2] is None:
            self.sent += 1
            self.first_sent[(i, seq)] = now
        else:
            self.resent += 1
        item[2] = now
        return True

    def service(self, timeout_ms: int = 0, stream_lag_s: float = 0.05) -> None:
        """Receive acks, send due heartbeats and resends."""
        for s, _ in self.poller.poll(timeout_ms):
            i = self.index[s]
            while True:
                try:
                    frames = s.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = decode(frames)
                if not isinstance(msg, Ack):
                    continue
                now = time.monotonic()
                for seq in msg.seqs:
                    if self.unacked[i].pop(seq, None) is None:
                        self.dup_acks += 1
                        continue
                    self.acked += 1
                    self.ack_latency.append(now - self.first_sent.pop((i, seq)))
        for _ in range(len(self.unsent)):          # retry what a full queue refused, in order
            i, seq = self.unsent.popleft()
            if not self._send(i, seq):
                break
        now = time.monotonic()
        while self._hb_due and self._hb_due[0][0] <= now:     # heartbeats that are due
            t, i = heapq.heappop(self._hb_due)
            if t != self._next_hb[i]:
                continue                                       # rescheduled earlier since
            gap = ACTIVE_HEARTBEAT_S if now < self._active_until[i] else self.heartbeat_s
            self._next_hb[i] = now + gap
            heapq.heappush(self._hb_due, (now + gap, i))
            self.heartbeat(i, stream_lag_s)
        if now >= self._next_resend_scan:          # like Outbox.due(): resend what waited resend_s
            self._next_resend_scan = now + 1.0
            for i in range(len(self.ids)):
                for seq, item in list(self.unacked[i].items()):
                    if item[2] is not None and now - item[2] >= self.resend_s:
                        self._send(i, seq)

    def heartbeat(self, i: int, stream_lag_s: float) -> bool:
        now_ns = time.time_ns()
        stream = now_ns - int(stream_lag_s * 1e9)
        if self.unacked[i]:                       # never promise past an unacked event
            stream = min(stream, min(it[1] for it in self.unacked[i].values()) - 1)
        lat, lon, alt = self.wgs[i]
        self.hb_seq[i] += 1
        hb = Heartbeat(node_id=self.ids[i], seq=self.hb_seq[i], t_utc_ns=now_ns, stream_utc_ns=stream,
                       lat=lat, lon=lon, alt=alt, version="bench", status={"outbox_pending": len(self.unacked[i])})
        try:
            self.socks[i].send_multipart(encode(hb), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.blocked += 1
            return False

    def pending(self) -> int:
        return sum(len(u) for u in self.unacked)

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)


def plan_fireworks(nodes: Nodes, rate_ev_s: float, duration_s: float, radius_m: float, start_ns: int,
                   seed: int, fireworks_per_s: float | None = None) -> tuple[list, list]:
    """Fireworks at random places: (sorted (t_ns, node index, t_emit index) list, fireworks)."""
    rng = np.random.default_rng(seed)
    lo, hi = nodes.pos[:, :2].min(axis=0), nodes.pos[:, :2].max(axis=0)
    heard_per = np.pi * radius_m**2 / SPACING_M**2
    fw_rate = fireworks_per_s if fireworks_per_s is not None else rate_ev_s / heard_per
    arrivals, fireworks = [], []
    t = 0.0
    while True:
        t += rng.exponential(1.0 / fw_rate)
        if t >= duration_s:
            break
        src = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]), 10.0])
        d = np.linalg.norm(nodes.pos - src, axis=1)
        near = np.nonzero(d <= radius_m)[0]
        if len(near) < 4:
            continue
        t_emit = start_ns + int(t * 1e9)
        fireworks.append({"t_ns": t_emit, "src": src, "n": len(near)})
        for i in near:
            arrivals.append((t_emit + int(d[i] / C * 1e9), int(i), len(fireworks) - 1))
    arrivals.sort()
    return arrivals, fireworks


def pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


# ------------------------------------------------------------------ phases
def run_phase(args, name: str, associate: bool, keys_dir: str | None, curve: dict | None) -> dict:
    work = tempfile.mkdtemp(prefix=f"ew-bench-{name}-")
    spawn = mp.get_context("spawn")
    ready, out, stop = spawn.Queue(), spawn.Queue(), spawn.Event()
    proc = spawn.Process(target=_server_main, args=(work, keys_dir, associate, args.radius + 100.0, ready, stop, out),
                         daemon=True)
    proc.start()
    endpoint, pub_ep = ready.get(timeout=60)
    ctx = zmq.Context(io_threads=2)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"shot")
    sub.connect(pub_ep)
    t_conn = time.monotonic()
    nodes = Nodes(ctx, args.nodes, endpoint, curve, args.resend_s, args.heartbeat_s)
    # wait until every node is connected (with IMMEDIATE, a send succeeds only then) and heard
    up = [False] * args.nodes
    deadline = time.monotonic() + 60
    while not all(up) and time.monotonic() < deadline:
        for i in range(args.nodes):
            if not up[i]:
                up[i] = nodes.heartbeat(i, 1.0)
        nodes.service(50)
    nodes.service(300)
    connect_s = time.monotonic() - t_conn
    if not all(up):
        raise RuntimeError(f"only {sum(up)} of {args.nodes} nodes could connect within 60 s")
    nodes.blocked = 0
    start_ns = time.time_ns() + int(0.5e9)
    if associate:
        arrivals, fireworks = plan_fireworks(nodes, 0, args.e2e_s, args.radius, start_ns, seed=2,
                                             fireworks_per_s=args.e2e_fireworks_per_s)
    else:
        arrivals, fireworks = plan_fireworks(nodes, args.rate, args.burst_s, args.radius, start_ns, seed=1)
    planned = [(t, i, fw, *nodes.event_frames(i, t)) for t, i, fw in arrivals]      # encoded before the clock runs
    last_sent_of_fw: dict[int, float] = {}
    shots = []
    t_first = None
    k = 0
    while k < len(planned):
        now_ns = time.time_ns()
        while k < len(planned) and planned[k][0] <= now_ns:
            t, i, fw, seq, frames = planned[k]
            nodes.submit(i, seq, frames, t)
            last_sent_of_fw[fw] = time.monotonic()
            t_first = t_first or time.monotonic()
            k += 1
        # wait for acks until the next planned event (not a busy loop: the
        # simulated nodes must not take the CPU the server is measured on)
        wait_ms = 0 if k >= len(planned) else min(5, max(0, (planned[k][0] - time.time_ns()) // 1_000_000))
        nodes.service(int(wait_ms))
        shots += _drain_shots(sub)
    t_last_send = time.monotonic()
    deadline = time.monotonic() + (args.e2e_wait_s if associate else 60)
    matched, scored_shots = 0, -1
    while time.monotonic() < deadline:
        nodes.service(20)
        shots += _drain_shots(sub)
        if associate and fireworks and len(shots) != scored_shots:   # every firework located, by the rules
            matched, scored_shots = score_fireworks(shots, fireworks).located, len(shots)
        if nodes.pending() == 0 and (not associate or matched >= len(fireworks)):
            break
    t_end_acks = time.monotonic()
    nodes.close()
    stop.set()
    srv = out.get(timeout=120)
    proc.join(30)
    sub.close(linger=0)
    ctx.destroy(linger=0)
    # loss: every event stored exactly once, audit intact
    db = os.path.join(work, "server.sqlite")
    conn = sqlite3.connect(db)
    n_rows, n_distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT node_id || ':' || seq) FROM events").fetchone()
    conn.close()
    from server.audit import list_ids_sqlite, load_row_sqlite, verify
    conn = sqlite3.connect(db)
    t_v = time.monotonic()
    ver = verify(conn, load_row_sqlite(conn), list_ids=list_ids_sqlite(conn))
    verify_s = time.monotonic() - t_v
    conn.close()
    res = {"name": name, "nodes": args.nodes, "events": len(planned), "fireworks": len(fireworks),
           "connect_s": connect_s, "send_s": t_last_send - (t_first or t_last_send),
           "all_acked_s": t_end_acks - (t_first or t_end_acks),
           "acked": nodes.acked, "stored": n_rows, "distinct": n_distinct, "unacked_left": nodes.pending(),
           "resent": nodes.resent, "ack_p50_ms": pct(nodes.ack_latency, 50) * 1e3,
           "ack_p99_ms": pct(nodes.ack_latency, 99) * 1e3, "ack_max_ms": max(nodes.ack_latency, default=0) * 1e3,
           "server": srv, "verify_ok": ver.ok, "verify_reason": ver.reason, "verify_s": verify_s,
           "client_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if associate:
        sc = score_fireworks(shots, fireworks) if fireworks else None
        matches = sc.matches if sc is not None else ()
        lat = [shots[m.located_index]["t_recv"] - last_sent_of_fw[m.truth_index] for m in matches]
        res.update(located=len(matches), shots=len(shots),
                   false_shots=sc.false_shots if sc is not None else len(shots),
                   extra_shots=sc.extra_shots if sc is not None else 0,
                   loc_p50_s=pct(lat, 50), loc_p99_s=pct(lat, 99), loc_max_s=max(lat, default=float("nan")))
    shutil.rmtree(work, ignore_errors=True)
    return res


def _drain_shots(sub) -> list[dict]:
    import json
    out = []
    while sub.poll(0):
        _, body = sub.recv_multipart()
        doc = json.loads(body)
        doc["t_recv"] = time.monotonic()
        out.append(doc)
    return out


def score_fireworks(shots: list[dict], fireworks: list[dict]) -> TestScore:
    """The published shots (PUB feed JSON) against the fireworks, by the project's
    rules (:func:`benchmarks.scoring.score_test`: 0.1 s, optimal one-to-one
    assignment, false beyond 100 m of every firework, the rest extra). Indices in
    the matches are into ``shots`` and ``fireworks``. ``fireworks`` must be non-empty."""
    src = np.array([fw["src"] for fw in fireworks], dtype=float).reshape(-1, 3)
    lat, lon, alt = FRAME.to_wgs84(src)
    truth = [TruthShot(lat=float(a), lon=float(o), alt=float(h), t_utc_ns=int(fw["t_ns"]))
             for a, o, h, fw in zip(np.atleast_1d(lat), np.atleast_1d(lon), np.atleast_1d(alt), fireworks)]
    located = [SimpleNamespace(lat=float(s["lat"]), lon=float(s["lon"]), t_utc_ns=int(round(float(s["time"]) * 1e9)),
                               error_m=s.get("error_m")) for s in shots]
    return score_test(truth, located, name="fireworks")


def enrol_all(n: int) -> tuple[str, dict]:
    """A key directory with ``n`` enrolled nodes (written directly: ``earwitness
    keys enroll`` fsyncs each file, which is right for operators but slow for 1,000)."""
    from server import keys as K

    d = tempfile.mkdtemp(prefix="ew-bench-keys-")
    server = K.init_server(d)
    curve = {}
    for i in range(n):
        nid = f"n{i:05d}"
        pub, sec = zmq.curve_keypair()
        (Path(d) / "nodes" / f"{nid}.key").write_text(
            f'metadata\n    node-id = "{nid}"\ncurve\n    public-key = "{pub.decode()}"\n')
        curve[nid] = (pub, sec, server.public_key.encode())
    return d, curve


def report(r: dict, associate: bool) -> None:
    s = r["server"]
    st = s["stats"]
    loss = r["events"] - r["distinct"]
    print(f"  {r['nodes']} nodes connected and heard from in {r['connect_s']:.1f} s; "
          f"{r['events']} events from {r['fireworks']} fireworks")
    rate = r["acked"] / r["all_acked_s"] if r["all_acked_s"] > 0 else float("nan")
    offered = f"offered over {r['send_s']:.1f} s = {r['events'] / max(r['send_s'], 1e-9):,.0f} events/s"
    if associate:
        print(f"  {offered}")
    else:
        print(f"  {offered}; all acked after {r['all_acked_s']:.1f} s → sustained {rate:,.0f} events/s "
              "stored+sealed+acked")
    print(f"  ingest-to-ACKED latency: p50 {r['ack_p50_ms']:.1f} ms, p99 {r['ack_p99_ms']:.1f} ms, "
          f"max {r['ack_max_ms']:.0f} ms; resends {r['resent']}")
    print(f"  loss: {loss} (sent {r['events']}, stored {r['stored']} rows / {r['distinct']} distinct, "
          f"unacked left {r['unacked_left']}); server duplicates absorbed {st.get('duplicates', 0)}, "
          f"rejected {st.get('rejected', 0)}")
    print(f"  audit chain: {'OK' if r['verify_ok'] else 'BROKEN'} ({r['verify_reason']}; {r['verify_s']:.1f} s)")
    print(f"  server: peak RSS {s['maxrss_mb']:.0f} MB, CPU {s['cpu_s']:.1f} s (user {s['user_s']:.1f}, system {s['sys_s']:.1f}; "
          f"the ingest loop thread {s['loop_cpu_s']:.1f} s; by thread: "
          f"{', '.join(f'{k} {v:.1f}' for k, v in sorted(s['threads'].items(), key=lambda kv: -kv[1]) if v >= 0.1)}); heartbeats {st.get('heartbeats', 0)}; "
          f"node simulator peak RSS {r['client_maxrss_mb']:.0f} MB")
    if associate:
        n_ev = st.get("engine_events", 0)
        print(f"  located {r['located']}/{r['fireworks']} fireworks ({r['shots']} shots published: "
              f"{r['false_shots']} false, {r['extra_shots']} extra; matched within 0.1 s and 100 m, "
              "benchmarks/scoring.py); "
              f"ingest-to-LOCATED latency p50 {r['loc_p50_s']:.1f} s, p99 {r['loc_p99_s']:.1f} s, "
              f"max {r['loc_max_s']:.1f} s")
        if n_ev:
            print(f"  association + solver: {s['engine_cpu_s']:.1f} s CPU for {n_ev} events = "
                  f"{s['engine_cpu_s'] / n_ev * 1e3:.1f} ms/event → at most {n_ev / max(s['engine_cpu_s'], 1e-9):,.0f} "
                  f"events/s on one core; {s['pending']} still pending at the end")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=["ingest", "e2e", "both"], default="both")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rate", type=float, default=6000.0, help="phase 1 offered events/s")
    p.add_argument("--burst-s", type=float, default=10.0)
    p.add_argument("--radius", type=float, default=400.0, help="hearing radius of a firework (m)")
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--resend-s", type=float, default=30.0,
                   help="resend an unacked event after this long (short timers under overload cause a "
                        "resend storm: see docs/protocol.md)")
    p.add_argument("--e2e-fireworks-per-s", type=float, default=1.0)
    p.add_argument("--e2e-s", type=float, default=5.0)
    p.add_argument("--e2e-wait-s", type=float, default=60.0, help="phase 2: how long to wait for shots")
    p.add_argument("--plaintext", action="store_true", help="no CURVE (default: CURVE with every key enrolled)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    keys_dir, curve = (None, None) if args.plaintext else enrol_all(args.nodes)
    print(f"earwitness load benchmark: {args.nodes} nodes, {'plaintext' if args.plaintext else 'CURVE'}, "
          f"{os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.1f} at start")
    phases = [("ingest", False, f"Phase 1 — ingest path (store + audit seal + commit + ack; association off), "
                                f"target {args.rate:,.0f} events/s for {args.burst_s:.0f} s:"),
              ("e2e", True, f"Phase 2 — end to end with association: {args.e2e_fireworks_per_s:g} firework/s "
                            f"for {args.e2e_s:g} s over {args.nodes} nodes:")]
    ok = True
    for name, associate, title in phases:
        if args.phase not in (name, "both"):
            continue
        print(f"\n{title}")
        r = run_phase(args, name, associate, keys_dir, curve)
        report(r, associate)
        ok &= r["events"] == r["distinct"] == r["stored"] and r["unacked_left"] == 0 and r["verify_ok"]
    if keys_dir:
        shutil.rmtree(keys_dir, ignore_errors=True)
    print(f"\n{'zero loss' if ok else 'LOSS OR DAMAGE DETECTED'}; total {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
