"""`earwitness locate PATH`: locate shots in a recording set, offline.

The same code as the live system: each node's WAV goes through the node's
:class:`~node.detector.Detector` and :func:`~node.pipeline.onset_to_event` (with a
fixed timebase from the recording's GPS start stamp), and the resulting events go
through the server's :class:`~server.engine.Engine` (association, solver,
incidents). Arrival picks given in the set (another system's detector) skip the
detector and enter the engine as events directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from common.config import ConfigError, DetectorConfig, ServerConfig, load_node_config, load_server_config
from common.protocol import Event, Heartbeat
from common.recording_set import SET_FILENAME, RecordingSet, RecordingSetError, SetNode, load_set
from common.timefmt import ns_to_iso
from node.detector import Detector
from node.pipeline import onset_to_event
from node.timebase import FixedTimebase
from node.wav_source import WavError, read_wav
from server.association import SCALE_MIN_DOF, SCALE_MIN_SHOTS
from server.engine import CandidateReport, Engine, ShotReport
from server.node_timing import NodeOffset
from server.shotspotter_wavs import set_from_wavs

Mode = Literal["auto", "picks", "audio"]
#: Timing uncertainty of a recording's GPS start stamp (1 σ, ns).
WAV_TIMING_SIGMA_NS = 50_000.0
#: Default 1-σ uncertainty of externally supplied picks (s): ~1 ms, as for picks
#: exported at 1 ms resolution from another system's detector.
PICK_SIGMA_S = 0.001
CHUNK_S = 10.0
#: Picks at one node closer together than this (s) are the same pulse.
SAME_PICK_S = 0.0005


def node_events_from_wav(node: SetNode, detector_cfg: DetectorConfig) -> list[Event]:
    """Run the node detector over one WAV and return its events (seq from 0)."""
    samples, fs = read_wav(node.wav)
    x = samples[:, 0]
    tb = FixedTimebase(node.start_utc_ns, fs, sigma_ns=WAV_TIMING_SIGMA_NS, mode="fixed")
    det = Detector(detector_cfg, fs)
    onsets = []
    step = int(CHUNK_S * fs)
    for i in range(0, x.size, step):
        onsets += det.process(x[i:i + step])
    onsets += det.flush()
    pos = _position(node)
    return [onset_to_event(o, node_id=node.id, seq=k, timebase=tb, sample_rate_hz=fs, position=pos)
            for k, o in enumerate(onsets)]


def _position(node: SetNode):
    from common.config import Position

    return Position(node.lat, node.lon, node.alt)


def pick_events(rs: RecordingSet, pick_sigma_s: float = PICK_SIGMA_S) -> list[Event]:
    """The set's arrival picks as events (no snippet: nothing to cross-correlate).

    Picks at the same node closer together than :data:`SAME_PICK_S` are one
    pulse reported twice (exported data does that): only the first is kept."""
    out = []
    last: dict[str, int] = {}
    for a in sorted(rs.arrivals, key=lambda a: (a.t_utc_ns, a.node)):
        if a.node in last and a.t_utc_ns - last[a.node] < SAME_PICK_S * 1e9:
            continue
        last[a.node] = a.t_utc_ns
        k = len(out)
        n = rs.node(a.node)
        out.append(Event(node_id=n.id, seq=k, t_utc_ns=a.t_utc_ns, sigma_ns=pick_sigma_s * 1e9,
                         sample_rate_hz=1000.0, peak_dbfs=0.0, snr_db=float(a.snr_db or 0.0),
                         snippet_t0_ns=a.t_utc_ns, snippet=np.zeros(0, dtype=np.int16),
                         lat=n.lat, lon=n.lon, alt=n.alt))
    return out


def choose_mode(rs: RecordingSet, mode: Mode) -> Literal["picks", "audio"]:
    has_audio = any(n.wav is not None for n in rs.nodes)
    if mode == "auto":
        return "audio" if has_audio else "picks"
    if mode == "audio" and not has_audio:
        raise RecordingSetError(f"{rs.path}: no node has a wav, so audio mode has nothing to analyse; "
                                "use --mode picks")
    if mode == "picks" and not rs.arrivals:
        raise RecordingSetError(f"{rs.path}: the set has no arrivals, so picks mode has nothing to locate; "
                                "use --mode audio")
    return mode


def server_config_for(rs: RecordingSet, base: ServerConfig | None = None) -> ServerConfig:
    """The server config a replay uses: the set's temperature; no clock check."""
    base = base or replay_config()
    return replace(base, temperature_c=rs.temperature_c if rs.temperature_c is not None else base.temperature_c,
                   max_clock_skew_s=0.0)


