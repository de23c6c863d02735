"""Benchmark: a node's CPU use at 48 kHz mono in real time, and its network data.

    python benchmarks/bench_node.py [--seconds 30] [--quiet] [--plaintext]

Runs the real node pipeline (NodeRunner: system-clock timebase, detector,
persistent SQLite outbox, publisher) for ``--seconds`` of real time on 10 ms
blocks from a simulated microphone paced like a sound card, against a server in
another process, and prints the node process's CPU time as a share of one core.
The simulated microphone renders its audio in the same process, so the figure
includes that work too (an upper bound on the pipeline's own cost).
Target: ≤ 5 % of one core.

The node's connection runs through a relay that counts the TCP payload bytes
each way (ZeroMQ framing, CURVE encryption and ZeroMQ's own keep-alives
included; IP/TCP headers not), printed per second and per day at that rate —
what a node on a mobile data plan pays for. The link is CURVE-encrypted with
enrolled keys, as deployed (``--plaintext``: not). The default town hears a
shot every few seconds (so the node sends events, and heartbeats every
``active_heartbeat_s``); ``--quiet`` has no sound but the background, the
node's usual state: heartbeats every ``heartbeat_s`` only.
"""

from __future__ import annotations

import argparse
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.config import AudioConfig, NodeConfig, Position, PublisherConfig, TimebaseConfig  # noqa: E402
from node.audio import EndOfStream  # noqa: E402
from node.outbox import Outbox  # noqa: E402
from node.pipeline import NodeRunner  # noqa: E402
from node.publisher import CurveClientKeys, Publisher  # noqa: E402
from node.timebase_system import SystemClockTimebase  # noqa: E402
from server.keys import enroll, init_server  # noqa: E402
from sim.adapters import SimAudioSource  # noqa: E402
from sim.render import NodeRenderer  # noqa: E402
from sim.world import Scenario, make_scenario, make_town  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ByteRelay(threading.Thread):
    """Forwards TCP connections made to 127.0.0.1:``port`` to 127.0.0.1:``target``,
    counting the payload bytes each way (``up``: client → target)."""

    def __init__(self, target: int) -> None:
        super().__init__(name="byte-relay", daemon=True)
        self.target = target
        self.up = 0
        self.down = 0
        self.connections = 0
        self._halt = threading.Event()
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = self._listen.getsockname()[1]

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listen, selectors.EVENT_READ)
        peer: dict[socket.socket, tuple[socket.socket, bool]] = {}
        while not self._halt.is_set():
            for key, _ in sel.select(0.2):
                sock = key.fileobj
                if sock is self._listen:
                    client, _ = self._listen.accept()
                    try:
                        server = socket.create_connection(("127.0.0.1", self.target))
                    except OSError:
                        client.close()
                        continue
                    self.connections += 1
                    peer[client], peer[server] = (server, True), (client, False)
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(server, selectors.EVENT_READ)
                    continue
                other, upward = peer[sock]
                try:
                    data = sock.recv(65536)
                    if data:
                        other.sendall(data)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, other):
                        sel.unregister(s)
                        peer.pop(s, None)
                        s.close()
                    continue
                if upward:
                    self.up += len(data)
                else:
                    self.down += len(data)
        for s in list(peer):
            s.close()
        self._listen.close()

    def cpu_s(self) -> float:
        """CPU time this relay's thread has used (s): not the node's, so not counted as its."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.ident)) if self.is_alive() else 0.0

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _rate(n_bytes: int, seconds: float) -> str:
    """``n_bytes`` over ``seconds`` as B/s, and MB a day at that rate."""
    return f"{n_bytes / seconds:.0f} B/s ({n_bytes * 86_400 / seconds / 1e6:.1f} MB/day)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="node CPU at 48 kHz in real time, and its network data")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quiet", action="store_true", help="no shots or other sounds: heartbeats only")
    ap.add_argument("--plaintext", action="store_true", help="no CURVE encryption on the link")
    ap.add_argument("--link-ping-s", type=float, default=PublisherConfig().link_ping_s,
                    help="[publisher] link_ping_s: the node's ZeroMQ keep-alive (default %(default)s s)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ew-bench-node-"))
    port = 5700 + (int(time.time()) % 200)
    endpoint = f"tcp://127.0.0.1:{port}"
    conf = tmp / "server.toml"
    curve = None
    if args.plaintext:
        security = "allow_plaintext = true\n"
    else:
        init_server(tmp / "keys")
        e = enroll(tmp / "keys", "bench-01", endpoint)
        curve = CurveClientKeys(e.public_key, e.secret_key, e.server_public_key)
        security = f'keys_dir = "{tmp / "keys"}"\n'
    conf.write_text(f'[server]\nbind = "{endpoint}"\npublish = "tcp://127.0.0.1:{port + 1}"\n'
                    f'database = "{tmp / "s.sqlite"}"\n{security}')
    server = subprocess.Popen([sys.executable, str(ROOT / "earwitness.py"), "server", "--config", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    relay = ByteRelay(port)
    relay.start()
    try:
        # the node starts once the server listens: the relay would otherwise take its
        # connection and drop it mid-handshake, which the node reports as a refusal
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("bench_node: the server did not start (run `earwitness server` by hand "
                                     f"with {conf} to see why)") from None
                time.sleep(0.1)
        town = make_town(8, 1200.0, seed=1)
        start_ns = (time.time_ns() // 10**9) * 10**9
        if args.quiet:
            scen = Scenario((), start_ns, args.seconds)
        else:
            scen = make_scenario(town, max(2, int(args.seconds / 5)), seed=1, start_utc_ns=start_ns)
        lat, lon, alt = town.node_wgs84()
        cfg = NodeConfig(id="bench-01", server=f"tcp://127.0.0.1:{relay.port}",
                         position=Position(float(lat[0]), float(lon[0]), float(alt[0])),
                         audio=AudioConfig(source="sim", blocksize=480), timebase=TimebaseConfig(mode="system"),
                         publisher=PublisherConfig(link_ping_s=args.link_ping_s))
        source = SimAudioSource(NodeRenderer(scen, town, 0, 48_000, seed=1), min(args.seconds, scen.duration_s),
                                blocksize=480, realtime=True)
        outbox = Outbox(str(tmp / "outbox.sqlite"))
        pub = Publisher(cfg.id, cfg.server, outbox, cfg.publisher, curve=curve)
        runner = NodeRunner(cfg, source, SystemClockTimebase(cfg.timebase, 48_000), pub, position=lambda: cfg.position)
        half: list[tuple[float, int, int]] = []      # (time, up, down) half way through the run
        timer = threading.Timer(args.seconds / 2, lambda: half.append((time.monotonic(), relay.up, relay.down)))
        c0, rl0, w0 = cpu_s(), relay.cpu_s(), time.monotonic()
        timer.start()
        summary = runner.run(threading.Event())
        c1, rl1, w1 = cpu_s(), relay.cpu_s(), time.monotonic()
        timer.cancel()
        audio_s = summary.frames / 48_000
        print(f"node ran {w1 - w0:.1f} s of wall time on {audio_s:.1f} s of 48 kHz audio in 10 ms blocks, "
              f"{summary.events} events, {summary.heartbeats} heartbeats")
        # what the simulated microphone alone costs: render the same blocks unpaced
        mic = SimAudioSource(NodeRenderer(scen, town, 0, 48_000, seed=1), audio_s, blocksize=480)
        mic.start()
        r0 = cpu_s()
        while True:
            try:
                mic.read(0.0)
            except EndOfStream:
                break
        render = cpu_s() - r0
        total = (c1 - c0) - (rl1 - rl0)                # the byte-counting relay is not the node
        print(f"CPU {total:.2f} s = {100 * total / (w1 - w0):.2f} % of one core, of which the simulated "
              f"microphone {100 * render / (w1 - w0):.2f} %;")
        print(f"node pipeline alone: {100 * (total - render) / (w1 - w0):.2f} % of one core (target ≤ 5 %)")
        pub.close()
        outbox.close()
        wall = w1 - w0
        link = "plaintext" if args.plaintext else "CURVE"
        print(f"network ({link}, TCP payload, {relay.connections} connection(s)): node → server "
              f"{relay.up:,} B, {_rate(relay.up, wall)}; server → node "
              f"{relay.down:,} B, {_rate(relay.down, wall)}; "
              f"{summary.events} events, {summary.heartbeats} heartbeats "
              f"(every {cfg.publisher.heartbeat_s:g} s, {cfg.publisher.active_heartbeat_s:g} s for "
              f"{cfg.publisher.active_s:g} s after an event; keep-alive every {cfg.publisher.link_ping_s:g} s)")
        if half:
            # the second half alone: without the start-up (CURVE handshake, the timebase's lock-in)
            t_h, up_h, down_h = half[0]
            span = w1 - t_h
            print(f"  second half of the run ({span:.0f} s): node → server {_rate(relay.up - up_h, span)}, "
                  f"server → node {_rate(relay.down - down_h, span)}")
    finally:
        server.terminate()
        try:
            server.wait(10)
        finally:
            relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
