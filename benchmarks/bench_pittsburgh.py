"""Benchmark: locate ShotSpotter's Pittsburgh live-fire shots and score them.

Run from the project root:

    python benchmarks/bench_pittsburgh.py [--data DIR] [--modes picks,audio,subsets,corrected,labels]
        [--solver project,baseline] [--n-subsets 20] [--seed 0] [--fp FP1,FP2]
        [--jobs N] [--model-sigma-ms MS] [--max-chance P] [--live-step S] [--markdown FILE] [--readme FILE]
        [--facts]

* picks / audio: for every test, the recording set is built in memory
  (server.import_shotspotter.load_test), its truth block and the other mode's
  data (WAVs in picks mode, arrivals in audio mode) are removed, and
  ``server.locate.locate_set(recording_set, mode=...)`` is called; the located
  rounds are scored (benchmarks/scoring.py: 0.1 s window, 100 m false radius);
  "in radius" is the share of located rounds whose error is inside the 95 %
  radius they were reported with, "⊕ truth" the same with the survey's own
  uncertainty (``SURVEY_R95_M``) combined in quadrature, "radius m" the
  median reported radius.
  Picks mode also prints the model timing error its association learnt
  (``LocateResult.learnt_model_sigma_s``, no labels); with both modes and no
  --model-sigma-ms, audio mode is then run a second time with the network's
  value (median over the tests) when it is above the default, as an operator
  told by ``earwitness locate`` would configure it.
* corrected: audio mode with each WAV sensor's clock shifted by that sensor's
  timing bias in its firing position (``station_corrections``: the median,
  over the labelled rounds, of its labelled arrival minus the time the sound
  takes from the surveyed position — scoring facts). It asks what learnt
  per-sensor ("station") corrections could give audio mode at most; it is run at
  the model σ picks mode learnt (or --model-sigma-ms). Not a README row.
* labels: audio mode's ceiling with a perfect detector (``labelled_test``):
  the WAV sensors only, with ShotSpotter's labelled pulses at them as the only
  arrivals, located in picks mode — what the association and the chance
  threshold allow when every labelled arrival is picked and nothing else is.
  Built from the labels; run at the model σ picks mode learnt (or
  --model-sigma-ms). Not a README row.
* subsets: ShotSpotter's "random six-sensor sub-arrays" test on the labelled
  arrivals of nlos-tuples.json (one per sensor, the earliest), with a solver of the
  form ``solve(receivers_enu (n, 3), t_arrival_s (n,), c) -> (x, y)``: the project's
  (``project_solve`` below, the one place to adapt to server.solver) and the
  textbook least-squares baseline (``baseline_lsq_solve``). Also run with all
  labelled arrivals ("all" rows).
* --facts prints what the data holds (tests, rounds, label counts, emission-time
  spread, missing pulse ids).
* --jobs N locates N tests at a time (default: one per CPU); --readme FILE
  writes the README's short results table (also printed at the end);
  --model-sigma-ms / --max-chance change the server's model timing error and
  chance-alignment threshold (the defaults otherwise).

Reference (ShotSpotter TN 098 / arXiv:2108.07377): mean 2-D error ≈ 4 m;
96.3 % of six-sensor sub-array solutions within 15 m.
Exit status: 0 when every requested part ran, 2 when one could not (e.g.
server.locate not importable yet) or the data folder is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scoring import (  # noqa: E402
    FALSE_RADIUS_M,
    Summary,
    SubsetShot,
    TestScore,
    format_subset_scores,
    format_summaries,
    score_subsets,
    score_test,
    summarize,
    summarize_by_group,
)
from server.import_shotspotter import ShotSpotterTest, find_tests, load_test  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "pittsburgh"

#: The surveyed firing positions' own 95 % horizontal radius (m). The data's
#: README: "GPS-enabled smartphone ... accuracy approximately 2.5 meters", taken as
#: a 68 % radius (phones report that) of a circular Gaussian, scaled to 95 %.
SURVEY_R95_M = 2.5 * math.sqrt(math.log(1 / 0.05) / math.log(1 / 0.32))

#: Timing sigma given to the project solver: the picks have 1 ms resolution.
PICK_SIGMA_S = 0.002


# ====================================================================================
# THE ONE PLACE TO ADAPT to the project's solver (server.solver) for the subset test.
# Contract: receivers_enu (n, 3) m, centred on the subset; t_arrival_s (n,) s relative
# to the earliest arrival; c m/s. Return (x, y) in the same frame, or (nan, nan) when
# the solver gives no solution.
# ====================================================================================
def project_solve(receivers_enu: np.ndarray, t_arrival_s: np.ndarray, c: float) -> tuple[float, float]:
    from server import solver  # imported here so a missing/broken solver only skips this solver

    sol = solver.solve(receivers_enu, t_arrival_s, PICK_SIGMA_S, c,
                       z_source=float(np.mean(receivers_enu[:, 2])))
    if sol is None:
        return (float("nan"), float("nan"))
    return (float(sol.pos[0]), float(sol.pos[1]))
# ====================================================================================


def baseline_lsq_solve(receivers_enu: np.ndarray, t_arrival_s: np.ndarray, c: float) -> tuple[float, float]:
    """Textbook TDOA least squares (scipy ``least_squares``, plain squared loss).

    Residuals: (t_i − t_ref) − (|p − r_i| − |p − r_ref|)/c with the earliest arrival as
    reference; unknowns x, y with the source height fixed at the receivers' mean
    height (a 2-D solve, as in ShotSpotter's best case). Two starts (next to the
    earliest receiver, and the centroid); the lower cost wins.
    """
    from scipy.optimize import least_squares

    r = np.asarray(receivers_enu, dtype=float)
    t = np.asarray(t_arrival_s, dtype=float)
    z = float(np.mean(r[:, 2]))
    ref = int(np.argmin(t))

    def residuals(p: np.ndarray) -> np.ndarray:
        d = np.sqrt((r[:, 0] - p[0]) ** 2 + (r[:, 1] - p[1]) ** 2 + (r[:, 2] - z) ** 2)
        return (t - t[ref]) - (d - d[ref]) / c

    best = None
    for x0 in (r[ref, :2] + 1.0, r[:, :2].mean(axis=0) + 1.0):
        fit = least_squares(residuals, x0)
        if best is None or fit.cost < best.cost:
            best = fit
    return (float(best.x[0]), float(best.x[1]))


SOLVERS = {"project": project_solve, "baseline": baseline_lsq_solve}


# ------------------------------------------------------------------ helpers
def load_all(data: Path, fps: set[str] | None) -> list[ShotSpotterTest]:
    tests = []
    for d in find_tests(data):
        if fps and d.parent.name not in fps:
            continue
        tests.append(load_test(d, mode="both"))
    return tests


def subset_shots(tests: list[ShotSpotterTest]) -> list[SubsetShot]:
    return [SubsetShot(group=t.firing_position, receivers_enu=s.receivers_enu, t_arrival_ns=s.t_arrival_ns,
                       truth_enu=t.survey_enu, c_mps=_solver_c(t))
            for t in tests for s in t.shots if len(s.t_arrival_ns)]


def _solver_c(t: ShotSpotterTest) -> float:
    """The speed of sound a solver is told: from the set's temperature (default when unknown)."""
    from common.acoustics import speed_of_sound

    return speed_of_sound(t.recording_set.temperature_c)