@dataclass(frozen=True)
class LocateResult:
    """What a replay found: the located rounds (time order) and what the
    association learnt about the network's timing."""

    reports: tuple[ShotReport, ...]
    #: The model timing error (s, 1 σ) the association assumed (SolverConfig.model_sigma_s).
    model_sigma_s: float
    #: The model timing error (s) the shots with spare arrivals showed
    #: (Associator.learnt_model_sigma_s); None when too few shots could tell.
    learnt_model_sigma_s: float | None
    #: How many shots that was learnt from.
    learnt_from: int
    #: What the association was given, in time order: the detector's onsets in
    #: audio mode, the set's picks in picks mode.
    events: tuple[Event, ...] = ()
    #: Unconfirmed candidates for review (time order): line-ups among the
    #: arrivals no shot took that would be shots but for the chance threshold.
    candidates: tuple[CandidateReport, ...] = ()
    #: Nodes that heard the shots steadily early or late (server/node_timing.py):
    #: a clock or a surveyed position to check. The largest offset first.
    nodes_off: tuple[NodeOffset, ...] = ()
    #: The fewest arrivals a shot needed to teach the timing error
    #: (Associator.teaching_arrivals), and how many of the set's nodes gave the
    #: association anything (WAVs in audio mode, picks in picks mode): when that
    #: is fewer, no shot of the set can teach it.
    teaching_arrivals: int = 0
    nodes_analysed: int = 0


