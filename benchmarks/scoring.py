"""Scoring located gunshots against ground truth (pure functions, no IO).

Rules (see also docs/recording-set.md, "truth"):

* Horizontal error: distance in the local horizontal plane at the truth point
  between a located round's (lat, lon) and the truth shot's (lat, lon).
* A located round more than ``false_radius_m`` (100 m) from every truth shot of its
  test is a **false shot**.
* Otherwise it may be matched to one round of a truth shot whose emission time is
  within ``time_window_s`` (0.1 s) of the located time: a **located** round. Each
  fired round takes at most one located round; the matching maximises the number
  of matches, then prefers timed entries and small time differences (the
  assignment is ``sim.report.assign_rounds``, which scores the simulations too).
* A round of an untimed truth entry (``t_utc_ns`` None: fired, but with no
  labelled arrivals to tell when) cannot be checked against its emission time,
  so it is never located. A located round matched to one is **unverified**:
  neither located, nor false, nor extra (it is within the false radius of the
  position, and a round was fired that it may be).
* Located rounds that are neither false, matched nor unverified are **extra
  shots** (more rounds than fired, or at a time when nothing was fired).
* A located round at a non-finite position (NaN, inf) is a false shot.
* Recall = located / fired; "within 15 m / 25 m" are fractions of rounds FIRED
  (a missed round counts as a failure); error percentiles are over located rounds.

The six-sensor subset test (:func:`score_subsets`) mirrors ShotSpotter's
"random six-sensor sub-arrays" figure: for each labelled shot, random subsets of
its labelled arrivals are handed to a solver and the horizontal error of each
solution is measured against the surveyed position.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from common.geodesy import LocalFrame
from common.recording_set import TruthShot
from common.timefmt import NS_PER_S
from sim.report import assign_rounds

TIME_WINDOW_S = 0.1
FALSE_RADIUS_M = 100.0

#: ``solve(receivers_enu (n, 3) m, t_arrival_s (n,), c m/s) -> (x, y)`` in the same frame.
Solver = Callable[[np.ndarray, np.ndarray, float], tuple[float, float]]


# ------------------------------------------------------------------ per test
@dataclass(frozen=True)
class RoundMatch:
    """A located round matched to a fired round: indices, horizontal error (m), time offset (s),
    and the 95 % horizontal radius the locator reported (m; None when it reports none)."""

    truth_index: int
    located_index: int
    error_m: float
    dt_s: float
    radius_m: float | None = None


@dataclass(frozen=True)
class TestScore:
    """Score of one test. ``errors_m`` are the matched rounds' horizontal errors."""

    __test__ = False  # not a pytest test class

    name: str
    group: str
    rounds_fired: int
    located_total: int
    matches: tuple[RoundMatch, ...]
    false_shots: int
    extra_shots: int
    #: Located rounds matched to rounds fired without an emission time (untimed
    #: truth): not checkable, so neither located, false nor extra.
    unverified: int = 0

    @property
    def located(self) -> int:
        return len(self.matches)

    @property
    def errors_m(self) -> tuple[float, ...]:
        return tuple(m.error_m for m in self.matches)


