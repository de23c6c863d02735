"""Benchmark: a node's CPU use at 48 kHz mono in real time.

    python benchmarks/bench_node.py [--seconds 30]

Runs the real node pipeline (NodeRunner: system-clock timebase, detector,
persistent SQLite outbox, publisher) for ``--seconds`` of real time on 10 ms
blocks from a simulated microphone paced like a sound card, against a server in
another process, and prints the node process's CPU time as a share of one core.
The simulated microphone renders its audio in the same process, so the figure
includes that work too (an upper bound on the pipeline's own cost).
Target: ≤ 5 % of one core.
"""

from __future__ import annotations

import argparse
import resource
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
from node.publisher import Publisher  # noqa: E402
from node.timebase_system import SystemClockTimebase  # noqa: E402
from sim.adapters import SimAudioSource  # noqa: E402
from sim.render import NodeRenderer  # noqa: E402
from sim.world import make_scenario, make_town  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="node CPU at 48 kHz in real time")
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ew-bench-node-"))
    port = 5700 + (int(time.time()) % 200)
    conf = tmp / "server.toml"
    conf.write_text(f'[server]\nbind = "tcp://127.0.0.1:{port}"\npublish = "tcp://127.0.0.1:{port + 1}"\n'
                    f'database = "{tmp / "s.sqlite"}"\nallow_plaintext = true\n')
    server = subprocess.Popen([sys.executable, str(ROOT / "earwitness.py"), "server", "--config", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        town = make_town(8, 1200.0, seed=1)
        scen = make_scenario(town, max(2, int(args.seconds / 5)), seed=1,
                             start_utc_ns=(time.time_ns() // 10**9) * 10**9)
        lat, lon, alt = town.node_wgs84()
        cfg = NodeConfig(id="bench-01", server=f"tcp://127.0.0.1:{port}",
                         position=Position(float(lat[0]), float(lon[0]), float(alt[0])),
                         audio=AudioConfig(source="sim", blocksize=480), timebase=TimebaseConfig(mode="system"),
                         publisher=PublisherConfig(heartbeat_s=5.0))
        source = SimAudioSource(NodeRenderer(scen, town, 0, 48_000, seed=1), min(args.seconds, scen.duration_s),
                                blocksize=480, realtime=True)
        outbox = Outbox(str(tmp / "outbox.sqlite"))
        pub = Publisher(cfg.id, cfg.server, outbox, cfg.publisher)
        runner = NodeRunner(cfg, source, SystemClockTimebase(cfg.timebase, 48_000), pub, position=lambda: cfg.position)
        c0, w0 = cpu_s(), time.monotonic()
        summary = runner.run(threading.Event())
        c1, w1 = cpu_s(), time.monotonic()
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
        total = c1 - c0
        print(f"CPU {total:.2f} s = {100 * total / (w1 - w0):.2f} % of one core, of which the simulated "
              f"microphone {100 * render / (w1 - w0):.2f} %;")
        print(f"node pipeline alone: {100 * (total - render) / (w1 - w0):.2f} % of one core (target ≤ 5 %)")
        pub.close()
        outbox.close()
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