def station_corrections(tests: list[ShotSpotterTest]) -> dict[tuple[str, str], float]:
    """Per (firing position, sensor id): the sensor's timing bias (s) there — the
    median over that firing position's labelled rounds of (labelled arrival −
    emission time − distance from the surveyed position / c), at the scoring
    speed of sound. From the labels and the survey: for the benchmark only."""
    res: dict[tuple[str, str], list[float]] = {}
    for t in tests:
        for s in t.shots:
            if s.t_emission_ns is None:
                continue
            d = np.linalg.norm(s.receivers_enu - t.survey_enu, axis=1)
            for nid, ta, dk in zip(s.node_ids, s.t_arrival_ns, d):
                res.setdefault((t.firing_position, nid), []).append((int(ta) - s.t_emission_ns) * 1e-9
                                                                    - float(dk) / t.c_mps)
    return {k: float(np.median(v)) for k, v in res.items()}


def corrected_test(t: ShotSpotterTest, corr: dict[tuple[str, str], float]) -> ShotSpotterTest:
    """``t`` with each WAV's start time moved by its sensor's bias (so its onsets
    come out bias-free); sensors without one are unchanged."""
    def moved(n):
        bias_s = corr.get((t.firing_position, n.id)) if n.wav is not None else None
        return n if bias_s is None else dataclasses.replace(n, start_utc_ns=n.start_utc_ns - int(round(bias_s * 1e9)))

    nodes = tuple(moved(n) for n in t.recording_set.nodes)
    return dataclasses.replace(t, recording_set=dataclasses.replace(t.recording_set, nodes=nodes))