def horizontal_error_m(lat: float, lon: float, truth: TruthShot) -> float:
    """Horizontal distance (m) from (lat, lon) to ``truth`` in the local plane at
    the truth point (inf for a non-finite position)."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return math.inf
    frame = LocalFrame(truth.lat, truth.lon, truth.alt if truth.alt is not None else 0.0)
    enu = frame.to_enu(lat, lon, frame.alt0)
    return float(math.hypot(enu[0], enu[1]))


def score_test(truth: Sequence[TruthShot], located: Iterable[Any], *, name: str = "", group: str = "",
               time_window_s: float = TIME_WINDOW_S, false_radius_m: float = FALSE_RADIUS_M) -> TestScore:
    """Match ``located`` rounds (objects with ``.lat``, ``.lon``, ``.t_utc_ns``, and
    optionally ``.error_m``: the reported 95 % radius) to ``truth``.

    See the module docstring for the rules. ``truth`` must be non-empty.
    """
    truth = list(truth)
    located = list(located)
    if not truth:
        raise ValueError(f"{name or 'test'}: no truth shots to score against")
    fired = sum(s.rounds for s in truth)
    n_loc = len(located)
    dist = np.array([[horizontal_error_m(float(l.lat), float(l.lon), s) for s in truth] for l in located]
                    ).reshape(n_loc, len(truth))
    # One column per fired round; NaN time difference: fired at an unknown time.
    slot_truth = [i for i, s in enumerate(truth) for _ in range(s.rounds)]
    dts = np.array([[math.nan if truth[i].t_utc_ns is None else (int(loc.t_utc_ns) - int(truth[i].t_utc_ns)) / NS_PER_S
                     for i in slot_truth] for loc in located]).reshape(n_loc, len(slot_truth))
    is_false, pairs = assign_rounds(dist[:, slot_truth], dts, false_radius_m, time_window_s)
    matches = []
    unverified = 0
    for j, k in pairs:
        i = slot_truth[k]
        if truth[i].t_utc_ns is None:           # no emission time to check it against
            unverified += 1
            continue
        radius = getattr(located[j], "error_m", None)
        matches.append(RoundMatch(truth_index=i, located_index=j, error_m=float(dist[j, i]),
                                  dt_s=float(dts[j, k]), radius_m=None if radius is None else float(radius)))
    matches.sort(key=lambda m: (m.truth_index, m.located_index))
    n_false = int(np.count_nonzero(is_false))
    return TestScore(name=name, group=group, rounds_fired=fired, located_total=n_loc, matches=tuple(matches),
                     false_shots=n_false, extra_shots=n_loc - n_false - len(matches) - unverified,
                     unverified=unverified)


# ------------------------------------------------------------------ summaries
@dataclass(frozen=True)
class Summary:
    """Totals over tests. Fractions are of rounds fired; error figures (m) of matched rounds (nan if none)."""

    group: str
    tests: int
    rounds_fired: int
    located: int
    recall: float
    mean_m: float
    median_m: float
    p90_m: float
    p95_m: float
    within_15m: float
    within_25m: float
    false_shots: int
    extra_shots: int
    #: Located rounds matched only to rounds fired without an emission time
    #: (:attr:`TestScore.unverified`).
    unverified: int = 0
    #: Of the matched rounds with a reported radius, the fraction whose error is inside it (nan: none).
    in_radius: float = math.nan
    #: The same with the truth's own 95 % radius combined with the reported one in
    #: quadrature (``truth_r95_m`` of :func:`summarize`; equal to ``in_radius`` when 0).
    in_radius_truth: float = math.nan
    #: The median reported 95 % radius (m) of those rounds (nan: none): how sharp
    #: the radius is, beside how often it holds.
    radius_median_m: float = math.nan


def summarize(scores: Iterable[TestScore], group: str = "all", truth_r95_m: float = 0.0) -> Summary:
    """Pool ``scores`` into one :class:`Summary` labelled ``group``. ``truth_r95_m``:
    the 95 % horizontal radius of the truth positions themselves (a surveyed
    position is not exact), for :attr:`Summary.in_radius_truth`."""
    scores = list(scores)
    errs = np.array([e for s in scores for e in s.errors_m], dtype=float)
    fired = sum(s.rounds_fired for s in scores)
    radii = [(m.error_m, m.radius_m) for s in scores for m in s.matches if m.radius_m is not None]

    def pct(q: float) -> float:
        return float(np.percentile(errs, q)) if errs.size else math.nan

    def frac(n: int) -> float:
        return n / fired if fired else math.nan

    return Summary(
        group=group, tests=len(scores), rounds_fired=fired, located=int(errs.size),
        recall=frac(int(errs.size)), mean_m=float(errs.mean()) if errs.size else math.nan, median_m=pct(50), p90_m=pct(90), p95_m=pct(95),
        within_15m=frac(int(np.count_nonzero(errs <= 15.0))),
        within_25m=frac(int(np.count_nonzero(errs <= 25.0))),
        false_shots=sum(s.false_shots for s in scores), extra_shots=sum(s.extra_shots for s in scores),
        unverified=sum(s.unverified for s in scores),
        in_radius=(sum(1 for e, r in radii if e <= r) / len(radii)) if radii else math.nan,
        in_radius_truth=(sum(1 for e, r in radii if e <= math.hypot(r, truth_r95_m)) / len(radii))
        if radii else math.nan,
        radius_median_m=float(np.median([r for _, r in radii])) if radii else math.nan,
    )


def summarize_by_group(scores: Iterable[TestScore], truth_r95_m: float = 0.0) -> list[Summary]:
    """One :class:`Summary` per ``group`` (sorted), then the overall one (``"all"``)."""
    scores = list(scores)
    groups = sorted({s.group for s in scores})
    return ([summarize([s for s in scores if s.group == g], g, truth_r95_m) for g in groups]
            + [summarize(scores, "all", truth_r95_m)])


def _fmt(x: float, spec: str) -> str:
    return "—" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def format_summaries(summaries: Sequence[Summary], markdown: bool = False) -> str:
    """A text (or markdown) table of ``summaries``. "in radius": matched rounds
    whose error is inside the reported 95 % radius; "⊕ truth": the same with the
    truth's own 95 % radius combined in quadrature (see :func:`summarize`);
    "radius m": the median reported radius."""
    head = ["group", "tests", "fired", "located", "recall", "mean m", "median m", "p90 m", "p95 m",
            "≤15 m", "≤25 m", "false", "extra", "radius m", "in radius", "⊕ truth"]
    rows = [[s.group, str(s.tests), str(s.rounds_fired), str(s.located), _fmt(100 * s.recall, ".1f") + " %",
             _fmt(s.mean_m, ".1f"), _fmt(s.median_m, ".1f"), _fmt(s.p90_m, ".1f"), _fmt(s.p95_m, ".1f"),
             _fmt(100 * s.within_15m, ".1f") + " %", _fmt(100 * s.within_25m, ".1f") + " %",
             str(s.false_shots), str(s.extra_shots), _fmt(s.radius_median_m, ".1f"),
             _fmt(100 * s.in_radius, ".0f") + " %",
             _fmt(100 * s.in_radius_truth, ".0f") + " %"] for s in summaries]
    table = _table(head, rows, markdown)
    odd = [s for s in summaries if s.unverified and s.group != "all"] or [s for s in summaries if s.unverified]
    if odd:
        table += ("\n\nunverified (not in the table): " if markdown else "\nunverified (not in the table): ") + \
            ", ".join(f"{s.group} {s.unverified}" for s in odd) + \
            " located round(s) matched to rounds fired without labelled arrivals, whose emission time is " \
            "unknown: neither located, false nor extra"
    return table


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


# ------------------------------------------------------------------ subset test
@dataclass(frozen=True, eq=False)
class SubsetShot:
    """One labelled shot for the subset test: ``receivers_enu`` (n, 3) m and ``t_arrival_ns``
    (n,) int64 UTC ns, one arrival per sensor; ``truth_enu`` (2,) or (3,) m in the same
    frame; ``c_mps`` the speed of sound to give the solver; ``group`` e.g. ``"FP1"``."""

    group: str
    receivers_enu: np.ndarray
    t_arrival_ns: np.ndarray
    truth_enu: np.ndarray
    c_mps: float


@dataclass(frozen=True)
class SubsetTrial:
    """One solver call: which shot, which arrivals (indices), horizontal error (m; nan = solver failed)."""

    group: str
    shot: int
    arrivals: tuple[int, ...]
    error_m: float


@dataclass(frozen=True)
class SubsetScore:
    """Subset-test totals. ``within_15m`` is a fraction of all trials (failures count as misses);
    error figures (m) are over successful trials. ``skipped_shots``: fewer arrivals than the subset size."""

    group: str
    shots: int
    skipped_shots: int
    trials: int
    failed: int
    within_15m: float
    within_25m: float
    mean_m: float
    median_m: float
    p90_m: float


def choose_subsets(n: int, k: int, n_subsets: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Up to ``n_subsets`` distinct sorted k-subsets of range(n): all of them when there are
    no more than ``n_subsets``, else distinct random ones. Empty when n < k."""
    if n < k:
        return []
    total = math.comb(n, k)
    if total <= n_subsets:
        return list(itertools.combinations(range(n), k))
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < n_subsets:
        chosen[tuple(sorted(int(i) for i in rng.choice(n, size=k, replace=False)))] = None
    return list(chosen)


