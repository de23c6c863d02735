"""`earwitness sim`: run the whole network on this machine and print every shot
it locates next to the truth."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.timefmt import ns_to_iso


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="earwitness sim",
        description="Start a central server and N simulated sensor nodes that hear gunshots in a simulated "
                    "town, over real ZeroMQ sockets on loopback, and print every located shot next to the truth.")
    p.add_argument("--nodes", type=int, default=8, help="number of nodes (default 8)")
    p.add_argument("--shots", type=int, default=10, help="number of gunfire incidents (default 10; one is a burst)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the town and the shots (default 1)")
    p.add_argument("--realtime", action="store_true", help="pace the audio like the field (default: as fast as possible)")
    p.add_argument("--size", type=float, default=1200.0, help="side of the square town in metres (default 1200)")
    p.add_argument("--fireworks", action="store_true", help="add a crackling firework")
    p.add_argument("--no-burst", action="store_true", help="no multi-round burst")
    p.add_argument("--db", default=":memory:", help="SQLite file for the server's store (default: in memory)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report: every true round, its estimate and error")
    p.add_argument("--plot", metavar="FILE.png", help="draw a map of nodes, true and located shots")
    p.add_argument("--json", action="store_true", help="print one JSON line per located shot instead of text")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the server and nodes do")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.nodes < 4:
        print("earwitness sim: --nodes must be at least 4 (a 2-D fix needs 4 arrivals to be checked)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from sim.launcher import SimOptions, format_summary, plot_result, run_sim

    opts = SimOptions(nodes=args.nodes, shots=args.shots, seed=args.seed, realtime=args.realtime,
                      size_m=args.size, fireworks=args.fireworks, burst=not args.no_burst, database=args.db)

    def on_shot(rep):
        if args.json:
            print(json.dumps(rep.to_json()), flush=True)
        else:
            print(f"located  {ns_to_iso(rep.t_utc_ns, 3)}  incident {rep.incident:>3} round {rep.round:>2}  "
                  f"{rep.lat:.6f}, {rep.lon:.6f}  ±{rep.error_m:5.1f} m (95 %)  {len(rep.nodes)} nodes",
                  flush=True)

    print(f"earwitness sim: {opts.nodes} nodes over {opts.size_m:.0f} m × {opts.size_m:.0f} m, "
          f"{opts.shots} incidents, seed {opts.seed}{', real time' if opts.realtime else ''}", file=sys.stderr)
    res = run_sim(opts, on_shot=on_shot)
    if not args.json:
        print("\ntrue rounds and what was located:")
        doc = res.report()
        for row in doc["shots"]:
            t = row["truth"]
            est = "MISSED" if row["estimate"] is None else f"error {row['error_m']:.2f} m"
            print(f"  {t['time_utc'][:23]}  {t['incident']} round {t['round']}  {t['lat']:.6f}, {t['lon']:.6f}  {est}")
        for key, what in (("false", "FALSE SHOT"), ("extra", "EXTRA SHOT (near a round, matched to none)")):
            for f in doc[key]:
                src = f" — {f['source']}'s crackle, not gunfire" if "source" in f else ""
                print(f"  {what} at {f['lat']:.6f}, {f['lon']:.6f} {f['time_utc']}{src}")
    print(format_summary(res), file=sys.stderr if args.json else sys.stdout)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(res.report(), indent=1))
        print(f"report written to {args.report}", file=sys.stderr)
    if args.plot:
        plot_result(res, args.plot)
        print(f"map written to {args.plot}", file=sys.stderr)
    return 0