def labelled_test(t: ShotSpotterTest) -> ShotSpotterTest:
    """``t`` as audio mode would see it with a perfect detector: its WAV sensors
    only, as picks-only nodes, and as arrivals ShotSpotter's labelled pulses at
    those sensors and nothing else (no echoes, no unrelated sounds). Built from
    the labels (scoring facts): a ceiling, for the benchmark only."""
    rs = t.recording_set
    wav = {n.id for n in rs.nodes if n.wav is not None}
    labelled = {i for s in rs.truth for i in s.arrival_ids}
    nodes = tuple(dataclasses.replace(n, wav=None, start_utc_ns=None) for n in rs.nodes if n.id in wav)
    arrivals = tuple(a for a in rs.arrivals if a.node in wav and a.id in labelled)
    kept = {a.id for a in arrivals}
    truth = tuple(dataclasses.replace(s, arrival_ids=tuple(i for i in s.arrival_ids if i in kept))
                  for s in rs.truth)
    return dataclasses.replace(t, recording_set=dataclasses.replace(rs, nodes=nodes, arrivals=arrivals,
                                                                    truth=truth))


#: An onset this close (s) to a labelled arrival at its sensor picked that arrival.
PICKED_S = 0.005


def picked_counts(t: ShotSpotterTest, events) -> list[int]:
    """Per labelled shot of ``t``: at how many of the test's WAV sensors one of
    ``events`` (detector onsets) is within :data:`PICKED_S` of the labelled arrival."""
    wav = {n.id for n in t.recording_set.nodes if n.wav is not None}
    times: dict[str, np.ndarray] = {}
    for e in events:
        times.setdefault(e.node_id, []).append(e.t_utc_ns)
    times = {k: np.asarray(v, dtype=np.int64) for k, v in times.items()}
    out = []
    for s in t.shots:
        out.append(sum(1 for n, ta in zip(s.node_ids, s.t_arrival_ns)
                       if n in wav and n in times and np.min(np.abs(times[n] - int(ta))) <= PICKED_S * 1e9))
    return out


def _locate_one(args) -> tuple[TestScore, float | None, list[int] | None, TestScore]:
    """Locate one test blind (no truth, only the mode's data) and score it; also
    the model timing error (s) the association learnt from its shots (or None),
    when asked (audio mode) :func:`picked_counts` of the detector's onsets, and
    the score of the located shots together with the candidates for review (what
    a person confirming every candidate would report)."""
    from server.locate import locate

    t, mode, workers, cfg, count_picks, live_step_s, detector_cfg = args
    truth = t.recording_set.truth
    blind = dataclasses.replace(t.recording_set, truth=())      # the locator never sees the truth
    if mode == "picks":
        blind = dataclasses.replace(blind, nodes=tuple(dataclasses.replace(n, wav=None, start_utc_ns=None)
                                                       for n in blind.nodes))
    elif mode == "audio":
        blind = dataclasses.replace(blind, nodes=tuple(n for n in blind.nodes if n.wav is not None),
                                    arrivals=())
    result = locate(blind, mode=mode, workers=workers, cfg=cfg, detector_cfg=detector_cfg, live_step_s=live_step_s)
    score = score_test(truth, list(result.reports), name=f"{t.firing_position}/{t.name}", group=t.firing_position)
    picked = picked_counts(t, result.events) if count_picks else None
    reviewed = score_test(truth, list(result.reports) + list(result.candidates), name=score.name, group=score.group)
    return score, result.learnt_model_sigma_s, picked, reviewed