def locate_set(rs: RecordingSet, mode: Mode = "auto", *, cfg: ServerConfig | None = None,
               detector_cfg: DetectorConfig | None = None, workers: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[ShotReport]:
    """Locate every shot in a recording set; returns the located rounds in time order."""
    return list(locate(rs, mode, cfg=cfg, detector_cfg=detector_cfg, workers=workers, progress=progress).reports)


def locate(rs: RecordingSet, mode: Mode = "auto", *, cfg: ServerConfig | None = None,
           detector_cfg: DetectorConfig | None = None, workers: int | None = None,
           progress: Callable[[int, int], None] | None = None,
           live_step_s: float | None = None) -> LocateResult:
    """:func:`locate_set`, with what the association learnt of the network's timing.

    ``live_step_s``: decide as a live server would, the nodes' heartbeats
    moving the watermark every ``live_step_s`` seconds of audio (the events up
    to it delivered first), instead of once every event is in (None). A live
    server decides almost exactly what the default does (docs/architecture.md,
    "Watermark"); this shows what it would have decided."""
    if live_step_s is not None and not live_step_s > 0:
        raise RecordingSetError(f"live step {live_step_s} s: must be > 0")
    m = choose_mode(rs, mode)
    scfg = server_config_for(rs, cfg)
    engine = Engine(scfg, store=None)
    for n in rs.nodes:
        engine.set_node_position_sigma(n.id, n.position_sigma_m)
    if m == "picks":
        events = pick_events(rs)
    else:
        nodes = [n for n in rs.nodes if n.wav is not None]
        # the given settings, else those each node recorded with, else the defaults
        dcfgs = [detector_cfg or n.detector or DetectorConfig() for n in nodes]
        events = []
        workers = workers if workers is not None else min(len(nodes), os.cpu_count() or 1)
        if workers > 1 and len(nodes) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for k, evs in enumerate(pool.map(node_events_from_wav, nodes, dcfgs)):
                    events += evs
                    if progress:
                        progress(k + 1, len(nodes))
        else:
            for k, (n, dcfg) in enumerate(zip(nodes, dcfgs)):
                events += node_events_from_wav(n, dcfg)
                if progress:
                    progress(k + 1, len(nodes))
    events.sort(key=lambda e: e.t_utc_ns)
    if live_step_s is None:
        engine.ingest_events(events, received_ns=0)
        found = engine.finish()
    else:
        reporting = [n for n in rs.nodes if n.wav is not None] if m == "audio" else list(rs.nodes)
        found = replay_live(engine, events, reporting, live_step_s)
    reports = tuple(sorted(found, key=lambda r: r.t_utc_ns))
    return LocateResult(reports, scfg.solver.model_sigma_s, engine.assoc.learnt_model_sigma_s,
                        engine.assoc.learnt_from, tuple(events),
                        tuple(replace(c, candidate_id=k) for k, c in enumerate(engine.take_candidates(), 1)),
                        tuple(engine.timing.off()), engine.assoc.teaching_arrivals, len({e.node_id for e in events}))


#: The model timing error (ms, 1 σ) ShotSpotter's Pittsburgh street sensors
#: showed in picks mode (docs/accuracy.md): what ``locate`` assumes for a folder
#: of ShotSpotter sensor WAVs unless told otherwise.
STREET_MODEL_SIGMA_MS = 7.0


def replay_live(engine: Engine, events: list[Event], nodes: list[SetNode], step_s: float) -> list[ShotReport]:
    """Feed ``events`` (time order) to ``engine`` as a live server gets them:
    every ``step_s`` seconds of audio, the events up to then, a heartbeat from
    each of ``nodes`` saying it has analysed its audio that far, and a
    decision; until the watermark is past everything any decision looks at.
    Returns the shots in the order decided."""
    out: list[ShotReport] = []
    if not events:
        return engine.finish()
    now = events[-1].t_utc_ns + 10**12            # the wall clock: far later, no node goes stale
    step = int(step_s * 1e9)
    t, i, k = events[0].t_utc_ns, 0, 0
    end = events[-1].t_utc_ns + 2 * engine.assoc.wait_ns() + engine.assoc.max_travel_ns()
    while t < end:
        t += step
        j = i
        while j < len(events) and events[j].t_utc_ns <= t:
            j += 1
        engine.ingest_events(events[i:j], received_ns=now)
        i = j
        for n in nodes:
            engine.ingest_heartbeat(Heartbeat(n.id, k, now, t, n.lat, n.lon, n.alt, "replay"), received_ns=now)
        k += 1
        out += engine.advance(now_ns=now)
    return out + engine.finish()                  # nothing is left by then; kept as a guarantee


def timing_note(result: LocateResult) -> str | None:
    """A line for the operator (None when there is nothing to tell): the shots
    showed far larger timing errors than the association assumed — the
    network's node positions or paths are worse than configured, and shots
    heard by few nodes are missed for it — or too few shots had spare arrivals
    to check the assumption at all (a small network, or one whose shots the
    assumption itself kept from forming)."""
    got = result.learnt_model_sigma_s
    if got is None:
        street = (f" (ShotSpotter's Pittsburgh street network measured {STREET_MODEL_SIGMA_MS} ms)"
                  if result.model_sigma_s < STREET_MODEL_SIGMA_MS * 1e-3 else "")
        need = result.teaching_arrivals
        if 0 < result.nodes_analysed < need:
            why = (f"that takes shots heard by at least {need} nodes ({SCALE_MIN_DOF} more than a shot's "
                   f"{need - SCALE_MIN_DOF} unknowns), and only {result.nodes_analysed} of this set's nodes "
                   f"gave the association anything (onsets in their audio, or picks)")
        else:
            heard = f"heard by at least {need} nodes" if need else "with spare arrivals"
            why = (f"{result.learnt_from} located shot(s) were {heard} to measure it, "
                   f"{SCALE_MIN_SHOTS} are needed")
        return (f"note: the assumed model timing error ({result.model_sigma_s * 1e3:.1f} ms, 1 σ) could not be "
                f"checked: {why}. If shots you expected are missing, the node positions or sound "
                f"paths may be less exact than that: rerun with a larger --model-sigma-ms{street}.")
    if got <= 2.0 * result.model_sigma_s:
        return None
    return (f"note: the {result.learnt_from} shots with spare arrivals fit as if the network added "
            f"{got * 1e3:.1f} ms (1 σ) to every arrival, where {result.model_sigma_s * 1e3:.1f} ms was assumed; "
            f"shots heard by few nodes may have been missed. If the node positions and paths are that "
            f"uncertain, rerun with --model-sigma-ms {got * 1e3:.1f} (or set [solver] model_sigma_s).")


# ------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="earwitness locate",
        description="Locate shots in a recording set (a directory with set.json, or the file itself): "
                    "WAVs go through the node detector, picks straight to the server's association and solver.")
    p.add_argument("path", help="recording set directory or set.json (see docs/recording-set.md), or a folder "
                                "of ShotSpotter sensor WAVs")
    p.add_argument("--mode", choices=["auto", "picks", "audio"], default="auto",
                   help="audio: detect onsets in the WAVs; picks: use the set's arrivals (default: audio if any WAV)")
    p.add_argument("--json", action="store_true", help="one JSON line per located shot")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw a map of nodes and located shots (with --review, the candidates too)")
    p.add_argument("--server-config", metavar="FILE.toml",
                   help="a server's config: replay with its [association], [solver] and [incidents] settings "
                        "and its temperature (the set's, then --temperature, win); its database, sockets and "
                        "keys are not used (default: the built-in defaults)")
    p.add_argument("--node-config", metavar="FILE.toml",
                   help="a node's config: detect onsets in every WAV with its [detector] settings (default: "
                        "each node's settings as set.json records them, else the built-in ones)")
    p.add_argument("--temperature", type=float, help="air temperature in °C (overrides the set's)")
    p.add_argument("--model-sigma-ms", type=float, metavar="MS",
                   help="timing error the network's geometry adds to every arrival (node positions, paths "
                        "around buildings), 1 σ in ms (default 0.5; urban networks surveyed to metres: 3-5)")
    p.add_argument("--max-chance", type=float, metavar="P",
                   help="largest accepted expected number of chance alignments per searched arrival "
                        "(default 1e-4; small sparse recordings may need 0.01 to accept 4-node shots)")
    p.add_argument("--live-step", type=float, metavar="S",
                   help="decide as a live server would, the nodes' heartbeats moving the watermark every S "
                        "seconds of audio (a live node's: 0.5), instead of once everything is in")
    p.add_argument("--review", action="store_true",
                   help="also list the unconfirmed candidates: line-ups no shot took that fit one source but "
                        "whose timing could be a coincidence (up to [association] review_max_chance, 0.1), "
                        "for a person to check; with --json they are lines with a \"candidate\" key")
    return p


