"""Multilateration: source position and emission time from arrival times.

Model: t_i = t0 + |p − r_i| / c + e_i, with receivers r_i (n, 3) m ENU, arrival
times t_i (s, relative to any common epoch), e_i ~ N(0, σ_i²). Unknowns are the
source position p (x, y in 2-D mode with z fixed; x, y, z in 3-D mode) and the
emission time t0. Solved by weighted, damped Gauss-Newton with a
Huber loss (iteratively reweighted Gauss-Newton); one or more bad arrivals (echoes, blocked paths) are rejected by
leave-one-out tests on the normalised residuals. Uncertainty comes from the
Jacobian at the solution, scaled by the larger of the a-priori timing error and the
fit's own residuals, and is reported as the 95 % horizontal radius.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: Factor turning the largest 1-σ axis of a 2-D error ellipse into a radius that
#: contains ≥ 95 % of the probability (chi-square, 2 degrees of freedom).
_K95_2D = float(np.sqrt(stats.chi2.ppf(0.95, 2)))


@dataclass(frozen=True)
class Solution:
    """A located source. ``pos``: (3,) m ENU; ``t0_s``: emission time (same epoch
    as the inputs); ``cov``: covariance of (x, y[, z], t0) in m² / s²;
    ``used``: boolean mask (n,) of arrivals kept; ``residuals_s``: (n,) for all."""

    pos: np.ndarray = field(repr=False)
    t0_s: float
    cov: np.ndarray = field(repr=False)
    used: np.ndarray = field(repr=False)
    residuals_s: np.ndarray = field(repr=False)
    rms_s: float
    error95_m: float
    mode: str

    @property
    def n_used(self) -> int:
        return int(np.count_nonzero(self.used))


def _model(params: np.ndarray, receivers: np.ndarray, z_fixed: float | None, c: float) -> tuple[np.ndarray, float]:
    if z_fixed is None:
        p = params[:3]
        t0 = params[3]
    else:
        p = np.array([params[0], params[1], z_fixed])
        t0 = params[2]
    d = np.linalg.norm(receivers - p, axis=1)
    return t0 + d / c, t0


def _jacobian(params, receivers, z_fixed, c):
    if z_fixed is None:
        p = params[:3]
    else:
        p = np.array([params[0], params[1], z_fixed])
    diff = p - receivers
    d = np.maximum(np.linalg.norm(diff, axis=1), 1e-6)
    u = diff / d[:, None] / c
    cols = u if z_fixed is None else u[:, :2]
    return np.hstack([cols, np.ones((len(receivers), 1))])


def _fit(receivers, t_s, sigma_s, c, x0, z_fixed, loss="huber", iters=20):
    """Weighted Gauss-Newton with Levenberg damping; ``loss="huber"`` re-weights
    residuals beyond 2 σ (iteratively reweighted least squares)."""
    q = np.asarray(x0, dtype=float).copy()
    w = 1.0 / sigma_s
    lam = 1e-3

    def cost(qq):
        pred, _ = _model(qq, receivers, z_fixed, c)
        r = (t_s - pred) * w
        if loss == "huber":
            a = np.abs(r)
            return float(np.sum(np.where(a <= 2.0, 0.5 * r * r, 2.0 * a - 2.0))), r
        return float(0.5 * np.sum(r * r)), r

    f, r = cost(q)
    for _ in range(iters):
        J = _jacobian(q, receivers, z_fixed, c) * w[:, None]
        rw = np.ones_like(r) if loss != "huber" else np.minimum(1.0, 2.0 / np.maximum(np.abs(r), 1e-12))
        Jw = J * rw[:, None]
        A = J.T @ Jw
        g = Jw.T @ r
        scale = np.diag(np.maximum(np.diag(A), 1e-30))
        improved = False
        for _ in range(8):
            try:
                step = np.linalg.solve(A + lam * scale, g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            q_new = q + step
            f_new, r_new = cost(q_new)
            if f_new <= f:
                q, f, r = q_new, f_new, r_new
                lam = max(lam / 10, 1e-9)
                improved = True
                break
            lam *= 10
        if not improved:
            break
        if np.max(np.abs(step[:-1])) < 1e-4 and abs(step[-1]) < 1e-7:
            break
    return q


def initial_guess(receivers: np.ndarray, t_s: np.ndarray, c: float) -> np.ndarray:
    """A starting position (3,) m: linearised least squares on range differences
    (spherical interpolation), falling back to the earliest receiver's position."""
    i0 = int(np.argmin(t_s))
    r0 = receivers[i0]
    others = np.arange(len(t_s)) != i0
    if np.count_nonzero(others) >= 3:
        d = (t_s[others] - t_s[i0]) * c                       # range differences
        rel = receivers[others] - r0
        # |p - r_i|^2 = (R0 + d_i)^2, unknowns (p - r0)_xy and R0 (2-D, z ≈ r0 z)
        A = np.hstack([2 * rel[:, :2], 2 * d[:, None]])
        b = np.sum(rel[:, :2] ** 2, axis=1) - d**2
        try:
            sol, *_ = np.linalg.lstsq(A, b, rcond=None)
            guess = r0 + np.array([sol[0], sol[1], 0.0])
            if np.all(np.isfinite(guess)) and np.linalg.norm(guess[:2] - r0[:2]) < 20_000:
                return guess
        except np.linalg.LinAlgError:
            pass
    return r0.astype(float).copy()


