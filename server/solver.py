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
    #: The speed of sound used (fitted, when ``c_sigma`` was given).
    c_mps: float = 0.0

    @property
    def n_used(self) -> int:
        return int(np.count_nonzero(self.used))


@dataclass(frozen=True)
class _Layout:
    """Parameter vector q = [x, y, (z), t0, (c)]: z absent in 2-D (fixed at
    ``z_fixed``), c absent unless it is fitted (with the prior c0 ± c_sigma).
    In 3-D, an optional prior z0 ± z_sigma keeps the height near the ground when
    the geometry cannot resolve it."""

    z_fixed: float | None
    c0: float
    c_sigma: float | None
    z0: float | None = None
    z_sigma: float | None = None

    @property
    def n(self) -> int:
        return 3 + (self.z_fixed is None) + (self.c_sigma is not None)

    def unpack(self, q: np.ndarray) -> tuple[np.ndarray, float, float]:
        if self.z_fixed is None:
            p, k = q[:3], 3
        else:
            p, k = np.array([q[0], q[1], self.z_fixed]), 2
        c = q[k + 1] if self.c_sigma is not None else self.c0
        return p, float(q[k]), float(c)

    def pack(self, p: np.ndarray, t0: float, c: float) -> np.ndarray:
        head = [p[0], p[1]] if self.z_fixed is not None else [p[0], p[1], p[2]]
        return np.array(head + [t0] + ([c] if self.c_sigma is not None else []), dtype=float)

    def model(self, q: np.ndarray, receivers: np.ndarray) -> np.ndarray:
        p, t0, c = self.unpack(q)
        return t0 + np.linalg.norm(receivers - p, axis=1) / c

    def jacobian(self, q: np.ndarray, receivers: np.ndarray) -> np.ndarray:
        p, _, c = self.unpack(q)
        diff = p - receivers
        d = np.maximum(np.linalg.norm(diff, axis=1), 1e-6)
        u = diff / d[:, None] / c
        cols = [u if self.z_fixed is None else u[:, :2], np.ones((len(receivers), 1))]
        if self.c_sigma is not None:
            cols.append((-d / c**2)[:, None])
        return np.hstack(cols)

    def prior(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-observation rows (residual, jacobian) for the priors on c and z."""
        res, rows = [], []
        p, _, c = self.unpack(q)
        if self.c_sigma is not None:
            row = np.zeros(self.n)
            row[-1] = 1.0 / self.c_sigma
            res.append((self.c0 - c) / self.c_sigma)
            rows.append(row)
        if self.z_fixed is None and self.z_sigma is not None and self.z0 is not None:
            row = np.zeros(self.n)
            row[2] = 1.0 / self.z_sigma
            res.append((self.z0 - p[2]) / self.z_sigma)
            rows.append(row)
        if not rows:
            return np.zeros(0), np.zeros((0, self.n))
        return np.array(res), np.array(rows)


def _fit(lay: _Layout, receivers, t_s, sigma_s, x0, loss="huber", iters=20):
    """Weighted Gauss-Newton with Levenberg damping; ``loss="huber"`` re-weights
    residuals beyond 2 σ (iteratively reweighted least squares)."""
    q = np.asarray(x0, dtype=float).copy()
    w = 1.0 / sigma_s
    lam = 1e-3

    def cost(qq):
        r = (t_s - lay.model(qq, receivers)) * w
        rp, _ = lay.prior(qq)
        if loss == "huber":
            a = np.abs(r)
            f = float(np.sum(np.where(a <= 2.0, 0.5 * r * r, 2.0 * a - 2.0)))
        else:
            f = float(0.5 * np.sum(r * r))
        return f + float(0.5 * np.sum(rp * rp)), r

    f, r = cost(q)
    for _ in range(iters):
        J = lay.jacobian(q, receivers) * w[:, None]
        rw = np.ones_like(r) if loss != "huber" else np.minimum(1.0, 2.0 / np.maximum(np.abs(r), 1e-12))
        rp, Jp = lay.prior(q)
        Jw = J * rw[:, None]
        A = J.T @ Jw + Jp.T @ Jp
        g = Jw.T @ r + Jp.T @ rp
        scale = np.diag(np.maximum(np.diag(A), 1e-30))
        improved = False
        step = np.zeros_like(q)
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
        if np.max(np.abs(step[:2])) < 1e-4 and abs(step[2 if lay.z_fixed is not None else 3]) < 1e-7:
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
          min_used: int = 4, reject_sigma: float = 4.0, max_reject: int | None = None,
          c_sigma: float | None = None, z_prior: tuple[float, float] | None = None) -> Solution | None:
    """Locate one source from ``n`` arrivals.

    receivers: (n, 3) m ENU; t_s: (n,) arrival times (s, any common epoch);
    sigma_s: (n,) or scalar 1-σ timing errors (s); c: speed of sound (m/s);
    x0: starting position (3,) m (default: :func:`initial_guess`);
    z_source: fixed source height (m ENU) for a 2-D solve, or None for 3-D;
    z_prior: (z0, σ) m: in 3-D, a Gaussian prior on the height — the source is
    near the ground unless enough nodes, close enough, say otherwise;
    c_sigma: when given (m/s), the speed of sound is fitted too, with ``c`` as a
    Gaussian prior of that width (unknown air temperature: ~6 m/s);
    min_used: fewest arrivals to keep; arrivals whose normalised residual exceeds
    ``reject_sigma`` are dropped one at a time (worst first, confirmed by
    re-solving without it) while more than ``min_used`` remain.
    Returns None when there are too few arrivals for the unknowns.
    """
    receivers = np.asarray(receivers, dtype=float)
    t_s = np.asarray(t_s, dtype=float)
    n = len(t_s)
    sig = np.broadcast_to(np.asarray(sigma_s, dtype=float), (n,)).copy()
    lay = _Layout(z_source, float(c), c_sigma, *(z_prior if z_prior is not None and z_source is None else (None, None)))
    n_geo = 3 if z_source is not None or z_prior is not None else 4   # unknowns the arrivals must pin down
    if n < n_geo:
        return None
    if x0 is None:
        x0 = initial_guess(receivers, t_s, c)
    p0 = np.asarray(x0, dtype=float).copy()
    if z_source is not None:
        p0[2] = z_source
    elif z_prior is not None:
        p0[2] = z_prior[0]
    t00 = float(np.median(t_s - np.linalg.norm(receivers - p0, axis=1) / c))
    used = np.ones(n, dtype=bool)
    q = _fit(lay, receivers, t_s, sig, lay.pack(p0, t00, c))
    floor = max(min_used, n_geo + 1)
    limit = n - floor if max_reject is None else max_reject
    for _ in range(max(0, limit)):
        norm = np.abs(t_s - lay.model(q, receivers)) / sig
        norm[~used] = -1
        worst = int(np.argmax(norm))
        if norm[worst] <= reject_sigma or used.sum() <= floor:
            break
        used[worst] = False
        q = _fit(lay, receivers[used], t_s[used], sig[used], q, loss="linear")
    q = _fit(lay, receivers[used], t_s[used], sig[used], q, loss="linear")
    resid = t_s - lay.model(q, receivers)
    pos, t0, c_fit = lay.unpack(q)
    J = lay.jacobian(q, receivers[used]) / sig[used, None]
    _, Jp = lay.prior(q)
    dof = int(used.sum()) - n_geo
    chi2 = float(np.sum((resid[used] / sig[used]) ** 2))
    scale = max(1.0, chi2 / dof) if dof > 0 else 1.0
    try:
        cov = np.linalg.inv(J.T @ J + Jp.T @ Jp) * scale
    except np.linalg.LinAlgError:
        cov = np.full((lay.n, lay.n), np.inf)
    h = cov[:2, :2]
    lam = np.linalg.eigvalsh(h) if np.all(np.isfinite(h)) else np.array([np.inf])
    err95 = float(_K95_2D * np.sqrt(max(float(lam.max()), 0.0)))
    rms = float(np.sqrt(np.mean(resid[used] ** 2)))
    return Solution(pos=np.array(pos, dtype=float), t0_s=float(t0), cov=cov, used=used, residuals_s=resid,
                    rms_s=rms, error95_m=err95, mode="2d" if z_source is not None else ("3d+prior" if z_prior is not None else "3d"),
                    c_mps=float(c_fit))