def replay_config(model_sigma_ms: float | None = None, max_chance: float | None = None,
                  base: ServerConfig | None = None) -> ServerConfig:
    """The server config a replay starts from: ``base`` (a server's config;
    None: the defaults) in memory, without keys or a list of expected nodes
    (the set says which nodes there are), with the given model timing error
    (ms) and chance-alignment threshold if any. Raises ConfigError naming the
    option (``--model-sigma-ms``, ``--max-chance``) for a value out of range."""
    if model_sigma_ms is not None and not (math.isfinite(model_sigma_ms) and model_sigma_ms >= 0):
        raise ConfigError(f"--model-sigma-ms {model_sigma_ms}: must be a finite number of ms, >= 0")
    if max_chance is not None and not (math.isfinite(max_chance) and max_chance > 0):
        raise ConfigError(f"--max-chance {max_chance}: must be a finite number > 0 (to turn the threshold "
                          "off, give a large one, e.g. 1e9)")
    cfg = replace(base or ServerConfig(), database=":memory:", allow_plaintext=True, keys_dir=None,
                  expected_nodes=())
    if model_sigma_ms is not None:
        cfg = replace(cfg, solver=replace(cfg.solver, model_sigma_s=model_sigma_ms * 1e-3))
    if max_chance is not None:
        cfg = replace(cfg, association=replace(cfg.association, max_chance=max_chance))
    return cfg


