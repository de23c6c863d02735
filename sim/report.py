"""Scoring a simulation run: located shots against the simulated truth.

The project's rules, here and for the real-data benchmarks
(``benchmarks/scoring.py``, "score_test", which uses :func:`assign_rounds`): a
located shot more than ``MATCH_RADIUS_M`` from every true round (or at a
non-finite position) is a **false shot**; the others are matched one-to-one
to true rounds whose emission time is within ``MATCH_WINDOW_S`` and position
within ``MATCH_RADIUS_M``, by an optimal assignment (as many matches as
possible, then the smallest time differences); the rest are **extra shots**
(more located than fired, or at a time when nothing was fired there)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from common.geodesy import LocalFrame
from common.timefmt import ns_to_iso, ns_to_s

#: A located shot matches a true round only if its emission time is this close.
MATCH_WINDOW_S = 0.1
#: ... and this close in position; further from every true round: a false shot.
MATCH_RADIUS_M = 100.0


@dataclass(frozen=True)
class Match:
    truth_index: int
    estimate_index: int | None
    error_m: float | None


@dataclass(frozen=True)
class SimScore:
    matches: tuple[Match, ...]
    #: Estimates more than ``MATCH_RADIUS_M`` from every true round (or at a non-finite position).
    false_estimates: tuple[int, ...]
    total: int
    located: int
    median_error_m: float | None
    p95_error_m: float | None
    #: Estimates near a true round but matched to none (a duplicate, or the wrong time).
    extra_estimates: tuple[int, ...] = ()

    @property
    def false_shots(self) -> int:
        return len(self.false_estimates)

    @property
    def extra_shots(self) -> int:
        return len(self.extra_estimates)


def assign_rounds(dist_m: np.ndarray, dt_s: np.ndarray, radius_m: float = MATCH_RADIUS_M,
                  window_s: float = MATCH_WINDOW_S) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The project's matching rule, shared with ``benchmarks/scoring.py``.

    dist_m: (m, k) horizontal distance (m) of located shot j from fired round k;
    dt_s: (m, k) located minus emission time (s), NaN for a round fired at an
    unknown time. Returns (is_false: (m,) bool, a located shot further than
    ``radius_m`` from every round, or at a non-finite distance; pairs (j, k) of
    an optimal one-to-one assignment: as many pairs as possible of a shot within
    ``radius_m`` of a round and, when the round's time is known, within
    ``window_s`` of it; then rounds with a time before rounds without; then
    the smallest time differences)."""
    dist_m = np.asarray(dist_m, dtype=float)
    dt_s = np.asarray(dt_s, dtype=float)
    m, k = dist_m.shape
    # (not ``dist > r``: a non-finite distance is never within it)
    near = dist_m <= radius_m
    is_false = ~near.any(axis=1)
    untimed = np.isnan(dt_s)
    allowed = near & (untimed | (np.abs(np.nan_to_num(dt_s)) <= window_s))
    # Cost 0..1 for a timed pair (its time difference), 2 for an untimed one,
    # ``big`` otherwise: the assignment first maximises the number of allowed
    # pairs, then prefers timed rounds and small time differences.
    big = 1e6
    cost = np.where(allowed, np.where(untimed, 2.0, np.abs(np.nan_to_num(dt_s)) / window_s), big)
    pairs: list[tuple[int, int]] = []
    if m and k:
        pairs = [(int(j), int(i)) for j, i in zip(*linear_sum_assignment(cost)) if allowed[j, i]]
    return is_false, pairs