def solve(receivers: np.ndarray, t_s: np.ndarray, sigma_s: np.ndarray | float, c: float, *,
          x0: np.ndarray | None = None, z_source: float | None = None,
          min_used: int = 4, reject_sigma: float = 4.0, max_reject: int | None = None) -> Solution | None:
    """Locate one source from ``n`` arrivals.

    receivers: (n, 3) m ENU; t_s: (n,) arrival times (s, any common epoch);
    sigma_s: (n,) or scalar 1-σ timing errors (s); c: speed of sound (m/s);
    x0: starting position (3,) m (default: :func:`initial_guess`);
    z_source: fixed source height (m ENU) for a 2-D solve, or None for 3-D;
    min_used: fewest arrivals to keep; arrivals whose normalised residual exceeds
    ``reject_sigma`` are dropped one at a time (worst first, confirmed by
    re-solving without it) while more than ``min_used`` remain.
    Returns None when there are too few arrivals for the unknowns.
    """
    receivers = np.asarray(receivers, dtype=float)
    t_s = np.asarray(t_s, dtype=float)
    n = len(t_s)
    sig = np.broadcast_to(np.asarray(sigma_s, dtype=float), (n,)).copy()
    n_par = 3 if z_source is not None else 4
    if n < n_par or n < 3:
        return None
    if x0 is None:
        x0 = initial_guess(receivers, t_s, c)
    x0 = np.asarray(x0, dtype=float)

    def start(mask):
        p = x0.copy()
        if z_source is not None:
            p[2] = z_source
        t0 = float(np.median(t_s[mask] - np.linalg.norm(receivers[mask] - p, axis=1) / c))
        return np.array([p[0], p[1], t0]) if z_source is not None else np.array([p[0], p[1], p[2], t0])

    used = np.ones(n, dtype=bool)
    q = _fit(receivers[used], t_s[used], sig[used], c, start(used), z_source)
    limit = n - max(min_used, n_par + 1) if max_reject is None else max_reject
    for _ in range(max(0, limit)):
        pred, _ = _model(q, receivers, z_source, c)
        norm = np.abs(t_s - pred) / sig
        norm[~used] = -1
        worst = int(np.argmax(norm))
        if norm[worst] <= reject_sigma or used.sum() <= max(min_used, n_par + 1):
            break
        trial = used.copy()
        trial[worst] = False
        q = _fit(receivers[trial], t_s[trial], sig[trial], c, q, z_source, loss="linear")
        used = trial
    q = _fit(receivers[used], t_s[used], sig[used], c, q, z_source, loss="linear")
    pred, t0 = _model(q, receivers, z_source, c)
    resid = t_s - pred
    pos = np.array([q[0], q[1], z_source if z_source is not None else q[2]])
    J = _jacobian(q, receivers[used], z_source, c) / sig[used, None]
    dof = int(used.sum()) - n_par
    chi2 = float(np.sum((resid[used] / sig[used]) ** 2))
    scale = max(1.0, chi2 / dof) if dof > 0 else 1.0
    try:
        cov = np.linalg.inv(J.T @ J) * scale
    except np.linalg.LinAlgError:
        cov = np.full((n_par, n_par), np.inf)
    h = cov[:2, :2]
    lam = np.linalg.eigvalsh(h) if np.all(np.isfinite(h)) else np.array([np.inf])
    err95 = float(_K95_2D * np.sqrt(max(float(lam.max()), 0.0)))
    rms = float(np.sqrt(np.mean(resid[used] ** 2)))
    return Solution(pos=pos, t0_s=float(t0), cov=cov, used=used, residuals_s=resid, rms_s=rms,
                    error95_m=err95, mode="2d" if z_source is not None else "3d")