def cli_server_config(args: argparse.Namespace) -> ServerConfig:
    """The server config from the command line's options (defaults otherwise)."""
    base = load_server_config(args.server_config) if args.server_config else None
    return replay_config(args.model_sigma_ms, args.max_chance, base)


def cli_detector_config(args: argparse.Namespace) -> DetectorConfig | None:
    """The detector settings from ``--node-config`` (None: the defaults)."""
    return load_node_config(args.node_config).detector if args.node_config else None


def _progress_bar(done: int, total: int) -> None:
    width = 30
    fill = int(width * done / max(total, 1))
    print(f"\r  detecting [{'#' * fill}{'.' * (width - fill)}] {done}/{total} nodes", end="", file=sys.stderr,
          flush=True)
    if done == total:
        print(file=sys.stderr)


def sensor_wav_folder(path: str | os.PathLike) -> bool:
    """``path`` is a folder without ``set.json``: ``locate`` reads the ShotSpotter
    sensor WAVs in it (server/shotspotter_wavs.py)."""
    p = Path(path)
    return p.is_dir() and not (p / SET_FILENAME).exists()


def load_input(path: str | os.PathLike) -> RecordingSet:
    """What ``earwitness locate`` reads: a recording set (a directory holding
    ``set.json``, or that file), or a folder of ShotSpotter sensor WAVs that
    carry their own metadata."""
    if Path(path).is_file() and Path(path).suffix.lower() == ".wav":
        raise RecordingSetError(f"{path}: a WAV file, not a recording set; point at the folder that holds it "
                                f"(ShotSpotter sensor WAVs), or at a {SET_FILENAME} that names it "
                                "(docs/recording-set.md)")
    return set_from_wavs(path) if sensor_wav_folder(path) else load_set(path)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # what the engine would log live (a node heard late, …) is told below as notes
    logging.getLogger("earwitness.server").addHandler(logging.NullHandler())
    try:
        rs = load_input(args.path)
        if sensor_wav_folder(args.path):
            assumed = ""
            if args.model_sigma_ms is None and not args.server_config:
                # street sensors: their network's timing is what ShotSpotter's own showed
                args.model_sigma_ms = STREET_MODEL_SIGMA_MS
                assumed = (f"; assuming the {STREET_MODEL_SIGMA_MS} ms model timing error ShotSpotter's "
                           "Pittsburgh street network showed (--model-sigma-ms to change)")
            print(f"no {SET_FILENAME} in {args.path}: read {len(rs.nodes)} ShotSpotter sensor WAV(s) with "
                  f"their own metadata (position, start time{', temperature' if rs.temperature_c is not None else ''})"
                  f"{assumed}", file=sys.stderr)
        if args.temperature is not None:
            rs = replace(rs, temperature_c=args.temperature)
        result = locate(rs, args.mode, cfg=cli_server_config(args), detector_cfg=cli_detector_config(args),
                        progress=_progress_bar if sys.stderr.isatty() else None, live_step_s=args.live_step)
        reports = list(result.reports)
    except (RecordingSetError, WavError, FileNotFoundError, ConfigError) as exc:
        print(f"earwitness locate: {exc}", file=sys.stderr)
        return 2
    cands = list(result.candidates) if args.review else []
    if args.json:
        for r in reports:
            print(json.dumps(r.to_json()))
        for c in cands:
            print(json.dumps(c.to_json()))
    else:
        print(f"{'incident':>8} {'round':>5}  {'time (UTC)':<26} {'lat':>11} {'lon':>12} {'±95% m':>7} "
              f"{'rms ms':>6}  nodes")
        for r in reports:
            print(f"{r.incident:>8} {r.round:>5}  {ns_to_iso(r.t_utc_ns):<26} {r.lat:>11.6f} {r.lon:>12.6f} "
                  f"{r.error_m:>7.1f} {r.residual_ms:>6.2f}  {len(r.nodes)}: {', '.join(r.nodes)}")
        if cands:
            print("\nunconfirmed candidates for review (timing alone could be a coincidence: "
                  "expected chance alignments as good)")
            print(f"{'cand':>8} {'chance':>6}  {'time (UTC)':<26} {'lat':>11} {'lon':>12} {'±95% m':>7} "
                  f"{'rms ms':>6}  nodes")
            for c in cands:
                print(f"{c.candidate_id:>8} {c.chance:>6.2g}  {ns_to_iso(c.t_utc_ns):<26} {c.lat:>11.6f} "
                      f"{c.lon:>12.6f} {c.error_m:>7.1f} {c.residual_ms:>6.2f}  {len(c.nodes)}: {', '.join(c.nodes)}")
        print(f"{len(reports)} shot{'' if len(reports) == 1 else 's'} located", file=sys.stderr)
    if args.review:
        print(f"{len(cands)} unconfirmed candidate(s) for review", file=sys.stderr)
    elif result.candidates:
        print(f"{len(result.candidates)} unconfirmed candidate(s) for review: see them with --review",
              file=sys.stderr)
    note = timing_note(result)
    if note:
        print(note, file=sys.stderr)
    for off in result.nodes_off:
        print(f"note: {off.text()}", file=sys.stderr)
    if args.plot:
        from common.geodesy import LocalFrame
        from server.plot import MapShot, draw_map

        lats = np.array([n.lat for n in rs.nodes])
        lons = np.array([n.lon for n in rs.nodes])
        frame = LocalFrame(float(lats.mean()), float(lons.mean()), 0.0)
        nodes_xy = frame.to_enu(lats, lons, np.zeros_like(lats))[:, :2]
        shots = []
        for r in reports:
            xy = frame.to_enu(r.lat, r.lon, 0.0)[:2]
            shots.append(MapShot((float(xy[0]), float(xy[1])), r.error_m, r.incident, f"{r.incident}.{r.round}"))
        cands = []
        for c in (result.candidates if args.review else ()):
            xy = frame.to_enu(c.lat, c.lon, 0.0)[:2]
            cands.append(MapShot((float(xy[0]), float(xy[1])), c.error_m, 0, f"c{c.candidate_id}"))
        truth_xy = None
        if rs.truth:
            truth_xy = np.array([frame.to_enu(t.lat, t.lon, 0.0)[:2] for t in rs.truth])
        # the nodes that gave the association something: WAVs in audio mode, picks in picks mode
        picked = {a.node for a in rs.arrivals}
        audio = choose_mode(rs, args.mode) == "audio"
        analysed = [n.wav is not None if audio else n.id in picked for n in rs.nodes]
        draw_map(args.plot, nodes_xy, [n.id for n in rs.nodes], shots, truth_xy=truth_xy, analysed=analysed,
                 title=f"earwitness locate: {len(reports)} shot{'' if len(reports) == 1 else 's'}"
                       + (f", {len(cands)} candidates for review" if cands else ""), candidates=cands)
        print(f"map written to {args.plot}", file=sys.stderr)
    return 0