def run_locator(tests: list[ShotSpotterTest], mode: str, jobs: int = 1, cfg=None,
                count_picks: bool = False, live_step_s: float | None = None, detector_cfg=None
                ) -> list[tuple[TestScore, float | None, list[int] | None, TestScore]]:
    """Score every test in ``mode``, with the model timing error (s or None) its
    association learnt and, with ``count_picks`` (audio mode, the labels' own
    times), :func:`picked_counts` (else None); ``jobs`` > 1 runs
    tests in parallel processes (each test's own detection then runs in one
    process). ``cfg``: ServerConfig (None: the defaults); ``live_step_s``:
    decide as a live server would (``server.locate.locate``'s), None: at once;
    ``detector_cfg``: the node detector's settings in audio mode (None: the defaults)."""
    if jobs <= 1:
        return [_locate_one((t, mode, None, cfg, count_picks, live_step_s, detector_cfg)) for t in tests]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_locate_one, [(t, mode, 1, cfg, count_picks, live_step_s, detector_cfg)
                                           for t in tests],
                             chunksize=1))


def review_line(shots: Summary, with_candidates: Summary) -> str:
    """What the candidates for review add to a run's located shots (``shots``:
    the run's overall summary; ``with_candidates``: the same with every candidate
    counted as a shot): how many candidates, how many of them rounds not located
    otherwise, how many false, and the recall if a person confirms the true ones."""
    def total(x: Summary) -> int:
        return x.located + x.false_shots + x.extra_shots + x.unverified

    n = total(with_candidates) - total(shots)
    new = with_candidates.located - shots.located
    false = with_candidates.false_shots - shots.false_shots
    return (f"candidates for review: {n} — {new} rounds not located otherwise, {false} false "
            f"(> {FALSE_RADIUS_M:g} m from the survey), {n - new - false} extra; recall with the true ones "
            f"confirmed {100 * with_candidates.recall:.1f} % ({with_candidates.located}/"
            f"{with_candidates.rounds_fired})")


def learnt_sigma_summary(tests: list[ShotSpotterTest], learnt: list[float | None]) -> tuple[str, float | None]:
    """(Per firing position, the median model timing error the picks-mode
    association learnt — tests with ≥ 3 shots with spare arrivals; the network's
    figure: the median over all such tests, s, or None.)"""
    by: dict[str, list[float]] = {}
    for t, x in zip(tests, learnt):
        if x is not None:
            by.setdefault(t.firing_position, []).append(x)
    allv = [x for v in by.values() for x in v]
    lines = [f"  {fp}: {1e3 * float(np.median(v)):.1f} ms (from {len(v)} tests)" for fp, v in sorted(by.items())]
    if not allv:
        return "  no test had enough shots with spare arrivals", None
    net = float(np.median(allv))
    lines.append(f"  network: {1e3 * net:.1f} ms (median of {len(allv)} tests)")
    return "\n".join(lines), net


