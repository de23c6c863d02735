"""Multilateration: source position and emission time from arrival times.

Model: t_i = t0 + τ_i + e_i, with receivers r_i (n, 3) m ENU, arrival times t_i
(s, relative to any common epoch) and e_i ~ N(0, σ_i²). τ_i is the travel time
from the source p to r_i: |p − r_i| / c in still air; with a horizontal wind w
(m/s) the sound front is a sphere of radius c·τ whose centre drifts with the
air, so τ solves |r_i − p − w·τ| = c·τ (exactly, not to first order).

Unknowns: the source position p (x, y with z fixed in 2-D mode; x, y, z in 3-D
mode, optionally with a Gaussian prior on z), the emission time t0, and
optionally the speed of sound c (Gaussian prior around the configured value:
unknown air temperature) and the wind (east, north) (Gaussian prior around 0).
Solved by damped, weighted Gauss-Newton (Levenberg–Marquardt) with analytic
derivatives.

Robustness (echoes, blocked paths, bad picks): the residual scale is estimated
from the data (1.4826 × median |residual / σ|, never below 1), so that timing
that is worse than the a-priori σ everywhere (e.g. picks exported at 1 ms
resolution from an urban network) widens the acceptance instead of throwing away
half the arrivals; a Huber loss at ``huber_k`` × that scale down-weights
outliers in a first fit; then the worst arrival is rejected, one at a time,
while its normalised residual exceeds ``reject_sigma`` × scale (re-fitting
without it each time); the final fit is plain weighted least squares over the
arrivals kept.

Uncertainty: covariance from the Jacobian at the solution (with the priors),
scaled by the larger of 1 and the fit's reduced chi-square, reported as the 95 %
horizontal radius along the ellipse's major axis (chi-square quantile; the F
quantile for the degrees of freedom left when the scale came from the data).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: Factor turning the largest 1-σ axis of a 2-D error ellipse into a radius that
#: contains ≥ 95 % of the probability (chi-square, 2 degrees of freedom).
_K95_2D = float(np.sqrt(stats.chi2.ppf(0.95, 2)))
#: Normal consistency factor of the median absolute deviation.
_MAD_K = 1.4826
#: Iterations of the Huber-weighted fits (a robust start for what follows).
HUBER_ITERS = 8


@functools.lru_cache(maxsize=256)
def _k95_estimated(dof: int) -> float:
    """The 95 % radius factor when the scatter was estimated from ``dof``
    degrees of freedom: √(2·F₀.₉₅(2, dof)) (F, not χ²: the estimate's own
    uncertainty). Cached: the quantile costs far more than the rest of a solve."""
    return float(np.sqrt(2.0 * stats.f.ppf(0.95, 2, dof)))


@dataclass(frozen=True)
class Solution:
    """A located source. ``pos``: (3,) m ENU; ``t0_s``: emission time (same epoch
    as the inputs); ``cov``: covariance of the fitted parameters in the order
    (x, y[, z], t0[, c][, wind_e, wind_n]) in m, s, m/s; ``used``: boolean mask
    (n,) of arrivals kept; ``residuals_s``: (n,) for all arrivals."""

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
    #: The wind (east, north) m/s used (fitted when ``wind_sigma`` was given).
    wind_mps: tuple[float, float] = (0.0, 0.0)
    #: Timing-error scale the data showed, in units of the a-priori σ (≥ 1).
    scale: float = 1.0

    @property
    def n_used(self) -> int:
        return int(np.count_nonzero(self.used))


class _Layout:
    """Parameter vector q = [x, y, (z), t0, (c), (wind_e, wind_n)]: z absent in
    2-D (fixed at ``z_fixed``); c absent unless fitted (prior c0 ± c_sigma); wind
    absent unless fitted (prior wind0 ± wind_sigma). In 3-D, an optional prior
    z0 ± z_sigma keeps the height near the ground when the geometry cannot
    resolve it. The priors are linear pseudo-observations: their Jacobian
    ``Jp`` is constant."""

    def __init__(self, z_fixed: float | None, c0: float, c_sigma: float | None, z0: float | None = None,
                 z_sigma: float | None = None, wind_sigma: float | None = None,
                 wind0: tuple[float, float] = (0.0, 0.0)) -> None:
        self.z_fixed = z_fixed
        self.c0 = float(c0)
        self.c_sigma = c_sigma
        self.wind_sigma = wind_sigma
        self.wind0 = (float(wind0[0]), float(wind0[1]))
        self.i_t0 = 2 if z_fixed is not None else 3
        k = self.i_t0 + 1
        self.i_c: int | None = None
        if c_sigma is not None:
            self.i_c, k = k, k + 1
        self.i_w: int | None = None
        if wind_sigma is not None:
            self.i_w, k = k, k + 2
        self.n = k
        self._w_fixed = np.array([self.wind0[0], self.wind0[1], 0.0]) if any(self.wind0) else None
        idx, mu, sd = [], [], []
        if self.i_c is not None:
            idx.append(self.i_c), mu.append(self.c0), sd.append(float(c_sigma))
        if z_fixed is None and z_sigma is not None and z0 is not None:
            idx.append(2), mu.append(float(z0)), sd.append(float(z_sigma))
        if self.i_w is not None:
            for j in range(2):
                idx.append(self.i_w + j), mu.append(self.wind0[j]), sd.append(float(wind_sigma))
        self._pidx = np.array(idx, dtype=int)
        self._pmu = np.array(mu, dtype=float)
        self._psd = np.array(sd, dtype=float)
        self.Jp = np.zeros((len(idx), self.n))
        self.Jp[np.arange(len(idx)), self._pidx] = 1.0 / self._psd

    def unpack(self, q: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray | None]:
        """(position (3,), t0, c, wind (3,) with zero up-component or None)."""
        if self.z_fixed is None:
            p = q[:3]
        else:
            p = np.array([q[0], q[1], self.z_fixed])
        c = float(q[self.i_c]) if self.i_c is not None else self.c0
        if self.i_w is not None:
            w = np.array([q[self.i_w], q[self.i_w + 1], 0.0])
        else:
            w = self._w_fixed
        return p, float(q[self.i_t0]), c, w

    def pack(self, p: np.ndarray, t0: float, c: float) -> np.ndarray:
        head = [p[0], p[1]] if self.z_fixed is not None else [p[0], p[1], p[2]]
        tail = [c] if self.c_sigma is not None else []
        if self.wind_sigma is not None:
            tail += list(self.wind0)
        return np.array(head + [t0] + tail, dtype=float)

    def model(self, q: np.ndarray, receivers: np.ndarray, jac: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted arrival times (n,) and, if ``jac``, their Jacobian (n, n_params)."""
        t0, c, tau, dp, den = self._travel(q, receivers, jac)
        if not jac:
            return t0 + tau, None
        J = np.empty((len(receivers), self.n))
        if self.z_fixed is None:
            J[:, :3] = -dp                                   # ∂τ/∂p
        else:
            J[:, :2] = -dp[:, :2]
        J[:, self.i_t0] = 1.0
        if self.i_c is not None:
            J[:, self.i_c] = -c * tau * tau / den
        if self.i_w is not None:
            J[:, self.i_w:self.i_w + 2] = -tau[:, None] * dp[:, :2]      # ∂τ/∂w
        return t0 + tau, J

    def unfitted_jac(self, q: np.ndarray, receivers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The travel times' derivatives (n, k) by the nuisance parameters this
        layout does not fit, and which they are: the speed of sound unless fitted
        (one column), the wind (east, north) unless fitted (two columns). For
        :func:`solve`'s ``unfitted_sigma``."""
        _, c, tau, dp, den = self._travel(q, receivers, True)
        cols, which = [], []
        if self.i_c is None:
            cols.append((-c * tau * tau / den)[:, None])
            which.append(0)
        if self.i_w is None:
            cols.append(-tau[:, None] * dp[:, :2])
            which += [1, 2]
        if not cols:
            return np.zeros((len(receivers), 0)), np.zeros(0, dtype=int)
        return np.hstack(cols), np.array(which, dtype=int)

    def _travel(self, q: np.ndarray, receivers: np.ndarray, jac: bool
                ) -> tuple[float, float, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(t0, c, travel times τ (n,), and if ``jac`` ∂τ/∂(receiver) (n, 3) and
        the denominator of ∂τ/∂c (n,))."""
        p, t0, c, w = self.unpack(q)
        d = receivers - p                                    # source → receiver
        tau, dist = _tau(d, c, w)
        if not jac:
            return t0, c, tau, None, None
        if w is None:
            den = c * dist                                   # E·w + c²τ with w = 0
            e = d
        else:
            e = d - tau[:, None] * w[None, :]                # receiver − advected centre
            den = np.maximum(e @ w + c * c * tau, 1e-9)
        return t0, c, tau, e / den[:, None], den

    def prior(self, q: np.ndarray) -> np.ndarray:
        """Normalised residuals of the priors (their Jacobian is ``Jp``)."""
        return (self._pmu - q[self._pidx]) / self._psd


def _tau(d: np.ndarray, c: float, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Travel times (s, (n,)) over ``d`` (n, 3) m, source → receiver, at ``c``
    m/s in the horizontal wind ``w`` (3,) m/s (None: still air, and then the
    distances (n,) too): τ solves |d − w·τ| = c·τ."""
    r2 = np.einsum("ij,ij->i", d, d)
    if w is None:
        dist = np.sqrt(np.maximum(r2, 1e-12))
        return dist / c, dist
    dw = d @ w
    a = c * c - float(w @ w)
    return (-dw + np.sqrt(np.maximum(dw * dw + a * r2, 0.0))) / a, None


def travel_times_s(receivers: np.ndarray, source: np.ndarray, c: float,
                   wind_mps: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Travel times (s, (n,)) of sound from ``source`` (3,) m ENU to
    ``receivers`` (n, 3) m ENU at ``c`` m/s, in the horizontal wind
    ``wind_mps`` (east, north): the model :func:`solve` fits."""
    w = np.array([wind_mps[0], wind_mps[1], 0.0]) if any(wind_mps) else None
    return _tau(np.asarray(receivers, dtype=float) - np.asarray(source, dtype=float), float(c), w)[0]


def _fit(lay: _Layout, receivers: np.ndarray, t_s: np.ndarray, sigma_s: np.ndarray, x0: np.ndarray,
         huber: float | None = None, iters: int = 30) -> np.ndarray:
    """Weighted Levenberg–Marquardt from ``x0``. ``huber``: threshold in normalised
    residuals (None: plain least squares), applied by iterative re-weighting."""
    q = np.asarray(x0, dtype=float).copy()
    w = 1.0 / sigma_s
    lam = 1e-4
    Jp = lay.Jp                                # constant: the priors are linear
    JpTJp = Jp.T @ Jp

    def cost(qq: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        # the Jacobian comes with the residuals: at an accepted point it is the next step's
        m, Jm = lay.model(qq, receivers)
        r = (t_s - m) * w
        rp = lay.prior(qq)
        if huber is not None:
            a = np.abs(r)
            f = float(np.sum(np.where(a <= huber, 0.5 * r * r, huber * a - 0.5 * huber * huber)))
        else:
            f = 0.5 * float(r @ r)
        return f + 0.5 * float(rp @ rp), r, rp, Jm

    f, r, rp, Jq = cost(q)
    i_t0 = lay.i_t0
    diag = np.diag_indices(lay.n)
    for _ in range(iters):
        J = Jq * w[:, None]
        if huber is None:
            Jw = J
        else:
            Jw = J * np.minimum(1.0, huber / np.maximum(np.abs(r), 1e-12))[:, None]
        A = J.T @ Jw + JpTJp
        g = Jw.T @ r + Jp.T @ rp
        dA = np.maximum(A[diag], 1e-30)
        improved = False
        step = np.zeros_like(q)
        for _ in range(10):
            B = A.copy()
            B[diag] += lam * dA
            try:
                step = np.linalg.solve(B, g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            q_new = q + step
            f_new, r_new, rp_new, J_new = cost(q_new)
            if f_new <= f:
                q, f, r, rp, Jq = q_new, f_new, r_new, rp_new, J_new
                lam = max(lam * 0.1, 1e-9)
                improved = True
                break
            lam *= 10
        if not improved:
            break
        if np.max(np.abs(step[:i_t0])) < 2e-3 and abs(step[i_t0]) < 1e-6:
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


def _capped(scale: float, cap: float | None) -> float:
    return scale if cap is None else min(scale, max(cap, 1.0))


def residual_scale(norm_resid: np.ndarray, n_params: int) -> float:
    """Robust timing-error scale (≥ 1) from normalised residuals ``r/σ`` (n,):
    1.4826 × their median absolute value, corrected for the parameters fitted.
    1 when too few residuals are left over to tell (n − n_params < 3)."""
    n = norm_resid.size
    dof = n - n_params
    if dof < 3:
        return 1.0
    s = _MAD_K * float(np.median(np.abs(norm_resid))) * math.sqrt(n / dof)
    return max(1.0, s)


def solve(receivers: np.ndarray, t_s: np.ndarray, sigma_s: np.ndarray | float, c: float, *,
          x0: np.ndarray | None = None, z_source: float | None = None,
          min_used: int = 4, reject_sigma: float = 4.0, max_reject: int | None = None,
          c_sigma: float | None = None, z_prior: tuple[float, float] | None = None,
          wind_sigma: float | None = None, wind0: tuple[float, float] = (0.0, 0.0),
          huber_k: float | None = 2.0, adaptive: bool = True,
          max_scale: float | None = None,
          unfitted_sigma: tuple[float, float] | None = None) -> Solution | None:
    """Locate one source from ``n`` arrivals.

    receivers: (n, 3) m ENU; t_s: (n,) arrival times (s, any common epoch);
    sigma_s: (n,) or scalar a-priori 1-σ timing errors (s); c: speed of sound (m/s);
    x0: starting position (3,) m (default: :func:`initial_guess`);
    z_source: fixed source height (m ENU) for a 2-D solve, or None for 3-D;
    z_prior: (z0, σ) m: in 3-D, a Gaussian prior on the height — the source is
    near the ground unless enough nodes, close enough, say otherwise;
    c_sigma: when given (m/s), the speed of sound is fitted too, with ``c`` as a
    Gaussian prior of that width (unknown air temperature: ~6 m/s);
    wind_sigma: when given (m/s), the horizontal wind is fitted too, with
    ``wind0`` (east, north m/s) as a Gaussian prior of that width;
    ``wind0`` alone (without ``wind_sigma``) is a known wind;
    min_used: fewest arrivals to keep; arrivals whose normalised residual exceeds
    ``reject_sigma`` × the data's residual scale are dropped one at a time (the
    worst first, the rest re-fitted after each) while more than ``min_used``
    remain, at most ``max_reject`` of them (None: no limit);
    huber_k: Huber threshold (× scale) of the fits before the last (None: plain
    least squares throughout); adaptive: estimate the residual scale from the
    data (else it is 1: the a-priori σ are taken as exact); max_scale: the
    largest residual scale the fit and rejection may adopt (None: no limit) —
    e.g. a multiple of what the network's other shots showed;
    unfitted_sigma: (speed of sound m/s, wind m/s per component) 1-σ
    uncertainties of those that are not fitted here (the speed of sound
    without ``c_sigma``, the wind without ``wind_sigma``): the solution still
    takes them as given, but the error they would cause goes into ``cov`` and
    the radius (an unknown wind of w m/s moves a source about w × the travel
    time to its nodes; no timing scatter shows it, as every shot of a network
    shares it). None: the given values are taken as exact.
    Returns None when there are too few arrivals for the unknowns.
    """
    receivers = np.asarray(receivers, dtype=float)
    t_s = np.asarray(t_s, dtype=float)
    n = len(t_s)
    sig = np.broadcast_to(np.asarray(sigma_s, dtype=float), (n,)).copy()
    zp = z_prior if z_prior is not None and z_source is None else (None, None)
    lay = _Layout(z_source, float(c), c_sigma, zp[0], zp[1], wind_sigma, tuple(float(v) for v in wind0))
    n_geo = 3 if z_source is not None or z_prior is not None else 4   # unknowns the arrivals must pin down
    if n < n_geo:
        return None
    p0 = np.asarray(initial_guess(receivers, t_s, c) if x0 is None else x0, dtype=float).copy()
    if z_source is not None:
        p0[2] = z_source
    elif z_prior is not None and x0 is None:      # no start given: at the prior's height
        p0[2] = z_prior[0]
    t00 = float(np.median(t_s - np.sqrt(np.sum((receivers - p0) ** 2, axis=1)) / c))
    used = np.ones(n, dtype=bool)
    q = lay.pack(p0, t00, c)
    scale = 1.0
    n_fit = n_geo + (2 if wind_sigma is not None else 0)    # unknowns the scale estimate pays for

    def norm_resid(qq: np.ndarray) -> np.ndarray:
        m, _ = lay.model(qq, receivers, jac=False)
        return (t_s - m) / sig

    if huber_k is not None:
        # (iteratively re-weighted: converges slowly, but only a start is needed)
        q = _fit(lay, receivers, t_s, sig, q, huber=huber_k, iters=HUBER_ITERS)
        if adaptive:
            scale = _capped(residual_scale(norm_resid(q), n_fit), max_scale)
            if scale > 1.0:
                q = _fit(lay, receivers, t_s, sig, q, huber=huber_k * scale, iters=HUBER_ITERS)
    floor = max(min_used, n_geo + 1)
    limit = n - floor if max_reject is None else max_reject
    for _ in range(max(0, limit)):
        e = norm_resid(q)
        if adaptive:
            scale = _capped(residual_scale(e[used], n_fit), max_scale)
        a = np.abs(e)
        a[~used] = -1.0
        worst = int(np.argmax(a))
        if a[worst] <= reject_sigma * scale or used.sum() <= floor:
            break
        used[worst] = False
        q = _fit(lay, receivers[used], t_s[used], sig[used], q)
    q = _fit(lay, receivers[used], t_s[used], sig[used], q)
    m, _ = lay.model(q, receivers, jac=False)
    resid = t_s - m
    if adaptive:
        scale = residual_scale(resid[used] / sig[used], n_fit)
    pos, t0, c_fit, w_fit = lay.unpack(q)
    _, J = lay.model(q, receivers[used])
    J = J / sig[used, None]
    Jp = lay.Jp
    dof = int(used.sum()) - n_fit
    chi2 = float(np.sum((resid[used] / sig[used]) ** 2))
    var_scale = max(1.0, chi2 / dof) if dof > 0 else 1.0
    try:
        info_inv = np.linalg.inv(J.T @ J + Jp.T @ Jp)
        cov = info_inv * var_scale
    except np.linalg.LinAlgError:
        info_inv = None
        cov = np.full((lay.n, lay.n), np.inf)
    if unfitted_sigma is not None and info_inv is not None:
        # the fit's response to the unfitted parameters: what an error in them
        # moves the solution by (linearised), over their prior uncertainty
        G, which = lay.unfitted_jac(q, receivers[used])
        if which.size:
            sd = np.array([unfitted_sigma[0], unfitted_sigma[1], unfitted_sigma[1]], dtype=float)[which]
            B = info_inv @ (J.T @ (G / sig[used, None]))
            cov = cov + (B * sd**2) @ B.T
    h = cov[:2, :2]
    lam = np.linalg.eigvalsh(h) if np.all(np.isfinite(h)) else np.array([np.inf])
    # when the scatter was estimated from the data (reduced chi-square > 1), the
    # radius takes that estimate's own uncertainty into account (F, not chi-square)
    k95 = _k95_estimated(dof) if var_scale > 1.0 and dof > 0 else _K95_2D
    err95 = float(k95 * np.sqrt(max(float(lam.max()), 0.0)))
    rms = float(np.sqrt(np.mean(resid[used] ** 2)))
    mode = "2d" if z_source is not None else ("3d+prior" if z_prior is not None else "3d")
    wind = (float(w_fit[0]), float(w_fit[1])) if w_fit is not None else (0.0, 0.0)
    return Solution(pos=np.array(pos, dtype=float), t0_s=float(t0), cov=cov, used=used, residuals_s=resid,
                    rms_s=rms, error95_m=err95, mode=mode, c_mps=float(c_fit), wind_mps=wind, scale=float(scale))