def score(truth_t_ns: np.ndarray, truth_xy: np.ndarray, est_t_ns: np.ndarray, est_xy: np.ndarray) -> SimScore:
    """Match estimates to true rounds one-to-one by the module's rules
    (:func:`assign_rounds`).

    truth_t_ns: (n,) emission times; truth_xy: (n, 2) m; est_t_ns: (m,); est_xy: (m, 2) m
    (same local frame).
    """
    truth_t_ns = np.asarray(truth_t_ns, dtype=np.int64).reshape(-1)
    est_t_ns = np.asarray(est_t_ns, dtype=np.int64).reshape(-1)
    n, m = len(truth_t_ns), len(est_t_ns)
    truth_xy = np.asarray(truth_xy, dtype=float).reshape(n, 2)
    est_xy = np.asarray(est_xy, dtype=float).reshape(m, 2)
    dist = np.linalg.norm(est_xy[:, None, :] - truth_xy[None, :, :], axis=2)          # (m, n)
    dt = (est_t_ns[:, None] - truth_t_ns[None, :]).astype(np.float64) / 1e9          # (m, n)
    is_false, pairs = assign_rounds(dist, dt)
    used_t = {i: (j, float(dist[j, i])) for j, i in pairs}
    used_e = {j for j, _ in pairs}
    matches = tuple(Match(i, used_t[i][0], used_t[i][1]) if i in used_t else Match(i, None, None)
                    for i in range(n))
    errs = np.array([mt.error_m for mt in matches if mt.error_m is not None])
    return SimScore(
        matches=matches,
        false_estimates=tuple(j for j in range(m) if is_false[j]),
        total=n, located=int(errs.size),
        median_error_m=float(np.median(errs)) if errs.size else None,
        p95_error_m=float(np.percentile(errs, 95)) if errs.size else None,
        extra_estimates=tuple(j for j in range(m) if not is_false[j] and j not in used_e),
    )


def report_json(truth: list[dict], estimates: list[dict], sc: SimScore) -> dict:
    """The ``--report`` document: per true round its estimate and error, and a summary.

    truth: dicts with lat, lon, t_ns (and any extra keys, e.g. incident/round);
    estimates: ShotReport.to_json() dicts.
    """
    shots = []
    for m in sc.matches:
        t = truth[m.truth_index]
        shots.append({
            "truth": {"lat": t["lat"], "lon": t["lon"], "time": ns_to_s(t["t_ns"]),
                      "time_utc": ns_to_iso(t["t_ns"]), "incident": t.get("incident"), "round": t.get("round")},
            "estimate": estimates[m.estimate_index] if m.estimate_index is not None else None,
            "error_m": None if m.error_m is None else round(m.error_m, 3),
        })
    return {
        "shots": shots,
        "false": [estimates[j] for j in sc.false_estimates],
        "extra": [estimates[j] for j in sc.extra_estimates],
        "summary": {
            "total": sc.total, "located": sc.located,
            "median_error_m": None if sc.median_error_m is None else round(sc.median_error_m, 3),
            "p95_error_m": None if sc.p95_error_m is None else round(sc.p95_error_m, 3),
            "false_shots": sc.false_shots,
            "extra_shots": sc.extra_shots,
        },
    }


def alert_latencies_s(sc: SimScore, truth_t_ns, published_mono_ns, start_utc_ns: int,
                      start_mono_ns: int) -> tuple[float, ...]:
    """Per located true round (in ``sc.matches`` order), the seconds from the shot
    being fired to its report being published, in a run paced in real time.

    truth_t_ns: (n,) emission times (UTC ns); published_mono_ns: (m,) monotonic
    clock (ns) at which each estimate (same order as scored) was published;
    the simulated audio's frame 0 (UTC ``start_utc_ns``) was due at monotonic
    ``start_mono_ns``, so a round emitted at UTC t was fired at monotonic
    ``start_mono_ns + (t − start_utc_ns)``."""
    out = []
    for m in sc.matches:
        if m.estimate_index is None:
            continue
        fired = start_mono_ns + (int(truth_t_ns[m.truth_index]) - start_utc_ns)
        out.append((int(published_mono_ns[m.estimate_index]) - fired) / 1e9)
    return tuple(out)


def to_local(frame: LocalFrame, lat, lon) -> np.ndarray:
    """(lat, lon) arrays → (n, 2) m in ``frame``."""
    lat = np.atleast_1d(np.asarray(lat, dtype=float))
    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    if lat.size == 0:
        return np.zeros((0, 2))
    return frame.to_enu(lat, lon, np.zeros_like(lat))[:, :2]