def run_subsets(shots: Sequence[SubsetShot], solve: Solver, *, subset_size: int | None = 6,
                n_subsets: int = 20, seed: int = 0) -> tuple[list[SubsetTrial], list[int]]:
    """Call ``solve`` on subsets of each shot's arrivals; return (trials, indices of skipped shots).

    ``subset_size`` None: one trial per shot with all its arrivals. The solver gets
    receivers relative to the subset's centroid and times in s relative to the
    subset's earliest arrival, and must return (x, y) in that centroid frame (or
    non-finite values when it cannot solve; those count as failed trials).
    """
    rng = np.random.default_rng(seed)
    trials: list[SubsetTrial] = []
    skipped: list[int] = []
    for si, shot in enumerate(shots):
        r_all = np.asarray(shot.receivers_enu, dtype=float)
        t_all = np.asarray(shot.t_arrival_ns, dtype=np.int64)
        n = len(t_all)
        k = n if subset_size is None else subset_size
        subsets = choose_subsets(n, k, n_subsets if subset_size is not None else 1, rng)
        if not subsets:
            skipped.append(si)
            continue
        truth = np.asarray(shot.truth_enu, dtype=float)
        for sub in subsets:
            idx = np.array(sub)
            r = r_all[idx]
            centre = r.mean(axis=0)
            t = t_all[idx]
            t_s = (t - t.min()) / NS_PER_S
            x, y = solve(r - centre, t_s, float(shot.c_mps))
            err = math.hypot(float(x) + centre[0] - truth[0], float(y) + centre[1] - truth[1])
            trials.append(SubsetTrial(group=shot.group, shot=si, arrivals=tuple(int(i) for i in sub),
                                      error_m=err if math.isfinite(err) else math.nan))
    return trials, skipped