def readme_table(rows: list[tuple[str, str, float, float, float, int, int, float, float, float]],
                 rounds: int) -> str:
    """The short results table for the README: (what, mode, recall, median m,
    within 15 m, false, extra, in radius, in radius ⊕ survey, median radius m)
    per row; NaN/negative values print as —."""
    head = (f"| Pittsburgh (ShotSpotter live-fire, {rounds} rounds) | recall | median error | within 15 m "
            "| false | extra | 95 % radius: median, error inside (⊕ survey) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for what, _, recall, med, w15, false, extra, inr, inr_t, rad in rows:
        fmt = (lambda v, f, unit: "—" if v != v or v < 0 else format(v, f) + unit)
        radius = "—" if inr != inr else f"{rad:.1f} m, {100 * inr:.0f} % ({100 * inr_t:.0f} %)"
        lines.append(f"| {what} | {fmt(100 * recall, '.1f', ' %')} | {fmt(med, '.1f', ' m')} | "
                     f"{fmt(100 * w15, '.1f', ' %')} | "
                     f"{false if false >= 0 else '—'} | {extra if extra >= 0 else '—'} | {radius} |")
    return "\n".join(lines)


def facts(tests: list[ShotSpotterTest]) -> str:
    """What the data holds, per firing position."""
    lines = []
    fps = sorted({t.firing_position for t in tests})
    head = f"{'FP':<4} {'tests':>5} {'rounds':>6} {'labelled':>8} {'pulses':>7} {'sensors/shot':>12} " \
           f"{'MAD med ms':>10} {'MAD max ms':>10}  c m/s (scoring)"
    lines.append(head)
    for fp in fps:
        ts = [t for t in tests if t.firing_position == fp]
        shots = [s for t in ts for s in t.shots]
        mads = [s.emission_mad_s * 1e3 for s in shots if s.emission_mad_s is not None]
        known = sorted({round(t.c_mps, 1) for t in ts if t.c_source == "temperature"})
        other = [t.c_mps for t in ts if t.c_source != "temperature"]
        cs = ", ".join(f"{c:.1f}" for c in known)
        if other:
            cs += f"{', ' if known else ''}{len(other)} tests {min(other):.1f}-{max(other):.1f}*"
        lines.append(f"{fp:<4} {len(ts):>5} {sum(t.num_rounds for t in ts):>6} {len(shots):>8} "
                     f"{sum(len(t.recording_set.arrivals) for t in ts):>7} "
                     f"{np.median([len(s.node_ids) for s in shots]):>12.0f} "
                     f"{np.median(mads):>10.1f} {max(mads):>10.1f}  {cs}")
    lines.append("(* = temperature unknown: c fitted to the labelled arrivals, for emission-time estimates only)")
    for t in tests:
        notes = []
        if len(t.shots) != t.num_rounds:
            notes.append(f"{len(t.shots)} labelled shots for {t.num_rounds} rounds "
                         f"(shot_index {[s.shot_index for s in t.shots]})")
        if t.missing_pulse_ids:
            notes.append(f"{len(t.missing_pulse_ids)} labelled pulse ids missing from allpulses: "
                         + ", ".join(t.missing_pulse_ids))
        if t.duplicate_pulse_records:
            notes.append(f"{t.duplicate_pulse_records} exact duplicate pulse record(s) dropped")
        later = [u for s in t.shots for u in s.later_pulse_ids]
        if later:
            notes.append(f"{len(later)} labelled pulse(s) from a sensor already labelled for the shot "
                         f"(kept the earliest): " + ", ".join(later))
        for note in notes:
            lines.append(f"{t.firing_position}/{t.name}: {note}")
    return "\n".join(lines)


def audio_ceiling(tests: list[ShotSpotterTest], picked: list[list[int]] | None = None) -> str:
    """What audio mode can reach at most, from the labels (scoring facts only).

    Per firing position: labelled rounds, and how many have their labelled pulse
    at ≥ 3 / ≥ 4 / ≥ 5 of the test's WAV sensors (2-D position + emission time
    are 3 unknowns: 3 arrivals fix a source with nothing to check it against;
    4 give one redundant arrival); with ``picked`` (per test, per labelled shot:
    :func:`picked_counts` of our detector's onsets), how many have an onset of
    ours within :data:`PICKED_S` of the label at ≥ 4 WAV sensors; then, for the
    rounds labelled at ≥ 5 WAV sensors, how well those labelled
    (ShotSpotter-picked) arrivals fit one source at all: rms and largest
    residual of the project solver's best fit (height with the server's prior,
    the scoring speed of sound), medians."""
    from common.config import SolverConfig
    from server.association import height_prior
    from server.solver import solve

    scfg = SolverConfig()
    med = (lambda v: f"{np.median(v):.1f}" if v else "—")

    head = (f"{'FP':<4} {'rounds':>6} {'≥3 WAV':>7} {'≥4 WAV':>7} {'≥5 WAV':>7} {'picked ≥4':>9}  "
            f"{'rms ms (≥5)':>11} {'max |res| ms':>12}")
    lines = [head]
    tot = np.zeros(5, dtype=int)
    all_rms: list[float] = []
    all_max: list[float] = []
    for fp in sorted({t.firing_position for t in tests}):
        counts = np.zeros(5, dtype=int)
        rms: list[float] = []
        worst: list[float] = []
        for i_t, t in enumerate(tests):
            if t.firing_position != fp:
                continue
            wav = {n.id for n in t.recording_set.nodes if n.wav is not None}
            for i_s, s in enumerate(t.shots):
                k = [i for i, n in enumerate(s.node_ids) if n in wav]
                counts += [1, len(k) >= 3, len(k) >= 4, len(k) >= 5, picked is not None and picked[i_t][i_s] >= 4]
                if len(k) < 5:
                    continue
                rec = s.receivers_enu[k] - s.receivers_enu[k].mean(axis=0)
                ts = (s.t_arrival_ns[k] - s.t_arrival_ns[k].min()) * 1e-9
                z = rec[:, 2]
                ground = float(np.median(z)) - scfg.node_height_m     # as the engine takes it
                prior = height_prior(z, ground + scfg.source_height_m, scfg.height_sigma_m)
                sol = solve(rec, ts, 0.001, t.c_mps, z_prior=prior, min_used=len(k), max_reject=0)
                if sol is not None:
                    rms.append(sol.rms_s * 1e3)
                    worst.append(float(np.max(np.abs(sol.residuals_s))) * 1e3)
        tot += counts
        all_rms += rms
        all_max += worst
        pk = str(counts[4]) if picked is not None else "—"
        lines.append(f"{fp:<4} {counts[0]:>6} {counts[1]:>7} {counts[2]:>7} {counts[3]:>7} {pk:>9}  {med(rms):>11} "
                     f"{med(worst):>12}")
    pk = str(tot[4]) if picked is not None else "—"
    lines.append(f"{'all':<4} {tot[0]:>6} {tot[1]:>7} {tot[2]:>7} {tot[3]:>7} {pk:>9}  {med(all_rms):>11} "
                 f"{med(all_max):>12}")
    if tot[0]:
        lines.append(f"labelled at ≥ 4 WAV sensors: {100 * tot[2] / tot[0]:.1f} % of labelled rounds "
                     f"(≥ 3: {100 * tot[1] / tot[0]:.1f} %)")
        if picked is not None:
            lines.append(f"picked by our detector (within {PICKED_S * 1e3:g} ms of the label) at ≥ 4 WAV sensors: "
                         f"{100 * tot[4] / tot[0]:.1f} % of labelled rounds")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"Pittsburgh data folder (default {DEFAULT_DATA})")
    ap.add_argument("--modes", default="picks,audio,subsets",
                    help="comma list of picks, audio, subsets, corrected, labels (default: picks,audio,subsets)")
    ap.add_argument("--solver", default="project,baseline", help="subset-test solvers: project, baseline")
    ap.add_argument("--n-subsets", type=int, default=20, help="random six-sensor subsets per shot (default 20)")
    ap.add_argument("--subset-size", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp", default="", help="only these firing positions, e.g. FP1,FP3")
    ap.add_argument("--markdown", type=Path, help="also write the tables as markdown to this file")
    ap.add_argument("--facts", action="store_true", help="print facts about the data first")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="tests located in parallel (default: one per CPU)")
    ap.add_argument("--readme", type=Path, help="write the README's short results table (markdown) to this file")
    ap.add_argument("--model-sigma-ms", type=float, default=None,
                    help="the server's model timing error (SolverConfig.model_sigma_s) in ms (default: the default)")
    ap.add_argument("--max-chance", type=float, default=None,
                    help="AssociationConfig.max_chance (default: the default)")
    ap.add_argument("--live-step", type=float, default=None, metavar="S",
                    help="decide as a live server would, the watermark moving every S s of audio "
                         "(default: once every event is in, as earwitness locate)")
    ap.add_argument("--node-config", type=Path, metavar="FILE.toml",
                    help="audio mode: detect onsets with this node config's [detector] settings, as "
                         "`earwitness locate --node-config` (default: the defaults)")
    args = ap.parse_args(argv)

    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in ("picks", "audio", "subsets", "corrected", "labels")]
    solvers = [s for s in args.solver.split(",") if s]
    bad += [s for s in solvers if s not in SOLVERS]
    if bad:
        print(f"error: unknown mode/solver {', '.join(bad)}; modes: picks,audio,subsets,corrected,labels; solvers: "
              f"{','.join(SOLVERS)}", file=sys.stderr)
        return 2
    if not args.data.is_dir():
        print(f"error: no data folder {args.data}; pass --data (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    from common.config import ConfigError, load_node_config

    detector_cfg = None
    if args.node_config is not None:
        try:
            detector_cfg = load_node_config(args.node_config).detector
        except (ConfigError, OSError) as exc:
            print(f"error: --node-config: {exc}", file=sys.stderr)
            return 2
    try:
        from server.locate import replay_config

        replay_config(args.model_sigma_ms, args.max_chance)       # the options' range checks
    except ImportError:
        pass                                                     # told per mode below
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fps = {f for f in args.fp.split(",") if f} or None
    t0 = time.perf_counter()
    tests = load_all(args.data, fps)
    if not tests:
        print(f"error: no tests under {args.data}", file=sys.stderr)
        return 2
    print(f"loaded {len(tests)} tests ({sum(t.num_rounds for t in tests)} rounds) in "
          f"{time.perf_counter() - t0:.1f} s from {args.data}")
    md: list[str] = []
    readme: list[tuple[str, str, float, float, float, int, int, float, float, float]] = []
    status = 0
    if args.facts:
        print("\n== data facts\n" + facts(tests))

    # (mode, model σ ms or None for the default, whether that σ is the one picks mode learnt)
    runs: list[tuple[str, float | None, bool]] = [(m, args.model_sigma_ms, False) for m in modes
                                                  if m in ("picks", "audio")]
    for ceiling in ("corrected", "labels"):
        if ceiling in modes and ("picks" not in modes or args.model_sigma_ms is not None):
            runs.append((ceiling, args.model_sigma_ms, False))
    while runs:
        mode, sigma_ms, relearnt = runs.pop(0)
        title = f"locator, {mode} mode (server.locate.locate_set)"
        if sigma_ms is not None or args.max_chance is not None:
            title += (f", model σ {sigma_ms if sigma_ms is not None else 'default'} ms, "
                      f"max_chance {args.max_chance if args.max_chance is not None else 'default'}")
        if relearnt:
            title += " (learnt by the server from the picks-mode shots)"
        if args.live_step is not None:
            title += f", decided as live (watermark steps of {args.live_step:g} s)"
        if detector_cfg is not None and mode in ("audio", "corrected"):
            title += f", detector settings of {args.node_config}"
        try:
            import server.locate  # noqa: F401
        except ImportError as e:
            print(f"\n== {title}\nSKIPPED: server.locate is not importable ({e}); "
                  f"it must provide locate_set(recording_set, mode=...)", file=sys.stderr)
            status = 2
            continue
        t1 = time.perf_counter()
        from server.locate import replay_config

        cfg = replay_config(sigma_ms, args.max_chance)
        if mode == "corrected":
            corr = station_corrections(tests)
            title = title.replace("corrected mode", "audio mode, WAV sensors' biases corrected from the survey")
            results = run_locator([corrected_test(t, corr) for t in tests], "audio", args.jobs, cfg,
                                  live_step_s=args.live_step, detector_cfg=detector_cfg)
        elif mode == "labels":
            title = title.replace("labels mode", "audio mode's ceiling: ShotSpotter's labelled arrivals at the "
                                                 "WAV sensors as picks, nothing else")
            results = run_locator([labelled_test(t) for t in tests], "picks", args.jobs, cfg,
                                  live_step_s=args.live_step)
        else:
            # the ceiling table (below, for the first audio run) counts our picks
            results = run_locator(tests, mode, args.jobs, cfg, count_picks=mode == "audio" and not relearnt,
                                  live_step_s=args.live_step, detector_cfg=detector_cfg)
        summaries = summarize_by_group([score for score, *_ in results], SURVEY_R95_M)
        dt = time.perf_counter() - t1
        print(f"\n== {title}: {dt:.1f} s\n" + format_summaries(summaries))
        review = review_line(summaries[-1], summarize([r for *_, r in results], "all", SURVEY_R95_M))
        print(review)
        if mode == "picks":
            text, net = learnt_sigma_summary(tests, [x for _, x, *_ in results])
            print("\nmodel timing error the association learnt (shots with spare arrivals; no labels)\n" + text)
            learnt_ms = round(net * 1e3, 1) if net is not None else None
            default_ms = cfg.solver.model_sigma_s * 1e3
            if args.model_sigma_ms is None:
                use_ms = learnt_ms if learnt_ms is not None and learnt_ms > default_ms else None
                if "audio" in modes and use_ms is not None:
                    # the network's node positions and paths are what they are in audio
                    # mode too: run it again with what the server learnt of them
                    runs.append(("audio", use_ms, True))
                elif "audio" in modes:
                    print(f"  (no more than the default {default_ms:g} ms: audio mode is not run again)")
                for ceiling in ("corrected", "labels"):
                    if ceiling in modes:
                        runs.append((ceiling, use_ms, use_ms is not None))
        if mode == "audio" and not relearnt:
            print("\nwhat audio mode can reach (from the labels; scoring facts only)\n"
                  + audio_ceiling(tests, [p for _, _, p, _ in results]))
        md += [f"### {title}", "", format_summaries(summaries, markdown=True), "", review + ".", ""]
        if mode in ("corrected", "labels"):
            continue
        a = summaries[-1]
        label = {"picks": "picks mode: all ~20 sensors' pulses, echoes included, our association",
                 "audio": "audio mode: ≤ 6 WAVs per test, our detector"}[mode]
        if relearnt:
            label += f", model σ {sigma_ms} ms as learnt in picks mode"
        readme.append((label, mode, a.recall, a.median_m, a.within_15m, a.false_shots, a.extra_shots,
                       a.in_radius, a.in_radius_truth, a.radius_median_m))

    if "subsets" in modes:
        shots = subset_shots(tests)
        for name in solvers:
            solve = SOLVERS[name]
            for size, label in ((args.subset_size, f"random {args.subset_size}-sensor subsets, "
                                 f"{args.n_subsets} per shot"), (None, "all labelled arrivals")):
                title = f"subset test, {name} solver: {label}"
                t1 = time.perf_counter()
                try:
                    scores = score_subsets(shots, solve, subset_size=size, n_subsets=args.n_subsets,
                                           seed=args.seed)
                except ImportError as e:
                    print(f"\n== {title}\nSKIPPED: {e}", file=sys.stderr)
                    status = 2
                    break
                dt = time.perf_counter() - t1
                print(f"\n== {title}: {dt:.1f} s\n" + format_subset_scores(scores))
                md += [f"### {title}", "", format_subset_scores(scores, markdown=True), ""]
                if size is not None and name == "project":
                    a = scores[-1]
                    readme.append((f"solver alone, random {size}-sensor subsets (ShotSpotter: 96.3 % within 15 m)",
                                   "subsets", math.nan, a.median_m, a.within_15m, -1, -1, math.nan, math.nan, math.nan))
        print("\nShotSpotter (TN 098): 96.3 % of six-sensor sub-array solutions within 15 m; mean 2-D error ≈ 4 m.")

    if args.markdown:
        args.markdown.write_text("\n".join(md) + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    if readme:
        table = readme_table(readme, sum(t.num_rounds for t in tests))
        print("\n== README table\n" + table)
        if args.readme:
            args.readme.write_text(table + "\n", encoding="utf-8")
            print(f"wrote {args.readme}")
    return status


if __name__ == "__main__":
    sys.exit(main())
