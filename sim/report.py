"""Scoring a simulation run: located shots against the simulated truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.geodesy import LocalFrame
from common.timefmt import ns_to_iso, ns_to_s

#: A located shot matches a true round only if its emission time is this close.
MATCH_WINDOW_S = 0.1
#: ... and this close in position (further: a false shot, plus a missed round).
MATCH_RADIUS_M = 100.0


@dataclass(frozen=True)
class Match:
    truth_index: int
    estimate_index: int | None
    error_m: float | None


@dataclass(frozen=True)
class SimScore:
    matches: tuple[Match, ...]
    false_estimates: tuple[int, ...]
    total: int
    located: int
    median_error_m: float | None
    p95_error_m: float | None

    @property
    def false_shots(self) -> int:
        return len(self.false_estimates)


def score(truth_t_ns: np.ndarray, truth_xy: np.ndarray, est_t_ns: np.ndarray, est_xy: np.ndarray) -> SimScore:
    """Match estimates to true rounds one-to-one (closest in time first).

    truth_t_ns: (n,) emission times; truth_xy: (n, 2) m; est_t_ns: (m,); est_xy: (m, 2) m
    (same local frame). An estimate matches a round within ``MATCH_WINDOW_S`` and
    ``MATCH_RADIUS_M``; unmatched estimates are false shots.
    """
    truth_t_ns = np.asarray(truth_t_ns, dtype=np.int64)
    est_t_ns = np.asarray(est_t_ns, dtype=np.int64)
    pairs = []
    for i in range(len(truth_t_ns)):
        for j in range(len(est_t_ns)):
            dt = abs(int(est_t_ns[j]) - int(truth_t_ns[i])) / 1e9
            d = float(np.linalg.norm(np.asarray(est_xy[j]) - np.asarray(truth_xy[i])))
            if dt <= MATCH_WINDOW_S and d <= MATCH_RADIUS_M:
                pairs.append((dt, d, i, j))
    pairs.sort()
    used_t: dict[int, tuple[int, float]] = {}
    used_e: set[int] = set()
    for dt, d, i, j in pairs:
        if i in used_t or j in used_e:
            continue
        used_t[i] = (j, d)
        used_e.add(j)
    matches = tuple(Match(i, used_t[i][0], used_t[i][1]) if i in used_t else Match(i, None, None)
                    for i in range(len(truth_t_ns)))
    errs = np.array([m.error_m for m in matches if m.error_m is not None])
    return SimScore(
        matches=matches,
        false_estimates=tuple(j for j in range(len(est_t_ns)) if j not in used_e),
        total=len(truth_t_ns), located=int(errs.size),
        median_error_m=float(np.median(errs)) if errs.size else None,
        p95_error_m=float(np.percentile(errs, 95)) if errs.size else None,
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
        "summary": {
            "total": sc.total, "located": sc.located,
            "median_error_m": None if sc.median_error_m is None else round(sc.median_error_m, 3),
            "p95_error_m": None if sc.p95_error_m is None else round(sc.p95_error_m, 3),
            "false_shots": sc.false_shots,
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