def summarize_subsets(trials: Sequence[SubsetTrial], shots: Sequence[SubsetShot], skipped: Sequence[int],
                      group: str = "all") -> SubsetScore:
    """Pool ``trials`` (already filtered to ``group`` if wanted) into a :class:`SubsetScore`."""
    errs = np.array([t.error_m for t in trials], dtype=float)
    ok = errs[np.isfinite(errs)]
    n = len(errs)
    in_group = [i for i, s in enumerate(shots) if group == "all" or s.group == group]
    skipped_set = set(skipped)
    return SubsetScore(
        group=group,
        shots=sum(1 for i in in_group if i not in skipped_set),
        skipped_shots=sum(1 for i in in_group if i in skipped_set),
        trials=n, failed=n - ok.size,
        within_15m=float(np.count_nonzero(ok <= 15.0) / n) if n else math.nan,
        within_25m=float(np.count_nonzero(ok <= 25.0) / n) if n else math.nan,
        mean_m=float(np.mean(ok)) if ok.size else math.nan,
        median_m=float(np.median(ok)) if ok.size else math.nan,
        p90_m=float(np.percentile(ok, 90)) if ok.size else math.nan,
    )


def score_subsets(shots: Sequence[SubsetShot], solve: Solver, *, subset_size: int | None = 6,
                  n_subsets: int = 20, seed: int = 0) -> list[SubsetScore]:
    """Run the subset test and summarise per group (sorted), then overall (``"all"``)."""
    trials, skipped = run_subsets(shots, solve, subset_size=subset_size, n_subsets=n_subsets, seed=seed)
    groups = sorted({s.group for s in shots})
    out = [summarize_subsets([t for t in trials if t.group == g], shots, skipped, g) for g in groups]
    return out + [summarize_subsets(trials, shots, skipped, "all")]


def format_subset_scores(scores: Sequence[SubsetScore], markdown: bool = False) -> str:
    """A text (or markdown) table of subset-test scores."""
    head = ["group", "shots", "skipped", "trials", "failed", "≤15 m", "≤25 m", "mean m", "median m", "p90 m"]
    rows = [[s.group, str(s.shots), str(s.skipped_shots), str(s.trials), str(s.failed),
             _fmt(100 * s.within_15m, ".1f") + " %", _fmt(100 * s.within_25m, ".1f") + " %",
             _fmt(s.mean_m, ".1f"), _fmt(s.median_m, ".1f"), _fmt(s.p90_m, ".1f")] for s in scores]
    return _table(head, rows, markdown)
